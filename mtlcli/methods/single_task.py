"""Single-task baseline: one independent network per task, trained together in one run.

The model is built with one encoder per task (`models.build_model(independent=True)`): z is the
concatenation of the T encoders' outputs and head t reads only its own slice, so L_t reaches only
network t. Minimising the plain sum sum_t L_t then gives every network exactly its own gradient
dL_t/dtheta_t, as T separate trainings would (with the same optimiser settings and batches).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods.base import Stateless, Step, weighted_backward
from mtlcli.methods.options import SingleTaskOptions


class SingleTask(Stateless):
    """sum_t L_t on T independent networks (requires the independent model, which the trainer builds)."""

    name: ClassVar[str] = "single-task"
    independent_networks: ClassVar[bool] = True

    def __init__(self, options: SingleTaskOptions | None = None) -> None:
        self.options = options or SingleTaskOptions()

    def __repr__(self) -> str:
        return "SingleTask()"

    def backward(self, step: Step) -> Tensor:
        weights = torch.ones_like(step.losses).detach()
        weighted_backward(step.losses, weights)
        return weights
