"""Moved to :mod:`experiments.infra.sweep`; this path works for one more release."""

import sys

from experiments.infra import sweep as _moved

sys.modules[__name__] = _moved
