"""Min-norm point in the convex hull of the task gradients, from their Gram matrix only.

Solves  min_w  w^T G w  subject to  w >= 0, sum(w) = 1  (Sener & Koltun 2018, eq. 3), where
G[i, j] = g_i . g_j. Three solvers:

- ``min-norm-point`` (default, exact): Wolfe's (1976) min-norm-point algorithm in Gram form, an
  active-set method that ends at a point satisfying the KKT conditions to float64 precision.
  One host transfer of the T x T matrix per call.
- ``frank-wolfe``: the paper's Algorithm 2: best-pair start, vertex t = argmin (G w)_t, exact line
  search by the two-vector closed form, stop when the step is below `tol` or after `max_iter`.
  Runs on the tensor's device and checks convergence once per block of iterations, not per iteration.
- ``projected-gradient``: what the authors' code trained with: gradient steps projected onto the
  simplex by the sort-based projection (Duchi et al. 2008), from the best-pair start.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlcli.methods.options import SOLVERS, Solver

_CHECK_EVERY = 16  # Frank-Wolfe iterations between convergence checks (one host sync each)


def min_norm(
    gram: Tensor,
    *,
    solver: Solver = "min-norm-point",
    max_iter: int = 250,
    tol: float = 1e-10,
    skip_still: bool = False,
) -> Tensor:
    """Weights on the simplex minimising w^T G w, as a tensor of G's dtype on G's device.

    `tol` is the stopping tolerance: relative duality gap for ``min-norm-point``, step size for
    ``frank-wolfe`` and ``projected-gradient`` (the authors used 1e-5 for those).
    `skip_still`: a task whose gradient is exactly zero (G_tt = 0, e.g. no label in the batch) constrains no
    direction; it gets weight 0 and the min-norm point is taken over the others (all zero: the plain solve).
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    solve = _solve_moving if skip_still else _solve
    return flag_non_finite(gram, solve(finite(gram), solver, max_iter, tol))


def finite(gram: Tensor) -> Tensor:
    """The Gram matrix with non-finite entries set to 0, for a solver whose answer `flag_non_finite` replaces."""
    return torch.nan_to_num(gram, nan=0.0, posinf=0.0, neginf=0.0)


def flag_non_finite(gram: Tensor, weights: Tensor) -> Tensor:
    """Weights with NaN for every task whose Gram row is non-finite (its gradient was) and 0 for the
    others, when there is such a task; the weights unchanged otherwise. No host sync: a non-finite
    gradient then surfaces in the trainer's non-finite guard, which names those tasks, instead of being
    hidden behind some finite weights."""
    diagonal_bad = ~torch.isfinite(gram.diagonal())  # ||g_t||^2: a non-finite g_t spoils its whole row and column
    named = torch.where(diagonal_bad.any(), diagonal_bad, torch.ones_like(diagonal_bad))  # else: all of them
    flagged = torch.where(named, torch.full_like(weights, float("nan")), torch.zeros_like(weights))
    return torch.where(torch.isfinite(gram).all(), weights, flagged)


def _solve_moving(gram: Tensor, solver: Solver, max_iter: int, tol: float) -> Tensor:
    """`_solve` over the tasks whose gradient is not exactly zero, weight 0 for the others. The still tasks are
    found on the host copy the min-norm-point solver makes anyway; the device solvers pay one host transfer of
    the diagonal for them (they sync to check convergence anyway)."""
    host = gram.detach().to("cpu", torch.float64).numpy() if solver == "min-norm-point" else None
    moving = np.diagonal(host) != 0 if host is not None else gram.diagonal().cpu().numpy() != 0
    if moving.all() or not moving.any():
        if host is None:
            return _solve(gram, solver, max_iter, tol)
        return torch.as_tensor(wolfe_min_norm_point(host, max_iter=max_iter, tol=tol), dtype=gram.dtype, device=gram.device)
    if host is not None:
        weights = np.zeros(gram.shape[0])
        weights[moving] = wolfe_min_norm_point(host[np.ix_(moving, moving)], max_iter=max_iter, tol=tol)
        return torch.as_tensor(weights, dtype=gram.dtype, device=gram.device)
    keep = torch.as_tensor(np.flatnonzero(moving), device=gram.device)
    full = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    full[keep] = _solve(gram.index_select(0, keep).index_select(1, keep), solver, max_iter, tol)
    return full


def _solve(gram: Tensor, solver: Solver, max_iter: int, tol: float) -> Tensor:
    if solver == "min-norm-point":
        weights = wolfe_min_norm_point(gram.detach().to("cpu", torch.float64).numpy(), max_iter=max_iter, tol=tol)
        return torch.as_tensor(weights, dtype=gram.dtype, device=gram.device)
    if solver == "frank-wolfe":
        return frank_wolfe(gram.detach(), max_iter=max_iter, tol=tol)
    if solver == "projected-gradient":
        return projected_gradient(gram.detach(), max_iter=max_iter, tol=tol)
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def two_point(v11: Tensor, v12: Tensor, v22: Tensor) -> tuple[Tensor, Tensor]:
    """argmin over gamma in [0, 1] of ||gamma x1 + (1 - gamma) x2||^2 and its value (paper eq. 4)."""
    denom = v11 + v22 - 2 * v12
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    gamma = torch.where(denom > 0, (v22 - v12) / safe, torch.ones_like(denom)).clamp(0.0, 1.0)
    value = gamma * gamma * v11 + 2 * gamma * (1 - gamma) * v12 + (1 - gamma) ** 2 * v22
    return gamma, value


def best_pair(gram: Tensor) -> Tensor:
    """The best two-task solution among all pairs, as simplex weights (device-side, no sync)."""
    t = gram.shape[0]
    diag = gram.diagonal()
    gamma, value = two_point(diag[:, None], gram, diag[None, :])
    eye = torch.eye(t, dtype=torch.bool, device=gram.device)
    value = value.masked_fill(eye, float("inf"))
    flat = torch.argmin(value)
    i, j = flat // t, flat % t
    g = gamma.reshape(-1)[flat]
    w = torch.zeros(t, dtype=gram.dtype, device=gram.device)
    w = w.index_add(0, i.reshape(1), g.reshape(1))
    return w.index_add(0, j.reshape(1), (1 - g).reshape(1))


def frank_wolfe(gram: Tensor, *, max_iter: int = 250, tol: float = 1e-5) -> Tensor:
    """Algorithm 2 of Sener & Koltun (2018) on the Gram matrix."""
    t = gram.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    w = best_pair(gram)
    if t == 2:
        return w
    eye = torch.eye(t, dtype=gram.dtype, device=gram.device)
    done = torch.zeros((), dtype=torch.bool, device=gram.device)
    for it in range(max_iter):
        gw = gram @ w
        vertex = torch.argmin(gw)
        gamma, _ = two_point(w @ gw, gw[vertex], gram[vertex, vertex])
        step = 1 - gamma
        new_w = gamma * w + step * eye[vertex]
        w = torch.where(done, w, new_w)
        done = done | (step < tol)
        if (it + 1) % _CHECK_EVERY == 0 and bool(done):
            break
    return w


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto the probability simplex (sort-based; Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    cond = u - css / k > 0
    rho = torch.sum(cond) - 1
    theta = css[rho] / (rho + 1).to(v.dtype)
    return torch.clamp(v - theta, min=0)


def projected_gradient(gram: Tensor, *, max_iter: int = 250, tol: float = 1e-5) -> Tensor:
    """Projected gradient descent on w^T G w over the simplex, step 1/L with L = 2 ||G||."""
    t = gram.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    w = best_pair(gram)
    lipschitz = 2 * gram.abs().sum(dim=1).max().clamp_min(torch.finfo(gram.dtype).tiny)
    done = torch.zeros((), dtype=torch.bool, device=gram.device)
    for it in range(max_iter):
        new_w = project_simplex(w - (2 * (gram @ w)) / lipschitz)
        change = (new_w - w).abs().sum()
        w = torch.where(done, w, new_w)
        done = done | (change < tol)
        if (it + 1) % _CHECK_EVERY == 0 and bool(done):
            break
    return w


def _affine_minimizer(gram: np.ndarray) -> np.ndarray | None:
    """argmin u^T G u with sum(u) = 1 (no sign constraint); None if the points are affinely dependent."""
    n = gram.shape[0]
    scale = gram.diagonal().max()
    g = gram / scale if scale > 0 else gram
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = g
    kkt[:n, n] = 1.0
    kkt[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(sol)) or abs(sol[:n].sum() - 1.0) > 1e-6:
        return None
    return sol[:n]


def wolfe_min_norm_point(gram: np.ndarray, *, max_iter: int = 250, tol: float = 1e-10) -> np.ndarray:
    """Wolfe's min-norm-point algorithm (1976) on a Gram matrix, in float64. Exact up to `tol`.

    Stops when the relative duality gap (||x||^2 - min_j g_j . x) / ||x||^2 is below `tol`, where
    x = sum_i w_i g_i is the current point: then w^T G w is within a factor (1 + 2 tol) of the optimum.
    """
    t = gram.shape[0]
    scale = float(np.max(np.diagonal(gram)))
    if t == 1 or not np.isfinite(scale):
        return np.full(t, 1.0 / t)
    if scale <= 0:  # every gradient is zero: every point of the simplex is optimal
        return np.full(t, 1.0 / t)
    g = (gram + gram.T) / (2 * scale)
    interior = _interior_optimum(g, tol)
    if interior is not None:
        return interior
    first = int(np.argmin(np.diagonal(g)))
    support = [first]
    w = np.zeros(t)
    w[first] = 1.0
    tiny = np.finfo(np.float64).eps
    for _ in range(max_iter):
        gw = g @ w
        norm2 = float(w @ gw)
        j = int(np.argmin(gw))
        gap = norm2 - gw[j]
        if gap <= tol * norm2 or gap <= tiny * 16 or j in support:
            break
        support.append(j)
        while True:  # minor cycle: move to the affine minimiser of the corral, dropping points on the way
            idx = np.array(support)
            u = _affine_minimizer(g[np.ix_(idx, idx)])
            if u is None:  # numerically dependent corral: drop the newcomer and stop here
                support.pop()
                return _normalised(w)
            if np.all(u > tiny):
                w = np.zeros(t)
                w[idx] = u
                break
            current = w[idx]
            neg = u <= tiny
            theta = np.min(current[neg] / (current[neg] - u[neg]))
            moved = current + theta * (u - current)
            moved[moved <= tiny] = 0.0
            w = np.zeros(t)
            w[idx] = moved
            support = [int(i) for i in idx[moved > 0]]
    return _normalised(w)


def _interior_optimum(g: np.ndarray, tol: float) -> np.ndarray | None:
    """The affine minimiser of all T points when it is inside the simplex and passes the same duality-gap
    test as Wolfe's loop (then it is the optimum: the KKT conditions hold with every multiplier zero).
    One T x T solve instead of T corral growths; the common case when many tasks all pull (support = T)."""
    u = _affine_minimizer(g)
    if u is None or np.any(u < 0):
        return None
    gu = g @ u
    norm2 = float(u @ gu)
    gap = norm2 - float(np.min(gu))
    return _normalised(u) if norm2 > 0 and gap <= tol * norm2 else None


def _normalised(w: np.ndarray) -> np.ndarray:
    w = np.clip(w, 0.0, None)
    return w / w.sum()
