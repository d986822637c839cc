"""Gradients with respect to the shared representation z (the MGDA-UB trick, Sener & Koltun 2018 §3.3).

One backward through each (small) head gives dL_t/dz over the full [batch x features] tensor and the
head's own parameter gradients; the encoder then gets ONE backward with sum_t alpha_t dL_t/dz, which
equals the encoder gradient of sum_t alpha_t L_t.

Precision: under autocast z (and so dL_t/dz) may be bfloat16 or float16; the stacked dL_t/dz are kept in
float32 (`Step.unscaled`, which also divides out fp16's loss scale), so the Gram matrix, the solvers and the
weights are float32 computations; the encoder's backward gets the combined gradient back in z's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlcli import distributed
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import finite, flag_non_finite
from mtlcli.methods.options import HeadGrads


@dataclass
class RepresentationGrads:
    """Per-task gradients: `z_grads` [T, numel(z)] (true, float32 at least: `Step.unscaled`) and each head's own
    parameter gradients (as autograd gave them: times the step's `grad_scale` under fp16)."""

    z_grads: Tensor
    head_grads: list[list[Tensor | None]]

    def gram(self) -> Tensor:
        return self.z_grads @ self.z_grads.T


def representation_grads(step: Step) -> RepresentationGrads:
    """dL_t/dz (flattened, batch kept) and dL_t/dtheta_t for every task; touches no encoder node."""
    z_grads = []
    head_grads: list[list[Tensor | None]] = []
    for t, params in enumerate(step.task_parameters()):
        grads = torch.autograd.grad(step.task_loss(t), [step.z, *params], retain_graph=True, allow_unused=True)
        gz = grads[0] if grads[0] is not None else torch.zeros_like(step.z)
        z_grads.append(gz.reshape(-1))
        head_grads.append(list(grads[1:]))
    return RepresentationGrads(step.unscaled(torch.stack(z_grads)), head_grads)


def apply_representation_update(
    step: Step, grads: RepresentationGrads, weights: Tensor, *, head_grads: HeadGrads = "weighted"
) -> None:
    """Heads get weights_t * dL_t/dtheta_t ('weighted', the authors' code) or dL_t/dtheta_t ('raw',
    the paper's Algorithm 2); the encoder gets one backward of sum_t weights_t dL_t/dz."""
    weights = weights.detach()
    for t, (params, grads_t) in enumerate(zip(step.task_parameters(), grads.head_grads, strict=True)):
        scale = weights[t] if head_grads == "weighted" else None
        for p, g in zip(params, grads_t, strict=True):
            if g is None:
                continue
            # the update owns the heads' gradients (fresh tensors from autograd): scaled and stored in place,
            # no copy of parameters as large as a PSP head's 23M
            _take(p, g.mul_(scale) if scale is not None else g)
    step.backward_z(weights.to(grads.z_grads.dtype) @ grads.z_grads)


WeightsFn = Callable[[Tensor, Tensor], Tensor]  # (losses, gram) -> weights [T]


def gram_step_on_representation(step: Step, weights: WeightsFn, *, head_grads: HeadGrads) -> Tensor:
    """The whole step of a Gram-based method on dL_t/dz: gradients, weights from their Gram matrix,
    then the update (one encoder backward). Returns the detached weights."""
    grads = representation_grads(step)
    gram, losses = summed_gram_and_losses(step, grads.gram())
    alpha = flag_non_finite(gram, weights(losses, finite(gram)))
    apply_representation_update(step, grads, alpha, head_grads=head_grads)
    return alpha.detach()


def summed_gram_and_losses(step: Step, gram: Tensor) -> tuple[Tensor, Tensor]:
    """Across ranks z is split by rows, so the batch's Gram matrix is the sum of theirs: summed with the losses
    in one all-reduce of T^2 + T numbers (the losses are then the step's, for the trainer too). `gram` may be any
    tensor that is a sum over the batch's rows (squared norms, gradients of the shared layers)."""
    job = distributed.current()
    if not job.active:
        return gram, step.summed_losses()
    if step.summed is not None:
        return job.sum_(gram), step.summed
    gram, step.summed = job.sum_gram_and_losses(gram, step.losses.detach())
    return gram, step.summed


def _take(param: nn.Parameter, grad: Tensor) -> None:
    """`_accumulate` for a gradient nobody else holds: it becomes `.grad` without a copy."""
    if param.grad is None:
        param.grad = grad.detach()
    else:
        param.grad.add_(grad)


def _accumulate(param: nn.Parameter, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad)


def normalize_gram(gram: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """Gram matrix of g_t / c_t with c_t = 1, ||g_t||, L_t or L_t ||g_t|| ('none', 'l2', 'loss', 'loss+')."""
    if normalization == "none":
        return gram
    norms = gram.diagonal().clamp_min(0).sqrt()
    if normalization == "l2":
        scale = norms
    elif normalization == "loss":
        scale = losses.detach().to(gram.dtype)
    elif normalization == "loss+":
        scale = losses.detach().to(gram.dtype) * norms
    else:
        raise ValueError(f"unknown normalization {normalization!r}")
    scale = scale.clamp_min(torch.finfo(gram.dtype).tiny)
    # one division per side: the product of two clamped scales underflows to 0, and a zero gradient's 0 / 0 was NaN
    return gram / scale[:, None] / scale[None, :]
