"""ConFIG, Conflict-Free Inverse Gradients (Liu, Chu & Thuerey, "ConFIG: Towards Conflict-free Training of
Physics Informed Neural Networks", ICLR 2025, Eq. 2; authors' code: tum-pbs/ConFIG, commit 9486243,
`conflictfree/grad_operator.py` `ConFIG_update` / `ConFIGOperator`; TorchJD 0.18's `aggregation/_config.py`).

With U the unit task gradients (rows g_i / ||g_i||; a zero gradient gives a zero row) and w > 0 the preference
vector (all ones: the authors' `EqualWeight`), the direction is the min-norm solution of U d = w and the length
the sum of the task gradients' projections on it:

    d = U^+ w,    u = d / ||d||,    g_c = (sum_i g_i . u) u,

so cos(g_i, g_c) = w_i / ||d|| for every task: with equal w every task gets the same positive cosine
(conflicts with none), and ||g_c|| = sum_i ||g_i|| cos(g_i, g_c).

From the Gram matrix alone. With D = diag(||g_i||) and C = D^+ G D^+ the cosine matrix (U U^T),
U^+ w = U^T C^+ w = J^T v with v = D^+ C^+ w; then (G v)_i = g_i . d and ||d||^2 = v^T G v, so

    g_c = J^T alpha,    alpha = (1^T G v / v^T G v) v,

exactly the reference's update (its `lstsq` and `pinv` both give the min-norm solution U^+ w). The authors'
two-task shortcut (`ConFIG_update_double`, the bisector of the two orthogonal components) is the same direction.

Rank. C^+ is the pseudo-inverse of the symmetric C: eigenvalues below lambda_max * max(T eps, 1e-10) count as
zero (eps: the Gram matrix's dtype's). The reference thresholds the singular values of U itself
(sigma < max(T, P) eps sigma_max), i.e. lambda < (max(T, P) eps)^2 lambda_max, below the round-off of a Gram
matrix: the two differ only for task gradients within ~1e-5 of linear dependence, where the reference's direction
is dominated by that round-off-sized direction and ours drops it. A zero G (or all directions dropped) gives the
zero update, as the reference's `unit_vector(0) = 0`; a non-finite G is flagged by `level_step`.

Scale: the update is the authors' and TorchJD's (a sum of projections, the scale of summed losses); scaling w
changes nothing. Levels: `shared` (default) uses dL_t/dtheta_sh as the authors' MTL experiments do
(experiments/MTL/methods/weight_methods.py `ConFIG`), by T backwards or one batched backward; `representation`
uses dL_t/dz (one encoder backward), a cheaper variant. Heads get their raw gradients by default (the authors'
`losses.sum()` backward over the task-specific parameters; TorchJD's `mtl_backward`); `head_grads: weighted`
scales them by alpha_t. The momentum variant (M-ConFIG, `momentum_operator.py`) is not implemented.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._dual_cone import check_pref_vector
from mtlcli.methods._levels import GramMethod
from mtlcli.methods.options import ConfigOptions

_RANK_FLOOR = 1e-10  # relative eigenvalue floor of the cosine matrix (see the docstring)


def config_weights(gram: Tensor, pref_vector: Tensor | None = None) -> Tensor:
    """ConFIG weights alpha [T] (g_c = J^T alpha) from the Gram matrix of the task gradients [T, T]; computed in
    float64 on the Gram matrix's device, no host sync."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    t = gram.shape[0]
    eps = torch.finfo(gram.dtype).eps if gram.dtype.is_floating_point else torch.finfo(torch.float64).eps
    g = gram.detach().to(torch.float64)
    g = (g + g.T) / 2
    norms = g.diagonal().clamp_min(0).sqrt()
    inv = torch.where(norms > 0, 1 / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(norms))
    cos = inv[:, None] * g * inv[None, :]
    w = torch.ones(t, dtype=torch.float64, device=g.device) if pref_vector is None else pref_vector.to(g)
    v = inv * (torch.linalg.pinv(cos, rtol=max(t * eps, _RANK_FLOOR), hermitian=True) @ w)
    gv = g @ v
    sq = v @ gv  # ||d||^2
    alpha = torch.where(sq > 0, gv.sum() / sq.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(sq)) * v
    return alpha.to(gram.dtype)


class Config(GramMethod):
    """ConFIG on the shared-parameter gradients (default) or the representation gradients dL_t/dz."""

    name: ClassVar[str] = "config"

    def __init__(self, options: ConfigOptions | None = None) -> None:
        self.options = options or ConfigOptions()
        pref = self.options.pref_vector
        self._pref = None if pref is None else torch.tensor(pref, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Config(pref_vector={self.options.pref_vector!r}, {self.options.describe_level()})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        check_pref_vector(self.options, num_tasks, self.name)

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Weights alpha of the ConFIG update g_c = J^T alpha; `losses` is unused."""
        return config_weights(gram, self._pref)
