"""Moved to :mod:`experiments.reporting.throughput_plots`; this path works for one more release."""

import sys

from experiments.reporting import throughput_plots as _moved

sys.modules[__name__] = _moved
