"""Moved to :mod:`experiments.tasks.streameval`; this path works for one more release."""

import sys

from experiments.tasks import streameval as _moved

sys.modules[__name__] = _moved
