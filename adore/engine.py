"""Moved to :mod:`adore.core.engine`; this path works for one more release."""

import sys

from adore.core import engine as _moved

sys.modules[__name__] = _moved
