"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018), in its classification form.

Each task gets a learnable s_t = log sigma_t^2. For a softmax classifier Kendall et al. (eq. 10 and
its classification approximation) minimise (1/sigma^2) L + log sigma, i.e.

    L = sum_t exp(-s_t) L_t + s_t / 2,

whose stationary point in s_t is exp(-s_t) L_t = 1/2. Every task of this project is a
cross-entropy classification, so this is the form the paper prescribes for them (the regression
form exp(-s) L + s, stationary at exp(-s) L = 1, is IMTL-L reparametrised by s -> -s, so using it
would make the two methods identical; the factor 1/2 is exactly the classification bias the IMTL
paper analyses in §4). s_t is optimised with the model and saved in checkpoints.

Kendall et al. published no code; the common implementations are MTAN's (lorenmt/mtan, commit c36c30b,
im2im_pred/utils.py, `--weight uncert`) and LibMTL's copy of it (median-research-group/LibMTL, commit
4336804, LibMTL/weighting/UW.py): sum_t L_t / (2 exp(s'_t)) + s'_t / 2 with s'_t = -0.5 at the start. That is
this objective with s_t = s'_t + log 2 (same gradients in the network and in s, up to a constant), so `mtl`
starts at s_t = log 2 - 1/2 (weights exp(-s_t) = e^{1/2} / 2, about 0.82) and then takes their updates step
for step (tests/unit/methods/test_conformance_weighting.py).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._learned_scale import LearnedScale, regulariser_share
from mtlcli.methods.base import Step
from mtlcli.methods.options import UncertaintyOptions


class Uncertainty(LearnedScale):
    """sum_t exp(-s_t) L_t + s_t/2 with learnable log-variances s_t."""

    name: ClassVar[str] = "uncertainty"
    initial: float = math.log(2.0) - 0.5  # MTAN's and LibMTL's log-variance -0.5 in their 1/(2 sigma^2) form

    def __init__(self, options: UncertaintyOptions | None = None) -> None:
        self.options = options or UncertaintyOptions()

    def __repr__(self) -> str:
        return "Uncertainty(form='classification')"

    def backward(self, step: Step) -> Tensor:
        s = self._scale()
        precision = torch.exp(-s)
        torch.sum(precision * step.losses + s * (regulariser_share() / 2)).backward()
        return precision.detach()
