"""Moved to :mod:`adore.release.finetune`; this path works for one more release."""

import sys

from adore.release import finetune as _moved

sys.modules[__name__] = _moved
