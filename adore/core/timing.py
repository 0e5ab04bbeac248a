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


class StepTimer:
    """Times a sequence of steps on a device, the one step clock of every task.

    Two ways in, both synchronising the device first: ``with timer.step(): ...`` around each step
    (``timer.seconds`` gets one entry per step), or ``timer.stamp()`` at each step boundary, for code
    that only offers a callback (a logits processor, a streamer): the intervals between stamps are
    the steps, and ``timer.stamps`` keeps the raw times.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: list[float] = []
        self.stamps: list[float] = []

    def step(self) -> _Step:
        return _Step(self)

    def stamp(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())
        if len(self.stamps) > 1:
            self.seconds.append(self.stamps[-1] - self.stamps[-2])

    @property
    def total(self) -> float:
        return sum(self.seconds)


class _Step(DeviceTimer):
    def __init__(self, timer: StepTimer):
        super().__init__(timer.device)
        self.timer = timer

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.timer.seconds.append(self.seconds)
