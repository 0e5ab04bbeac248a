"""Moved to :mod:`experiments.tasks.parity`; this path works for one more release."""

import sys

from experiments.tasks import parity as _moved

sys.modules[__name__] = _moved
