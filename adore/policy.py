"""Moved to :mod:`adore.core.policy`; this path works for one more release."""

import sys

from adore.core import policy as _moved

sys.modules[__name__] = _moved
