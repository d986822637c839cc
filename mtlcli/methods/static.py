"""Static weighting: minimise sum_t w_t L_t with fixed weights on the simplex (the grid search's unit)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.errors import MtlError
from mtlcli.methods.base import Stateless, Step, weighted_backward
from mtlcli.methods.options import StaticOptions


class Static(Stateless):
    """sum_t w_t L_t with the recipe's `weights`."""

    name: ClassVar[str] = "static"

    def __init__(self, options: StaticOptions) -> None:
        self.options = options
        self._weights: Tensor | None = None

    def __repr__(self) -> str:
        return f"Static(weights={self.options.weights})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        if num_tasks != len(self.options.weights):
            raise MtlError(f"method static: {len(self.options.weights)} weights given for {num_tasks} tasks")
        self._weights = torch.tensor(self.options.weights, dtype=torch.float32, device=device)

    def backward(self, step: Step) -> Tensor:
        if self._weights is None or self._weights.device != step.losses.device:
            self.setup(step.num_tasks, step.losses.device)
        assert self._weights is not None
        weights = self._weights.to(step.losses.dtype)
        weighted_backward(step.losses, weights)
        return weights
