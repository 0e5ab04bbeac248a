"""Moved to :mod:`adore.release.training`; this path works for one more release."""

import sys

from adore.release import training as _moved

sys.modules[__name__] = _moved
