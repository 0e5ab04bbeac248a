"""Moved to :mod:`experiments.tasks.throughput`; this path works for one more release."""

import sys

from experiments.tasks import throughput as _moved

sys.modules[__name__] = _moved
if __name__ == "__main__":  # `python -m experiments.throughput <run folder>` as documented before the move
    _moved.main(sys.argv[1:])
