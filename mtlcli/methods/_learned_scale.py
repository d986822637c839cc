"""A learnable per-task scalar s_t (uncertainty weighting, IMTL-L, IMTL): created by `setup`, optimised
with the model (the trainer adds `parameters()` to its optimiser) and saved in checkpoints.

On N processes (torchrun) s is a parameter like the model's: its gradient is in the trainer's all-reduce. A
term of the objective in s alone (uncertainty's s_t / 2, IMTL-L's -s_t) is not a part of the batch's loss that
each rank holds: each rank adds 1/N of it (`regulariser_share`), so the summed gradients are the batch's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlcli import distributed
from mtlcli.methods.base import MethodHooks


def regulariser_share() -> float:
    """The part of a term in s alone that this rank adds: 1/N on N processes (their sum is the term once)."""
    return 1.0 / distributed.current().world


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
