"""Moved to :mod:`experiments.tasks.generation`; this path works for one more release."""

import sys

from experiments.tasks import generation as _moved

sys.modules[__name__] = _moved
