"""SDMGrad, stochastic direction-oriented multi-objective gradient descent (Xiao, Ban & Ji, "Direction-oriented
Multi-objective Learning: Simple and Provable Stochastic Algorithms", NeurIPS 2023).

The direction is pulled towards the mean gradient g_0 = J^T 1/T: w minimises
1/2 ||J^T (w + lambda w~)||^2 on the simplex (w~ = 1/T), estimated without bias from two independent samples
xi, xi' by the cross Gram matrix G_12 = J_xi J_xi'^T, and the update, on a third sample zeta, is

    d = (J_zeta^T w + lambda g_0(zeta)) / (1 + lambda) = J_zeta^T (w + lambda w~) / (1 + lambda).

Per step, as the authors' code: A = G_12 / s^2 with s = mean_t sqrt(G_tt + 1e-4) (the scale-normalisation of the
paper's section 6.1); from the kept w, `niter` (20) steps of momentum SGD (lr 10, momentum 0.5, restarted every step)
on the gradient A (w + lambda w~), each followed by the Euclidean projection on the simplex; the update above,
times T ("to match the sum loss"), the shared gradient then clipped to norm 1. w starts at 1/T and is kept across
steps (`state_dict`: "w"). Fixed point: when A (w + lambda w~) is constant across the tasks (w's direction
balances them), the iteration leaves w where it is.

Reference: the authors' code, OptMN-Lab/sdmgrad, methods/weight_methods.py `SDMGrad` (commit 8333f9e), with
lamda 0.3 and niter 20 of experiments/nyuv2/run.sh (the class default is 0.6) and max_norm 1.0 of
experiments/utils.py. What differs, and why:

- the samples: the authors draw xi and xi' as two extra batches (experiments/nyuv2/trainer.py); `mtl` uses the two
  halves of the step's batch for them, and the batch itself (the halves' gradients weighted by their shares) for
  zeta (`mtlcli.methods._two_samples`): one forward pass, one pass over the data per epoch;
- the authors' `get_weighted_loss` fills ONE tensor three times (`[torch.Tensor(...)] * 3`), so their zeta, xi and
  xi' are all the last batch's gradients (G_12 is then the single-sample Gram matrix); `mtl` follows the paper
  (and LibMTL) with distinct samples;
- the diagonal of G_12 can be negative with distinct samples: clamped at 0 before the square root (the authors'
  sqrt(G_tt + 1e-4) would be NaN; LibMTL clamps too); `scale_eps` (1e-4) is at least 1e-12, so that A stays finite
  and the projection accurate when no diagonal entry is positive;
- heads get the batch's raw gradient; the authors' per-sample backward passes leave the sum of the three
  samples' head gradients there.

Options reach the other references: LibMTL (LibMTL/weighting/SDMGrad.py, commit 4336804) is `w_lr: 5`,
`reduction: mean`, `max_norm: 0` (and s^2 + 1e-8 for the normalisation); TorchJD's `SDMGradWeighting` is
`reduction: mean` with the lr 10. `level: shared` (the default) is the paper's; `level: representation` the
cheaper variant on z (row-summed z-gradients in G_12, see `_two_samples`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._two_samples import TwoSampleGramMethod
from mtlcli.methods.min_norm import project_simplex
from mtlcli.methods.options import SDMGradOptions


def sdmgrad_w(
    w: Tensor, gram: Tensor, *, lambda_reg: float, niter: int, lr: float, momentum: float, scale_eps: float
) -> Tensor:
    """The new w: `niter` projected momentum-SGD steps on 1/2 (w + lambda_reg w~)^T A (w + lambda_reg w~) from w,
    A = G / (mean_t sqrt(max(G_tt, 0) + scale_eps))^2."""
    t = gram.shape[0]
    scale = (gram.diagonal().clamp_min(0) + scale_eps).sqrt().mean()
    a = gram / scale**2
    mean = torch.full_like(w, 1.0 / t)
    velocity: Tensor | None = None
    for _ in range(niter):
        grad = a @ (w + lambda_reg * mean)
        velocity = grad if velocity is None else momentum * velocity + grad
        w = project_simplex(w - lr * velocity)
    return w


class SDMGrad(TwoSampleGramMethod):
    """Weights (w + lambda w~) / (1 + lambda), w by projected SGD on the cross Gram of two halves of the batch."""

    name: ClassVar[str] = "sdmgrad"
    state_key: ClassVar[str] = "w"

    def __init__(self, options: SDMGradOptions | None = None) -> None:
        super().__init__()
        self.options = options or SDMGradOptions()

    def __repr__(self) -> str:
        o = self.options
        return (
            f"SDMGrad(lambda_reg={o.lambda_reg}, niter={o.niter}, w_lr={o.w_lr}, w_momentum={o.w_momentum}, "
            f"scale_eps={o.scale_eps}, reduction={o.reduction!r}, max_norm={o.max_norm}, {o.describe_level()})"
        )

    @property
    def max_norm(self) -> float:
        return self.options.max_norm

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """(w + lambda_reg w~) / (1 + lambda_reg), times T for `reduction: sum`, after moving the kept w on G_12
        (`losses` is unused). Before `max_norm`'s clip, which the step applies."""
        o = self.options
        kept = self.current(gram)
        self.kept = sdmgrad_w(
            kept, gram.to(kept.dtype), lambda_reg=o.lambda_reg, niter=o.niter, lr=o.w_lr, momentum=o.w_momentum,
            scale_eps=o.scale_eps,
        )  # fmt: skip
        t = gram.shape[0]
        combined = (self.kept + o.lambda_reg / t) / (1 + o.lambda_reg)
        return (combined * t if o.reduction == "sum" else combined).to(gram.dtype)
