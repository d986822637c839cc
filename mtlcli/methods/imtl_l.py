"""IMTL-L (Liu et al., ICLR 2021, §3.2, eq. 6): learnable loss scales, scaled loss e^{s_t} L_t - s_t.

The derivative in s_t is e^{s_t} L_t - 1, so s_t drives every scaled loss towards 1; the network and
the s_t minimise sum_t (e^{s_t} L_t - s_t) together (s_t optimised with the model, saved in
checkpoints).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._learned_scale import LearnedScale, regulariser_share
from mtlcli.methods.base import Step
from mtlcli.methods.options import ImtlLOptions


class ImtlL(LearnedScale):
    """sum_t e^{s_t} L_t - s_t."""

    name: ClassVar[str] = "imtl-l"

    def __init__(self, options: ImtlLOptions | None = None) -> None:
        self.options = options or ImtlLOptions()

    def __repr__(self) -> str:
        return "ImtlL()"

    def backward(self, step: Step) -> Tensor:
        s = self._scale()
        scale = torch.exp(s)
        torch.sum(scale * step.losses - s * regulariser_share()).backward()
        return scale.detach()
