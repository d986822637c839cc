"""Projection onto the dual cone of the task gradients, from their Gram matrix only (UPGrad, DualProj).

Let J [T, P] hold the task gradients g_t as rows and G = J J^T. The dual cone of the rows of J is
C = {x : J x >= 0}: the directions that conflict with no task. Both methods project vectors of the form
J^T u (a combination of the task gradients with weights u) onto C, and only need the weights of the result.

Derivation (Quinton & Rey 2024, Proposition 1; the same dual as GEM's eq. 11, Lopez-Paz & Ranzato 2017).
The projection is the primal problem

    min_x  ||x - J^T u||^2 / 2   subject to  J x >= 0.

Its Lagrangian with multipliers v >= 0 is ||x - J^T u||^2 / 2 - v^T J x; stationarity gives
x = J^T (u + v), and substituting back gives the dual function -v^T G v / 2 - u^T G v. Maximising it over
v >= 0, adding the constant -u^T G u / 2 and writing w = u + v gives the dual

    min_w  w^T G w / 2   subject to  w >= u,                                        (*)

whose solution w gives the projection pi_C(J^T u) = J^T w (strong duality holds: the constraints are
linear and x = 0 is feasible). The KKT conditions of (*), which the tests check, are

    w >= u            (dual feasibility, v >= 0)
    G w >= 0          (primal feasibility: J (J^T w) >= 0, the result conflicts with no task)
    (w - u)_t (G w)_t = 0 for every t   (complementary slackness).

(*) is what TorchJD's `DualConeProjector` solves (`min_v v^T G v s.t. u <= v`) with quadprog. With
v = w - u it is the non-negative least squares problem min_{v >= 0} ||J^T v + J^T u||^2 / 2, whose
normal-equation data are exactly G and G u. We solve it with the Lawson-Hanson active-set algorithm in
Gram form (Bro & De Jong 1997, "fast NNLS"), in numpy float64, exactly up to `tol`:

- start from v = 0 (w = u); while some task j outside the passive set P has (G w)_j < -tol_j (the current
  direction conflicts with task j), add the most conflicting one to P;
- solve G_PP v_P = -(G u)_P (the directions of the tasks in P become orthogonal to the result); if some
  v_P <= 0, move back along the segment to the first zero, drop those tasks from P and solve again.

It stops when (G w)_j >= -tol_j for every j with tol_j = tol ||g_j|| sum_k |w_k| ||g_k|| (a relative
bound far above the float64 round-off of G w), where the KKT conditions hold: G w = 0 on P (complementary
slackness), w_P > u_P, and w = u off P. No QP library is needed at run time.

Lawson-Hanson adds one task per solve, which for UPGrad at T = 40 means some 800 small solves in Python.
So every problem is first given to block principal pivoting (Judice & Pires 1994; Kim & Park 2011 for
NNLS with many right-hand sides): all the KKT violations are exchanged between P and its complement at
once (with Kim & Park's back-up rules: three full exchanges without progress, then Murty's one-at-a-time
rule, finite for positive definite G), and the T problems of UPGrad are solved together, one batched
T x T solve per pivoting round (each problem's G_PP embedded in a T x T matrix with the identity off P).
A problem that it does not settle within its round limit, or whose result fails the KKT check above
(singular G_PP when reg_eps = 0), is solved again by Lawson-Hanson.

Like TorchJD's `QuadprogProjector(norm_eps, reg_eps)`, G is first divided by its trace (the squared
Frobenius norm of J; a G whose trace is below `norm_eps` counts as zero, and then w = u), then `reg_eps`
is added to its diagonal, which makes G positive definite so that w is unique even when the gradients are
linearly dependent (G + eps I is the Gram matrix of [J, sqrt(eps) I]: the guarantee becomes
J d >= -eps tr(G) w instead of J d >= 0). TorchJD's defaults are norm_eps = reg_eps = 1e-4; ours keep
reg_eps = 1e-4 but use norm_eps = 0, because TorchJD's threshold is absolute: its weights fall back to the
plain mean whenever tr(G) < 1e-4, which happens for small representation gradients late in training.
With reg_eps = 0 the solver handles singular G too (then w may not be unique, J^T w is).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from mtlcli.errors import MtlError
from mtlcli.methods.options import DualConeOptions


class HasPrefVector(Protocol):
    """Options with a preference vector (the dual-cone methods', ConFIG's)."""

    @property
    def pref_vector(self) -> list[float] | None: ...


def check_pref_vector(options: HasPrefVector, num_tasks: int, method: str) -> None:
    if options.pref_vector is not None and len(options.pref_vector) != num_tasks:
        raise MtlError(
            f"method {method}: pref_vector has {len(options.pref_vector)} weights for {num_tasks} tasks",
            hint="give one weight per task, in the order of tasks, or null for the mean",
        )


def pref_weights(options: DualConeOptions, num_tasks: int) -> np.ndarray:
    """The preference vector p [T] in float64: the recipe's, or 1/T each."""
    if options.pref_vector is None:
        return np.full(num_tasks, 1.0 / num_tasks)
    if len(options.pref_vector) != num_tasks:
        raise ValueError(f"pref_vector has {len(options.pref_vector)} weights for {num_tasks} tasks")
    return np.asarray(options.pref_vector, dtype=np.float64)


def prepared_gram(gram: Tensor, *, norm_eps: float, reg_eps: float) -> np.ndarray | None:
    """G / trace(G) + reg_eps I in float64 (symmetrised), or None when G counts as zero or is not finite."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    g = gram.detach().to("cpu", torch.float64).numpy()
    if not np.all(np.isfinite(g)):
        return None
    trace = float(np.trace(g))
    if trace <= 0 or trace < norm_eps:
        return None
    g = (g + g.T) / (2 * trace)
    g[np.diag_indices_from(g)] += reg_eps
    return g


def project_weights(gram: np.ndarray, u: np.ndarray, *, tol: float = 1e-10, max_iter: int = 1000) -> np.ndarray:
    """For each row u of `u` ([T] or [k, T]): w = argmin_{w >= u} w^T G w / 2, so that J^T w is the projection
    of J^T u onto the dual cone {x : J x >= 0}. `gram` is symmetric PSD, float64."""
    u = np.asarray(u, dtype=np.float64)
    if u.ndim == 1:
        return project_weights(gram, u[None, :], tol=tol, max_iter=max_iter)[0]
    w, settled = _block_pivoting(gram, u, tol, max_iter)
    for k in np.flatnonzero(~settled):
        w[k] = _project(gram, u[k], tol, max_iter)
    return w


def kkt_violation(gram: np.ndarray, u: np.ndarray, w: np.ndarray, tol: float) -> np.ndarray:
    """Per row of u and w [k, T]: whether G w >= -tol_j fails somewhere (w >= u holds by construction)."""
    norms = np.sqrt(np.clip(np.diagonal(gram), 0.0, None))
    gw = w @ gram
    return np.any(gw < -tol * norms[None, :] * (np.abs(w) @ norms)[:, None], axis=1)


def _block_pivoting(g: np.ndarray, u: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Block principal pivoting on the LCP  v >= 0, y = G v + G u >= 0, v . y = 0, for every row of u at once.
    Returns w = u + v [k, T] and which rows it settled (KKT to `tol`)."""
    k, t = u.shape
    gu = u @ g  # rows: (G u)^T, G symmetric
    norms = np.sqrt(np.clip(np.diagonal(g), 0.0, None))
    passive = np.zeros((k, t), dtype=bool)
    v = np.zeros((k, t))
    best = np.full(k, t + 1)  # fewest violations so far
    spare = np.full(k, 3)  # full exchanges left without progress before Murty's rule
    todo = np.ones(k, dtype=bool)
    eye = np.eye(t)
    with np.errstate(all="ignore"):
        for _ in range(min(max_iter, 4 * t + 8)):
            rows = np.flatnonzero(todo)
            if rows.size == 0:
                break
            p = passive[rows]
            mask = p[:, :, None] & p[:, None, :]
            a = np.where(mask, g[None], 0.0) + eye[None] * ~p[:, None, :]
            rhs = np.where(p, -gu[rows], 0.0)
            try:
                sol = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:  # a singular G_PP (reg_eps = 0): the rows left go to Lawson-Hanson
                break
            if not np.all(np.isfinite(sol)):
                break
            v[rows] = np.where(p, sol, 0.0)
            w = u[rows] + v[rows]
            y = gu[rows] + v[rows] @ g
            threshold = tol * norms[None, :] * (np.abs(w) @ norms)[:, None]
            bad = np.where(p, v[rows] < -tol * np.abs(w).max(axis=1, keepdims=True), y < -threshold)
            count = bad.sum(axis=1)
            done = count == 0
            todo[rows[done]] = False
            progress = count < best[rows]
            best[rows] = np.where(progress, count, best[rows])
            spare[rows] = np.where(progress, 3, spare[rows] - (~done & ~progress))
            murty = ~done & ~progress & (spare[rows] < 0)
            flip = bad.copy()
            if np.any(murty):  # only the last violated index
                last = t - 1 - np.argmax(bad[murty][:, ::-1], axis=1)
                flip[murty] = False
                flip[np.flatnonzero(murty), last] = True
            passive[rows] ^= flip
    w = u + np.clip(v, 0.0, None)
    settled = ~todo & ~kkt_violation(g, u, w, tol)
    return w, settled


def _project(g: np.ndarray, u: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """Lawson-Hanson NNLS in Gram form on v = w - u >= 0 (see the module docstring)."""
    t = g.shape[0]
    norms = np.sqrt(np.clip(np.diagonal(g), 0.0, None))
    gu = g @ u
    v = np.zeros(t)
    passive = np.zeros(t, dtype=bool)
    iterations = 0
    while iterations < max_iter:
        w = u + v
        gw = gu + g @ v
        slack = gw + tol * norms * float(norms @ np.abs(w))  # < 0: task j conflicts with J^T w beyond tolerance
        slack[passive] = 0.0
        j = int(np.argmin(slack))
        if slack[j] >= 0:
            break
        passive[j] = True
        first = True
        while iterations < max_iter:
            iterations += 1
            idx = np.flatnonzero(passive)
            z = _solve(g[np.ix_(idx, idx)], -gu[idx])
            if z is not None and np.all(z > 0):
                v = np.zeros(t)
                v[idx] = z
                break
            if first and (z is None or z[idx == j][0] <= 0):
                # the newcomer cannot enter: numerically dependent on P (round-off); w is optimal to precision
                passive[j] = False
                return u + v
            first = False
            if z is None:
                return u + v
            current = v[idx]
            neg = z <= 0
            ratios = current[neg] / (current[neg] - z[neg])
            theta = float(np.min(ratios))
            moved = current + theta * (z - current)
            moved[np.flatnonzero(neg)[ratios <= theta]] = 0.0
            moved[moved <= 0] = 0.0
            v = np.zeros(t)
            v[idx] = moved
            passive[idx] = moved > 0
    return u + v


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """a x = b for a symmetric PSD `a`: LU when well posed, else the least-squares minimum-norm solution."""
    try:
        x = np.linalg.solve(a, b)
    except np.linalg.LinAlgError:  # singular: fall through to least squares
        x = None
    tolerance = 1e-12 * max(1.0, float(np.abs(b).max()))
    if x is not None and np.all(np.isfinite(x)) and np.allclose(a @ x, b, rtol=1e-8, atol=tolerance):
        return x
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    return x if np.all(np.isfinite(x)) else None
