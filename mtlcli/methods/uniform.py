"""Uniform scaling: minimise the mean of the task losses (the baseline of every MTL paper)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods.base import Stateless, Step, weighted_backward
from mtlcli.methods.options import UniformOptions


class Uniform(Stateless):
    """(1/T) sum_t L_t."""

    name: ClassVar[str] = "uniform"

    def __init__(self, options: UniformOptions | None = None) -> None:
        self.options = options or UniformOptions()

    def __repr__(self) -> str:
        return "Uniform()"

    def backward(self, step: Step) -> Tensor:
        weights = torch.full_like(step.losses, 1.0 / step.num_tasks).detach()
        weighted_backward(step.losses, weights)
        return weights
