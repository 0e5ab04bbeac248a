"""Timing a region of work on the model's device.

On a GPU, kernels run asynchronously: wall-clock time around a launch measures the launch, not the
work. :class:`DeviceTimer` records CUDA events around the region and synchronises on the closing
event (so the host waits for exactly that work); on a CPU it is ``time.perf_counter``.
"""

from __future__ import annotations

import time

import torch


class DeviceTimer:
    """``with DeviceTimer(device) as timer: ...`` then ``timer.seconds``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.seconds = 0.0

    def __enter__(self) -> DeviceTimer:
        if self.cuda:
            torch.cuda.synchronize(self.device)  # earlier work must not leak into the region
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._began
