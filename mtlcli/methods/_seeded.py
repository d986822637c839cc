"""The state hooks of a method whose only state is its own random generator (pcgrad, rlw, graddrop).

The generator is seeded with the run's seed at `setup` (so runs are reproducible whatever else draws
random numbers) and checkpointed, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mtlcli.methods.base import MethodHooks


class SeededRandom(MethodHooks):
    """A CPU `torch.Generator` as the method's state: seeded at setup, saved and restored."""

    def __init__(self) -> None:
        self.generator = torch.Generator()
        self.generator.manual_seed(0)

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.generator.manual_seed(torch.initial_seed())

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
