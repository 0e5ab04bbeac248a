"""Moved to :mod:`adore.core.errors`; this path works for one more release."""

import sys

from adore.core import errors as _moved

sys.modules[__name__] = _moved
