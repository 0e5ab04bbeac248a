"""Moved to :mod:`experiments.infra.results`; this path works for one more release."""

import sys

from experiments.infra import results as _moved

sys.modules[__name__] = _moved
