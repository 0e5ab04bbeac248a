"""Moved to :mod:`adore.core.models`; this path works for one more release."""

import sys

from adore.core import models as _moved

sys.modules[__name__] = _moved
