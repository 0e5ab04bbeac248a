"""Moved to :mod:`adore.release.policy`; this path works for one more release."""

import sys

from adore.release import policy as _moved

sys.modules[__name__] = _moved
