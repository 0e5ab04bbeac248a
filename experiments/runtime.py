"""Moved to :mod:`experiments.infra.runtime`; this path works for one more release."""

import sys

from experiments.infra import runtime as _moved

sys.modules[__name__] = _moved
