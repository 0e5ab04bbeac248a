"""Moved to :mod:`adore.core.rope`; this path works for one more release."""

import sys

from adore.core import rope as _moved

sys.modules[__name__] = _moved
