"""A learnable per-task scalar s_t (uncertainty weighting, IMTL-L, IMTL): created by `setup`, optimised
with the model (the trainer adds `parameters()` to its optimiser) and saved in checkpoints."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlcli.methods.base import MethodHooks


class LearnedScale(MethodHooks):
    """Holds `s` [T] (`initial` at the start, 0 unless a method says otherwise) for the methods that learn a
    loss scale per task."""

    s: nn.Parameter | None = None
    initial: float = 0.0

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.s = nn.Parameter(torch.full((num_tasks,), self.initial, device=device))

    def _scale(self) -> nn.Parameter:
        if self.s is None:
            raise RuntimeError(f"{type(self).__name__}.setup(num_tasks, device) must run before training")
        return self.s

    def parameters(self) -> list[nn.Parameter]:
        return [self._scale()]

    def state_dict(self) -> dict[str, Any]:
        return {"s": self._scale().detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self._scale().copy_(state["s"])
