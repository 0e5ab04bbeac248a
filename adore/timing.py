"""Moved to :mod:`adore.core.timing`; this path works for one more release."""

import sys

from adore.core import timing as _moved

sys.modules[__name__] = _moved
