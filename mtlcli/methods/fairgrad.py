"""FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024, Eq. 4 and Algorithm 1;
authors' code: OptMN-Lab/fairgrad, `methods/weight_methods.py`).

The update d = J^T w maximises the alpha-fair utility sum_i u_alpha(g_i . d) of the task "rates"
g_i . d over a ball; its optimality condition, with the rates g_i . d = (G w)_i, is

    G w = w^(-1/alpha)    (elementwise, w > 0),

so every task's rate is a decreasing power of its weight. alpha = 0 is linear scalarisation (the mean,
as the authors' and TorchJD's code return), alpha = 1 proportional fairness (g_i . d = 1 / w_i, the
Nash-MTL condition), alpha = 2 minimum potential delay, alpha -> inf max-min fairness.

Solver (float64 numpy, no scipy). The system is the stationarity condition of the strictly convex

    phi(w) = w^T G w / 2 - sum_i h(w_i),    h' (w) = w^(-1/alpha)   (h = log for alpha = 1),

on w > 0, so its solution is unique when it exists, and damped Newton on phi (Hessian
G + diag(w^(-1/alpha - 1) / alpha) is positive definite; fraction-to-the-boundary step and Armijo
backtracking) finds it to float64 round-off. G is first divided by s = max_i G_ii, and w rescaled by
s^(-alpha/(alpha + 1)) at the end (the exact scaling law of the system).
The authors and TorchJD run scipy's `least_squares` on the residual from w = 1/T with bounds w >= 0:
the same root where it converges (TorchJD agrees to its tolerance).

Degenerate G: a solution exists iff no w >= 0, w != 0 has J^T w = 0, i.e. iff 0 is not in the convex
hull of the task gradients (no task gradient is 0, no subset cancels). Where the hull's min-norm point
has ||x||^2 <= 1e-8 max_i ||g_i||^2 (Wolfe's exact algorithm decides), we solve the ridge system
(G + 1e-8 s I) w = w^(-1/alpha) instead: w then grows (to ~1e4 s^(-alpha/(alpha+1)) at alpha = 1) only
along the cancelling combinations, which J^T maps to 0, so d stays finite and the weights bounded. The
authors' and TorchJD's least_squares stop wherever their iteration budget ends there. G = 0 or a
non-finite G gives the mean 1/T (d = 0 anyway; `level_step` flags non-finite gradients).

Scale: w is the paper's (and TorchJD's); the authors' trainer multiplies the shared update by T "to
match the sum loss" and clips its norm to 1 (`max_norm`), i.e. a different learning rate there.
Levels: `representation` (default) uses dL_t/dz and one encoder backward; `shared` uses dL_t/dtheta_sh as
the authors do, by T backwards or one batched backward. Heads get their raw gradients by default, as in
the authors' code; `head_grads: weighted` scales them by w_t.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlcli.methods._levels import GramMethod
from mtlcli.methods.min_norm import wolfe_min_norm_point
from mtlcli.methods.options import FairGradOptions

_RIDGE = 1e-8  # relative ridge (and the hull min-norm^2 below which it is used), see the docstring
_MAX_ITER = 200
_RTOL = 1e-12  # relative residual at which Newton stops


def fairgrad_weights(gram: Tensor, alpha: float = 1.0) -> Tensor:
    """FairGrad weights w [T] (G w = w^(-1/alpha)) from the Gram matrix of the task gradients [T, T]."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    w = solve_fairgrad(gram.detach().to("cpu", torch.float64).numpy(), alpha)
    return torch.as_tensor(w, dtype=gram.dtype, device=gram.device)


def solve_fairgrad(gram: np.ndarray, alpha: float) -> np.ndarray:
    """w > 0 with G w = w^(-1/alpha) (or its ridge version when there is no solution; see the module docstring)."""
    t = gram.shape[0]
    uniform = np.full(t, 1.0 / t)
    g = (gram + gram.T) / 2
    scale = float(np.max(np.diagonal(g))) if np.isfinite(g).all() else math.nan
    if alpha == 0 or not scale > 0:
        return uniform
    g = g / scale
    hull = wolfe_min_norm_point(g, max_iter=4 * t + 50, tol=1e-12)
    if float(hull @ g @ hull) <= _RIDGE:
        g = g + _RIDGE * np.eye(t)
    w = _newton(g, 1.0 / alpha)
    return w * scale ** (-alpha / (alpha + 1.0))


def _phi(g: np.ndarray, w: np.ndarray, p: float) -> float:
    barrier = float(np.sum(np.log(w))) if p == 1.0 else float(np.sum(w ** (1.0 - p))) / (1.0 - p)
    return 0.5 * float(w @ g @ w) - barrier


def _newton(g: np.ndarray, p: float) -> np.ndarray:
    """Damped Newton on phi (p = 1/alpha) from the diagonal solution w_i = G_ii^(-1/(1+p))."""
    diag = np.clip(np.diagonal(g), 1e-12, None)
    w = diag ** (-1.0 / (1.0 + p))
    abs_g = np.abs(g)
    for _ in range(_MAX_ITER):
        rate = g @ w
        power = w ** (-p)
        grad = rate - power
        if np.all(np.abs(grad) <= _RTOL * (abs_g @ w + power)):
            break
        hess = g + np.diag(p * power / w)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
        slope = float(grad @ step)
        if not slope < 0:
            break
        shrink = step < 0
        size = min(1.0, 0.99 * float(np.min(-w[shrink] / step[shrink]))) if shrink.any() else 1.0
        if size == 1.0 and -slope <= 1e-8:  # Newton decrement^2: the quadratic regime, where phi's decrease is round-off
            w = w + step
            continue
        phi_now = _phi(g, w, p)
        for _ in range(60):
            candidate = w + size * step
            if _phi(g, candidate, p) <= phi_now + 1e-4 * size * slope:
                break
            size /= 2
        else:
            break  # no decrease left to round-off
        w = candidate
    return w


class FairGrad(GramMethod):
    """FairGrad on the representation gradients dL_t/dz (default) or the shared-parameter gradients."""

    name: ClassVar[str] = "fairgrad"

    def __init__(self, options: FairGradOptions | None = None) -> None:
        self.options = options or FairGradOptions()

    def __repr__(self) -> str:
        return f"FairGrad(alpha={self.options.alpha}, {self.options.describe_level()})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Weights w of the FairGrad update d = J^T w; `losses` is unused."""
        return fairgrad_weights(gram, self.options.alpha)
