"""Moved to :mod:`experiments.reporting.report`; this path works for one more release."""

import sys

from experiments.reporting import report as _moved

sys.modules[__name__] = _moved
