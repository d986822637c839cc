"""Geometric loss strategy (Chennupati et al., CVPR-W 2019): minimise (prod_t L_t)^(1/T).

Its gradient is sum_t [GLS / (T L_t)] dL_t: each loss weighted by its reciprocal (IMTL appendix C.5);
those effective weights are what it reports. Not scale-invariant in the gradient's magnitude.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods.base import Stateless, Step
from mtlcli.methods.options import GlsOptions


class Gls(Stateless):
    """exp(mean_t log L_t)."""

    name: ClassVar[str] = "gls"

    def __init__(self, options: GlsOptions | None = None) -> None:
        self.options = options or GlsOptions()

    def __repr__(self) -> str:
        return "Gls()"

    def backward(self, step: Step) -> Tensor:
        losses = step.losses
        tiny = torch.finfo(losses.dtype).tiny
        total = torch.exp(torch.log(losses.clamp_min(tiny)).mean())
        total.backward()
        return (total / (step.num_tasks * losses.clamp_min(tiny))).detach()
