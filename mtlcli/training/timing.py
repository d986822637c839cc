"""Step timing without a per-step host sync."""

from __future__ import annotations

import time
from typing import Any

import torch


class StepTimer:
    """Per-step wall time: CUDA events on the GPU (read once per epoch), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._events: list[tuple[Any, Any]] = []
        self._times: list[float] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self._times.append(time.perf_counter() - self._start)

    def collect(self) -> list[float]:
        """Step times (seconds) since the last collect."""
        if self.cuda:
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1000.0 for s, e in self._events]
            self._events = []
        else:
            times, self._times = self._times, []
        return times
