"""CAGrad, conflict-averse gradient descent (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021, Algorithm 1).

With g_0 the mean task gradient and r = c ||g_0||, CAGrad's update d maximises the worst task's
decrease min_i g_i . d over the ball ||d - g_0|| <= r. Its dual is a T-dimensional convex problem
on the simplex,

    min_w  F(w) = g_w . g_0 + r ||g_w||,    g_w = sum_i w_i g_i,

and d = g_0 + (r / ||g_w*||) g_w*. Everything is a function of the Gram matrix G: g_w . g_0 = w^T G 1/T,
||g_w||^2 = w^T G w, so the method returns the coefficients alpha of d in the task gradients,
alpha = 1/T + (r / ||g_w*||) w*, divided by 1 + c^2 (`rescale: 1`, the authors' MTL code), 1 + c
(`rescale: 2`) or 1 (`rescale: 0`). The weights sum to (1 + r/||g_w*||) / rescale, not to 1.

The solver (float64 numpy, no scipy): F's minimiser g_w* is the min-norm point of the shifted hull
conv{g_i + t g_0} at the t > 0 where ||g_w(t)|| = r t (the envelope of r||x|| = min_mu r(||x||^2/mu + mu)/2;
||g_w(t)||/t is non-increasing, so that t is unique). For a fixed support S the shifted min-norm weights
are affine in t, w(t) = w_a + t w_b (one KKT solve), so ||g_w(t)||^2 = r^2 t^2 is a quadratic equation:
each round runs Wolfe's exact min-norm-point algorithm (`min_norm.wolfe_min_norm_point`) at one t to find
the support, solves that quadratic, and stops when the root satisfies the KKT conditions of the dual; a
bracket on t (bisected when the root falls outside it) guarantees progress. The answer is exact to
float64 round-off (typically 1-3 rounds). Then alpha = 1/T + w*/t*.

Degenerate cases: G = 0 or g_0 = 0 (r = 0: the ball is the point g_0) and c = 0 give the mean, 1/T
(then rescaled, as the authors' code rescales every update).
When the optimum has g_w* = 0 (the tasks are Pareto-stationary and the ball reaches the cone where
no task increases), every d of the ball with g_i . d >= 0 for all i is optimal, and we return the one
nearest g_0: its projection onto that cone, g_0 + sum_i lambda_i g_i with lambda the non-negative
least-squares solution (Lawson-Hanson in Gram form). The authors' code returns about g_0 there, torchjd zeros.

Levels: `representation` (default) uses dL_t/dz and one encoder backward (the MGDA-UB trick);
`shared` uses dL_t/dtheta_sh as the paper does, by T backwards (`grads: loop`) or one batched backward.
Heads get their own raw gradients by default, as in the authors' code and LibMTL (only the shared
parameters' gradient is overwritten there); `head_grads: weighted` scales them by alpha_t instead.
Scale: alpha is on the mean-loss scale (alpha = 1/T at c = 0), as LibMTL; the authors' NYUv2/Cityscapes
trainer multiplies the shared update by T "to match the sum loss" (equivalent to a T-times learning rate
on the shared parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlcli.methods._levels import GramMethod
from mtlcli.methods.min_norm import wolfe_min_norm_point
from mtlcli.methods.options import CagradOptions

_MAX_ROUNDS = 100
_KKT_TOL = 1e-9  # relative tolerance of the dual KKT check that ends the search
_ZERO_NORM = 1e-7  # ||g_w*|| / max_i ||g_i|| below which g_w* counts as 0 (float64 Gram entries: ~1e-8 noise)


@dataclass(frozen=True)
class CagradSolution:
    """`alpha`: coefficients of d = sum_i alpha_i g_i before rescaling; `w`: the dual optimum on the simplex
    (None when r = 0); `t`: ||g_w*|| / r (0 when g_w* = 0, inf when r = 0)."""

    alpha: np.ndarray
    w: np.ndarray | None
    t: float


def cagrad_weights(gram: Tensor, c: float = 0.4, rescale: int = 1) -> Tensor:
    """CAGrad's coefficients of the update in the task gradients, from their Gram matrix [T, T]."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    solution = solve_cagrad(gram.detach().to("cpu", torch.float64).numpy(), c)
    divisor = {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    return torch.as_tensor(solution.alpha / divisor, dtype=gram.dtype, device=gram.device)


def solve_cagrad(gram: np.ndarray, c: float) -> CagradSolution:
    """The CAGrad direction d = g_0 + r g_w*/||g_w*|| as coefficients on the g_i (see the module docstring)."""
    t_count = gram.shape[0]
    uniform = np.full(t_count, 1.0 / t_count)
    g = (gram + gram.T) / 2
    scale = float(np.max(np.diagonal(g)))
    if not np.isfinite(g).all() or scale <= 0:
        return CagradSolution(uniform, None, math.inf)
    g = g / scale  # alpha is invariant to the scale of G
    b = g.mean(axis=1)  # b_i = g_i . g_0
    q = max(float(b.mean()), 0.0)  # ||g_0||^2
    r = c * math.sqrt(q)
    if r <= 0:
        return CagradSolution(uniform, None, math.inf)
    if t_count == 1:
        return CagradSolution(np.array([1.0 + c]), np.ones(1), 1.0 / c)
    found = _search(g, b, q, r)
    if found is None:  # g_w* = 0: the projection of g_0 onto the cone {d : g_i . d >= 0}
        lam, w0 = _cone_solution(g, b, r)
        return CagradSolution(uniform + lam, w0, 0.0)
    w, t = found
    return CagradSolution(uniform + w / t, w, t)


def _shifted(g: np.ndarray, b: np.ndarray, q: float, t: float) -> np.ndarray:
    """Gram matrix of g_i + t g_0."""
    return g + t * (b[:, None] + b[None, :]) + t * t * q


def _search(g: np.ndarray, b: np.ndarray, q: float, r: float) -> tuple[np.ndarray, float] | None:
    """(w*, t*) with ||g_w*|| = r t*, or None when g_w* = 0 (to within `_ZERO_NORM`) and the ball reaches
    the cone where no task increases."""
    t0 = math.sqrt(q) / r  # = 1/c: the root if g_w* were g_0
    t, lo, hi = t0, 0.0, math.inf
    stationary: list[bool] = []  # cached: is g_w* = 0 a solution?

    def pareto_stationary() -> bool:
        if not stationary:
            w_zero = wolfe_min_norm_point(g, max_iter=4 * len(b) + 50, tol=1e-12)
            stationary.append(float(w_zero @ g @ w_zero) <= _ZERO_NORM**2 and _cone_reaches(g, b, r))
        return stationary[0]

    best: tuple[np.ndarray, float] | None = None
    for _ in range(_MAX_ROUNDS):
        w = wolfe_min_norm_point(_shifted(g, b, q, t), max_iter=4 * len(b) + 50, tol=1e-12)
        if math.sqrt(max(float(w @ g @ w), 0.0)) > r * t:
            lo = t
        else:
            hi = t
        best = (w, t)
        if (lo == 0.0 and hi <= t0 * 1e-12) or (hi <= t0 * 1e-3 and pareto_stationary()):
            return None  # ||g_w*|| = r t* <= 1e-3 ||g_0||, and g_w* = 0 is optimal
        if hi < math.inf and hi - lo <= 1e-10 * hi:  # bracketed to round-off without a KKT certificate (ties, flat ||g_w(t)||/t)
            break
        root, candidate = _root_on_support(g, b, r, np.flatnonzero(w > 0), lo, hi, t)
        if candidate is not None and root is not None:
            if r * root <= _ZERO_NORM and pareto_stationary():  # g_w* = 0 up to round-off: its direction is noise
                return None
            return candidate, root
        if root is not None and lo < root < hi:
            t = root
        elif hi == math.inf:
            t = lo * 8
        elif lo == 0.0:
            t = hi / 8
        else:
            t = math.sqrt(lo * hi)
    return None if pareto_stationary() else best  # the last round's weights, at a t within the bracket


def _root_on_support(
    g: np.ndarray, b: np.ndarray, r: float, support: np.ndarray, lo: float, hi: float, t_now: float
) -> tuple[float | None, np.ndarray | None]:
    """On `support`, the shifted min-norm weights are w(t) = w_a + t w_b; the root t of ||g_w(t)|| = r t
    in [lo, hi] (or None), and w(t) when it also satisfies the dual's KKT conditions (else None)."""
    n = len(support)
    sub = g[np.ix_(support, support)]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = sub
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.zeros((n + 1, 2))
    rhs[n, 0] = 1.0
    rhs[:n, 1] = -b[support]
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return None, None
    wa, wb = sol[:n, 0], sol[:n, 1]
    a0, a1, a2 = float(wa @ sub @ wa), float(wa @ sub @ wb), float(wb @ sub @ wb)
    coefficients = (a2 - r * r, 2 * a1, a0)
    flat = max(map(abs, coefficients)) <= 1e-12 * (a2 + r * r + abs(a1) + a0)  # ||g_w(t)|| = r t on the whole piece
    roots = [t_now] if flat else _positive_roots(*coefficients)
    slack = 1e-9 * max(hi if hi < math.inf else 0.0, lo)
    inside = [x for x in roots if lo - slack <= x <= hi + slack]
    for t in inside:
        w = np.zeros(len(b))
        w[support] = wa + t * wb
        if w.min() < -1e-12:
            continue
        w = np.clip(w, 0.0, None)
        w /= w.sum()
        if _dual_kkt(g, b, w, t, support, r):
            return t, w
    return (inside or roots or [None])[0], None


def _positive_roots(a: float, b: float, c: float) -> list[float]:
    """Positive roots of a t^2 + b t + c, ascending (numerically stable form)."""
    scale = max(abs(a), abs(b), abs(c))
    if scale == 0:
        return []
    a, b, c = a / scale, b / scale, c / scale
    if abs(a) < 1e-14:
        return [-c / b] if abs(b) > 1e-14 and -c / b > 0 else []
    disc = b * b - 4 * a * c
    if disc < 0:
        return []
    k = -0.5 * (b + math.copysign(math.sqrt(disc), b))
    roots = [k / a] + ([c / k] if k != 0 else [])
    return sorted(x for x in roots if x > 0)


def _dual_kkt(g: np.ndarray, b: np.ndarray, w: np.ndarray, t: float, support: np.ndarray, r: float) -> bool:
    """grad F(w) = b + r G w / ||g_w|| = b + G w / t here: equal on the support, not smaller off it."""
    grad = b + (g @ w) / t
    level = float(grad[support].mean())
    tol = _KKT_TOL * (math.sqrt(max(float(b.mean()), 0.0)) + r)
    return float(np.max(np.abs(grad[support] - level))) <= tol and float(grad.min()) >= level - tol


def _cone_reaches(g: np.ndarray, b: np.ndarray, r: float) -> bool:
    lam = nonnegative_least_squares(g, b)
    return float(lam @ g @ lam) <= r * r * (1 + 1e-9)


def _cone_solution(g: np.ndarray, b: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """lambda >= 0 minimising ||g_0 + sum_i lambda_i g_i|| and the min-norm weights (g_w* = 0)."""
    lam = nonnegative_least_squares(g, b)
    w0 = wolfe_min_norm_point(g, max_iter=4 * len(b) + 50, tol=1e-12)
    return lam, w0


def nonnegative_least_squares(g: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """argmin_{lambda >= 0} ||g_0 + J^T lambda||^2 = lambda^T G lambda + 2 b^T lambda + const, Lawson-Hanson
    in Gram form (J^T lambda is unique; lambda the least-norm solution on its support)."""
    n = len(b)
    lam = np.zeros(n)
    passive: list[int] = []
    tol = 1e-12 * max(float(np.max(np.abs(b))), 1e-300)
    for _ in range(max_iter or 3 * n + 10):
        grad = -(g @ lam + b)  # descent direction of the objective / 2
        free = [j for j in range(n) if j not in passive and grad[j] > tol]
        if not free:
            break
        passive.append(max(free, key=lambda j: grad[j]))
        while passive:
            idx = np.array(passive)
            z = np.zeros(n)
            z[idx] = np.linalg.lstsq(g[np.ix_(idx, idx)], -b[idx], rcond=1e-12)[0]
            if np.all(z[idx] > 0):
                lam = z
                break
            bad = idx[z[idx] <= 0]
            step = float(np.min(lam[bad] / (lam[bad] - z[bad])))
            lam = lam + step * (z - lam)
            lam[np.abs(lam) <= 1e-15] = 0.0
            passive = [i for i in passive if lam[i] > 0]
    return np.clip(lam, 0.0, None)


class Cagrad(GramMethod):
    """CAGrad on the representation gradients dL_t/dz (default) or the shared-parameter gradients."""

    name: ClassVar[str] = "cagrad"

    def __init__(self, options: CagradOptions | None = None) -> None:
        self.options = options or CagradOptions()

    def __repr__(self) -> str:
        o = self.options
        grads = f", grads={o.grads or 'loop'!r}" if o.level == "shared" else ""
        return f"Cagrad(c={o.c}, rescale={o.rescale}, level={o.level!r}{grads}, head_grads={o.head_grads!r})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Coefficients of the CAGrad update in the task gradients; `losses` is unused."""
        return cagrad_weights(gram, self.options.c, self.options.rescale)
