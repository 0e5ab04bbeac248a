"""Moved to :mod:`adore.core.attention`; this path works for one more release."""

import sys

from adore.core import attention as _moved

sys.modules[__name__] = _moved
