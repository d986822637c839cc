"""Geometric loss strategy (Chennupati et al., CVPR-W 2019): minimise (prod_t L_t)^(1/T).

Its gradient is sum_t [GLS / (T L_t)] dL_t: each loss weighted by its reciprocal (IMTL appendix C.5);
those effective weights are what it reports. Not scale-invariant in the gradient's magnitude.

The step is one backward of sum_t w_t L_t with those weights, computed from the batch's losses: on N
processes (torchrun) each rank holds a part of every L_t, and the geometric mean of the parts is not a part of
the geometric mean, so the weights come from the losses summed across the ranks (the same algorithm as on one).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods.base import Stateless, Step, weighted_backward
from mtlcli.methods.options import GlsOptions


class Gls(Stateless):
    """exp(mean_t log L_t)."""

    name: ClassVar[str] = "gls"

    def __init__(self, options: GlsOptions | None = None) -> None:
        self.options = options or GlsOptions()

    def __repr__(self) -> str:
        return "Gls()"

    def backward(self, step: Step) -> Tensor:
        losses = step.summed_losses().clamp_min(torch.finfo(step.losses.dtype).tiny)
        total = torch.exp(torch.log(losses).mean())
        weights = total / (step.num_tasks * losses)  # d GLS / dL_t
        weighted_backward(step.losses, weights)
        return weights
