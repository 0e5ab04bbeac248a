"""Moved to :mod:`adore.release.labels`; this path works for one more release."""

import sys

from adore.release import labels as _moved

sys.modules[__name__] = _moved
