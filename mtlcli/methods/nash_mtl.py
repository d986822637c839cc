"""Nash-MTL, multi-task learning as a bargaining game (Navon et al., ICML 2022, Algorithm 1).

The update d = sum_t alpha_t g_t is the Nash bargaining solution: each task's utility is g_t . d, and the
solution maximises sum_t log(g_t . d) over the ball ||d|| <= eps. Its first-order conditions give d up to
scale as the alpha > 0 with

    G alpha = 1 / alpha   (elementwise),   i.e. alpha_t (G alpha)_t = 1 for every t,

on the Gram matrix G of the task gradients: every task's share of the update is g_t . d = 1/alpha_t.
Then ||d||^2 = alpha^T G alpha = T, so d's norm does not depend on the gradients' scale; scaling g_t by c
scales alpha_t by 1/c (and leaves d unchanged).

Solver (float64 numpy, no cvxpy). G alpha = 1/alpha are the stationarity conditions of

    phi(a) = a^T G a / 2 - sum_t log a_t,

strictly convex on a > 0 (Hessian G + diag(1/a^2)), so its unique minimiser is THE solution and damped
Newton on phi is exact: in the scaled variable y = da / a the Newton system is (D G D + I) y = -(a . G a - 1)
with D = diag(a) (eigenvalues >= 1: well conditioned whatever G's scale), the step is capped to keep
a > 0, and a backtracking (Armijo) line search on phi makes it globally convergent (phi is
self-concordant: quadratic plus log barrier). It runs on the Gram matrix of the unit gradients
g_t / ||g_t|| (alpha_t is rescaled back by 1 / ||g_t||: exactly equivariant to each task's scale), from
a = c 1, c minimising phi along that ray, and stops when
max_t |alpha_t (G alpha)_t - 1| <= 1e-10 (scale-free), typically in 5-10 iterations.
The authors' code (and TorchJD, LibMTL) instead runs up to `optim_niter` = 20 rounds of a
concave-convex procedure, each a cvxpy/ECOS problem with the constraint linearised, stopping at
||G_n alpha - 1/alpha|| < 1e-3 on the Frobenius-normalised Gram: no `optim_niter` is needed here.

Degenerate cases: the solution exists iff no positive combination of the task gradients is 0 (the tasks
are not Pareto-stationary); duplicated, parallel and low-rank gradients are fine. To make it exist always,
phi uses G + ridge diag(G) with ridge = 1e-10 (a relative error 1e-10 alpha_t^2 G_tt in
alpha_t (G alpha)_t = 1, and alpha^T G alpha <= T still). For Pareto-stationary tasks alpha_t ||g_t|| is then
~1e5 and G alpha cancels in float64: alpha_t (G alpha)_t = 1 holds only to ~1e-6..1e-3 there, and max_norm
bounds the update as always. Tasks with a zero gradient (G_tt <= 1e-20
max G_tt) take no part in the bargaining and get alpha_t = 0; G = 0 (or non-finite) gives alpha = 0,
so the step leaves the shared parameters alone (the reference divides G by its norm, 0, there).

Options: `update_weights_every` N recomputes alpha at every N-th step and reuses it in between (state:
the last alpha and the step counter, checkpointed, so a resumed run reuses the same alpha); in between, as the
authors' code, no per-task gradient is computed: one backward of sum_t alpha_t L_t and the clip on the shared
parameters' gradient norm (at `level: shared` with weighted heads on one process; at the representation level,
with `head_grads: raw`, or on several processes, where the clip must see the whole batch's gradients, the
per-task gradients are still taken).
`max_norm` (authors' default 1.0; 0 disables) clips the shared parameters' update as the authors'
`clip_grad_norm_(shared_parameters, max_norm)`: alpha *= max_norm / ||d|| for the shared part when
||d|| = sqrt(alpha^T G alpha) > max_norm (||sum_t alpha_t dL_t/dz|| at level representation), while the heads
keep their alpha_t-weighted, unclipped gradients, as the authors' `(sum_t alpha_t L_t).backward()` gives them.
As ||d|| = sqrt(T) before clipping, the default max_norm 1.0 makes every shared update unit-norm for T >= 2.

Levels: `shared` (default) uses the shared-parameter gradients as in the paper and the authors' code
(AvivNavon/nash-mtl, methods/weight_methods.py, `NashMTL`); `representation` uses dL_t/dz and one encoder
backward, a cheaper variant. Heads get alpha_t-scaled gradients by default (the authors' loss
sum_t alpha_t L_t); `head_grads: raw` gives them their own raw gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from mtlcli import distributed
from mtlcli.methods._levels import GramMethod, level_step
from mtlcli.methods.base import Step, weighted_backward
from mtlcli.methods.options import GradsMode, HeadGrads, Level, NashMtlOptions

_TOL = 1e-10  # max_t |alpha_t (G alpha)_t - 1| at which Newton stops
_RIDGE = 1e-10  # relative to max_t G_tt: makes the solution exist for Pareto-stationary tasks
_ZERO_TASK = 1e-20  # G_tt / max G_tt below which task t's gradient counts as 0
_MAX_ITER = 100


def solve_nash(gram: np.ndarray, *, tol: float = _TOL, max_iter: int = _MAX_ITER) -> np.ndarray:
    """alpha > 0 with alpha_t ((G + ridge I) alpha)_t = 1, by damped Newton on phi (module docstring);
    0 for tasks with a zero gradient, all 0 for G = 0 or non-finite G."""
    g = (np.asarray(gram, dtype=np.float64) + np.asarray(gram, dtype=np.float64).T) / 2
    t_count = g.shape[0]
    alpha = np.zeros(t_count)
    diag = np.diagonal(g)
    scale = float(diag.max()) if t_count and np.isfinite(g).all() else 0.0
    if not scale > 0:
        return alpha
    active = np.flatnonzero(diag > _ZERO_TASK * scale)
    norms = np.sqrt(diag[active])
    unit = g[np.ix_(active, active)] / norms[:, None] / norms[None, :]  # Gram of g_t / ||g_t||
    alpha[active] = _newton(unit + _RIDGE * np.eye(len(active)), tol, max_iter) / norms
    return alpha


def _phi(g: np.ndarray, a: np.ndarray) -> float:
    return float(a @ g @ a) / 2 - float(np.sum(np.log(a)))


def _newton(g: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    n = g.shape[0]
    a = np.full(n, math.sqrt(n / float(np.sum(g))))  # the minimiser of phi on the ray of ones (unit diagonal)
    value = _phi(g, a)
    eye = np.eye(n)
    for _ in range(max_iter):
        ga = g @ a
        residual = a * ga - 1  # = D grad phi
        if float(np.max(np.abs(residual))) <= tol:
            break
        y = -np.linalg.solve(a[:, None] * g * a[None, :] + eye, residual)
        step = 1.0
        negative = y < 0
        if negative.any():
            step = min(1.0, 0.99 / float(np.max(-y[negative])))  # keep a (1 + step y) > 0
        slope = float(residual @ y)  # directional derivative of phi along da = a y (< 0)
        while step > 1e-12:
            candidate = a * (1 + step * y)
            new_value = _phi(g, candidate)
            if new_value <= value + 1e-4 * step * slope:
                break
            step /= 2
        else:  # no decrease representable in float64: at the minimum to round-off
            break
        a, value = candidate, new_value
    return a


def nash_mtl_weights(gram: Tensor, max_norm: float = 0.0) -> Tensor:
    """Nash-MTL's coefficients of the update in the task gradients, from their Gram matrix [T, T];
    with max_norm > 0 scaled so that sqrt(alpha^T G alpha) <= max_norm."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    g = gram.detach().to("cpu", torch.float64).numpy()
    alpha = clip(solve_nash(g), g, max_norm)
    return torch.as_tensor(alpha, dtype=gram.dtype, device=gram.device)


def clip(alpha: np.ndarray, gram: np.ndarray, max_norm: float) -> np.ndarray:
    """alpha scaled so that ||sum_t alpha_t g_t|| = sqrt(alpha^T G alpha) <= max_norm (0: unchanged)."""
    if max_norm <= 0:
        return alpha
    norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
    return alpha * (max_norm / norm) if norm > max_norm else alpha


@dataclass(frozen=True)
class _Level:
    """The level step's view of the options, with the heads' gradients raw (Nash-MTL weights them itself)."""

    level: Level
    grads: GradsMode | None
    head_grads: HeadGrads = "raw"


class NashMtl(GramMethod):
    """Nash-MTL on the shared-parameter gradients (default) or the representation gradients dL_t/dz."""

    name: ClassVar[str] = "nash-mtl"

    def __init__(self, options: NashMtlOptions | None = None) -> None:
        self.options = options or NashMtlOptions()
        self.step_count = 0
        self.alpha: np.ndarray | None = None  # the last solved alpha (before clipping)
        self._previous_alpha: np.ndarray | None = None  # restored by `step_skipped`
        self.per_task_steps = 0  # steps that took per-task gradients (the others reused alpha without them)

    def __repr__(self) -> str:
        o = self.options
        return f"NashMtl(update_weights_every={o.update_weights_every}, max_norm={o.max_norm}, {o.describe_level()})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.step_count = 0
        self.alpha = self._previous_alpha = None

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        alpha = None if self.alpha is None else torch.tensor(self.alpha, dtype=torch.float64)
        return {"step": self.step_count, "alpha": alpha}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step"])
        alpha = state["alpha"]
        self.alpha = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float64).numpy().copy()

    def step_skipped(self) -> None:
        """The trainer dropped this step: count it as not taken (the next step re-solves if this one did)."""
        if self.step_count > 0:
            self.step_count -= 1
            if self.step_count % self.options.update_weights_every == 0:
                self.alpha = self._previous_alpha

    def _solves_now(self, num_tasks: int) -> bool:
        return self.alpha is None or len(self.alpha) != num_tasks or self.step_count % self.options.update_weights_every == 0

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Alpha solved at every `update_weights_every`-th call (the last one reused in between), clipped
        to `max_norm` on this call's Gram matrix: the shared parameters' weights; `losses` is unused."""
        g = gram.detach().to("cpu", torch.float64).numpy()
        if self._solves_now(g.shape[0]):
            self._previous_alpha = self.alpha
            self.alpha = solve_nash(g)
        self.step_count += 1
        alpha = clip(self.alpha, g, self.options.max_norm)
        return torch.as_tensor(alpha, dtype=gram.dtype, device=gram.device)

    def backward(self, step: Step) -> Tensor:
        """The shared part gets the clipped sum_t alpha_t g_t, each head alpha_t times its own gradient."""
        o = self.options
        reusable = o.level == "shared" and o.head_grads == "weighted" and not distributed.current().active
        if reusable and not self._solves_now(step.num_tasks):
            return self._reuse_alpha(step)
        self.per_task_steps += 1
        clipped = level_step(step, self.weights, _Level(o.level, o.grads))
        if o.head_grads == "weighted":
            assert self.alpha is not None
            _scale_heads(step, torch.as_tensor(self.alpha, dtype=clipped.dtype))
        return clipped

    def _reuse_alpha(self, step: Step) -> Tensor:
        """A step between two solves: one backward of sum_t alpha_t L_t, the shared gradients then clipped to
        `max_norm` (the authors' step; no per-task gradient)."""
        assert self.alpha is not None
        self.step_count += 1
        alpha = torch.as_tensor(self.alpha, dtype=step.losses.dtype, device=step.losses.device)
        weighted_backward(step.losses, alpha)
        shared = [p for p in step.model.shared_parameters() if p.grad is not None]
        if self.options.max_norm > 0 and shared:
            norm = step.unscaled(torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in shared]))))
            scale = (self.options.max_norm / norm).clamp(max=1.0)  # on the device: no host sync
            torch._foreach_mul_([p.grad for p in shared], scale)
            return alpha.detach() * scale.detach()
        return alpha.detach()


def _scale_heads(step: Step, scale: Tensor) -> None:
    """Multiply each head's gradient (its own task's only) by scale[t]."""
    for t, params in enumerate(step.task_parameters()):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale[t].to(grads[0].device, grads[0].dtype))
