"""IMTL, the hybrid of Liu et al. (ICLR 2021, §3.3 and Algorithm 1).

1. IMTL-L scaled losses l_t = e^{s_t} L_t (the -s_t terms are constant in theta and z);
2. IMTL-G weights alpha from the Gram matrix of the representation gradients g_t = dl_t/dz;
3. the encoder gets sum_t alpha_t dl_t/dz (one backward), each head its raw dl_t/dtheta_t, and
   s_t the gradient of e^{s_t} L_t - s_t, i.e. e^{s_t} L_t - 1.

The reported weights are the effective factors on the raw losses for the encoder, alpha_t e^{s_t}.

The authors published no code. LibMTL's IMTL (median-research-group/LibMTL, commit 4336804,
LibMTL/weighting/IMTL.py) is this step with `rep_grad` except that it sums dl_t/dz over the batch before solving
for alpha (equal on one-example batches: tests/unit/methods/test_conformance_weighting.py); without `rep_grad`,
its default, it solves on the shared parameters' gradients instead of z's.

On N processes (torchrun) the Gram matrix is summed across the ranks (with the losses, one all-reduce) and
each rank adds 1/N of the -s_t term (`_learned_scale`): the same algorithm as on one process.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlcli.methods._closed_form import NegativeProjections, imtl_g_weights
from mtlcli.methods._learned_scale import LearnedScale, regulariser_share
from mtlcli.methods._representation import apply_representation_update, representation_grads, summed_gram_and_losses
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import finite, flag_non_finite
from mtlcli.methods.options import ImtlOptions


class Imtl(LearnedScale):
    """IMTL-G on the representation for the encoder, IMTL-L for the heads and the scales."""

    name: ClassVar[str] = "imtl"

    def __init__(self, options: ImtlOptions | None = None) -> None:
        self.options = options or ImtlOptions()
        self.negative = NegativeProjections()

    def __repr__(self) -> str:
        return "Imtl()"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """IMTL-G weights for the Gram matrix of the *scaled* losses' representation gradients."""
        alpha = flag_non_finite(gram, imtl_g_weights(finite(gram)))
        self.negative.observe(gram, alpha)
        return alpha

    def epoch_stats(self) -> dict[str, int]:
        return self.negative.epoch_stats()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.negative.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.negative.load_state_dict(state)

    def backward(self, step: Step) -> Tensor:
        s = self._scale()
        scale = torch.exp(s.detach())
        scaled = step.scaled(scale)
        grads = representation_grads(scaled)
        gram, _ = summed_gram_and_losses(step, grads.gram())  # the batch's, and the raw losses for the trainer
        alpha = self.weights(scaled.losses.detach(), gram)
        apply_representation_update(scaled, grads, alpha, head_grads="raw")
        torch.sum(torch.exp(s) * step.losses.detach() - s * regulariser_share()).backward()
        return (alpha * scale).detach()
