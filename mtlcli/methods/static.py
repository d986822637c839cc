"""Static weighting: minimise sum_t w_t L_t with fixed weights on the simplex (the grid search's unit)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, field_validator
from torch import Tensor

from mtlcli.errors import MtlError
from mtlcli.methods.base import Options, Stateless, Step, weighted_backward


class StaticOptions(Options):
    weights: list[float] = Field(description="one weight per task, >= 0, summing to 1", min_length=1)

    @field_validator("weights")
    @classmethod
    def _on_simplex(cls, value: list[float]) -> list[float]:
        if any(w < 0 for w in value):
            raise ValueError(f"weights must be >= 0, got {value}")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {value} (sum {sum(value):g})")
        return value


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
