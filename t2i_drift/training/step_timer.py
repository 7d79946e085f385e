"""Where a training step's time goes: wall time per named phase (scripts/bench_train.py).

The loop and the objectives wrap their phases in ``timer("name")``; training uses the disabled
timer, which costs nothing (no device syncs). An enabled timer synchronizes the device at every
phase boundary, so that asynchronous GPU work is charged to the phase that launched it (this
slows the step a little: benchmarks report the step time of an untimed run next to it).

One backward pass covers the feature encoders and the generator; ``split_at`` charges the part
before a tensor's gradient is ready (the loss, the drift targets and the encoders, for the
generated batch) to its own phase.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class StepTimer:
    """Accumulated seconds per phase name, over the steps timed so far."""

    def __init__(self, enabled: bool = False, device: torch.device | None = None) -> None:
        self.enabled = enabled
        self.device = device
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._mark: float | None = None  # start of the open phase (or of its remainder)

    def _sync(self) -> float:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Time the enclosed code as phase ``name`` (phases do not nest)."""
        if not self.enabled:
            yield
            return
        self._mark = self._sync()
        try:
            yield
        finally:
            self._add(name, self._sync() - self._mark)
            self._mark = None

    def split_at(self, tensor: torch.Tensor, name: str) -> None:
        """When the gradient of ``tensor`` is computed (inside a timed backward), charge the time
        since the phase began to ``name``; the rest of the phase keeps the phase's own name."""
        if not self.enabled or not tensor.requires_grad:
            return

        def hook(grad: torch.Tensor) -> None:
            if self._mark is not None:
                now = self._sync()
                self._add(name, now - self._mark)
                self._mark = now

        tensor.register_hook(hook)

    def reset(self) -> None:
        self.seconds.clear()
        self.counts.clear()


DISABLED = StepTimer(enabled=False)
