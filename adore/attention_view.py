"""Moved to :mod:`adore.core.attention_view`; this path works for one more release."""

import sys

from adore.core import attention_view as _moved

sys.modules[__name__] = _moved
