"""Moved to :mod:`experiments.tasks.streaming`; this path works for one more release."""

import sys

from experiments.tasks import streaming as _moved

sys.modules[__name__] = _moved
