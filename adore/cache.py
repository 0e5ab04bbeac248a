"""Moved to :mod:`adore.core.cache`; this path works for one more release."""

import sys

from adore.core import cache as _moved

sys.modules[__name__] = _moved
