"""Moved to :mod:`adore.release.controller`; this path works for one more release."""

import sys

from adore.release import controller as _moved

sys.modules[__name__] = _moved
