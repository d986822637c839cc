"""The closed forms of the IMTL paper: weights summing to 1 that equalise projections.

Both IMTL-G (projections of g = sum_t alpha_t g_t onto the unit vectors u_t are equal) and the
unconstrained min-norm point (projections onto the g_t themselves are equal, IMTL appendix C.2) are
"find alpha, sum(alpha) = 1, with g . v_1 = g . v_t for every t", for v_t = u_t or v_t = g_t. With
A[i, j] = g_i . v_j (a function of the Gram matrix only), the paper's
alpha_{2:T} = g_1 V^T (D V^T)^-1, D^T = [g_1 - g_t]_t, V^T = [v_1 - v_t]_t, reads
alpha_{2:T} M = b with M[i, j] = A_11 - A_1j - A_i1 + A_ij and b_j = A_11 - A_1j (i, j >= 2).

M is solved by the pseudo-inverse in float64: when it is
singular (duplicated or parallel gradients) we return the minimum-norm alpha_{2:T} among the
least-squares solutions instead of failing, and alpha_1 = 1 - sum(alpha_{2:T}) as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

ZERO_GRADIENT = 1e-12  # a gradient this much smaller than the largest counts as zero (IMTL-G)


def _check(gram: Tensor) -> None:
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")


def _anchored(a: Tensor) -> Tensor:
    """alpha (sum 1) with sum_i alpha_i a[i, 1] = sum_i alpha_i a[i, t] for all t: the paper's anchored form."""
    m = a[0, 0] - a[0:1, 1:] - a[1:, 0:1] + a[1:, 1:]
    b = a[0, 0] - a[0, 1:]
    rest = b @ torch.linalg.pinv(m)
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


def _float64(gram: Tensor) -> Tensor:
    _check(gram)
    g = gram.detach().to(torch.float64)
    return (g + g.T) / 2


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G (Liu et al., ICLR 2021, eq. IMTL-G): alpha_{2:T} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum.

    Solved in the scale-free form the paper's Theorem 2 allows: first on the unit vectors u_t (Gram =
    correlation matrix, so tasks whose gradients differ by orders of magnitude stay well conditioned),
    gamma = u_1 U^T (U U^T)^-1 anchored as above; then g ∝ sum_t gamma_t u_t = sum_t (gamma_t / ||g_t||) g_t,
    i.e. alpha_t = (gamma_t / ||g_t||) / sum_tau (gamma_tau / ||g_tau||), the unique solution of the paper's
    formula whenever that one exists.
    """
    if gram.shape[0] == 1 and gram.ndim == 2 and gram.shape[1] == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    g = _float64(gram)
    norms = g.diagonal().clamp_min(0).sqrt()
    zero = norms <= norms.max() * ZERO_GRADIENT
    safe = torch.where(zero, torch.ones_like(norms), norms)
    keep = (~zero).to(g.dtype)
    # A zero gradient has no direction, so it sets no equal-projection constraint and gets weight 0 (the
    # limit TorchJD's pinv form also takes). Without a host sync: it becomes a unit vector orthogonal to
    # every other (row and column e_t of the correlation matrix); the others then solve among themselves
    # exactly as without it, and its own gamma is dropped.
    correlation = g / (safe[:, None] * safe[None, :]) * keep[:, None] * keep[None, :] + torch.diag(1 - keep)
    alpha = torch.where(zero, torch.zeros_like(norms), _anchored(correlation) / safe)
    total = alpha.sum()
    uniform = torch.full_like(alpha, 1.0 / len(alpha))  # every gradient zero: nothing to balance
    return torch.where(total.abs() > 0, alpha / torch.where(total.abs() > 0, total, 1.0), uniform).to(gram.dtype)


def unconstrained_min_norm_weights(gram: Tensor) -> Tensor:
    """argmin ||sum_t alpha_t g_t||^2 s.t. sum(alpha) = 1 (IMTL appendix C.2): alpha_{2:T} = g_1 D^T (D D^T)^-1."""
    if gram.shape[0] == 1 and gram.ndim == 2 and gram.shape[1] == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    g = _float64(gram)
    g = g / g.diagonal().max().clamp_min(torch.finfo(torch.float64).tiny)
    return _anchored(g).to(gram.dtype)


def equal_projection(gram: Tensor, alpha: Tensor) -> Tensor:
    """The common projection g . u_t of g = sum_t alpha_t g_t onto the unit task gradients (IMTL-G makes
    them equal; the mean over the non-zero gradients). Negative: the direction raises every task's loss."""
    g = gram.detach().to(torch.float64)
    norms = g.diagonal().clamp_min(0).sqrt()
    nonzero = norms > norms.max() * ZERO_GRADIENT
    projections = (g @ alpha.detach().to(torch.float64)) / torch.where(nonzero, norms, torch.ones_like(norms))
    return (projections * nonzero).sum() / nonzero.sum().clamp_min(1)


class NegativeProjections:
    """Counts the steps whose IMTL-G direction has equal but negative projections (it raises every loss:
    faithful to the paper, possible with 3+ tasks), on the device, for the epoch record; checkpointed."""

    def __init__(self) -> None:
        self.count: Tensor | None = None

    def observe(self, gram: Tensor, alpha: Tensor) -> None:
        negative = (equal_projection(gram, alpha) < 0).to(torch.int64)
        self.count = negative if self.count is None else self.count + negative

    def epoch_stats(self) -> dict[str, int]:
        """{'negative_projection_steps': n} since the last call (one host read per epoch), then reset."""
        n = int(self.count.item()) if self.count is not None else 0
        self.count = None
        return {"negative_projection_steps": n}

    def state_dict(self) -> dict[str, Any]:
        return {"negative_projection_steps": self.count.clone() if self.count is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        count = state.get("negative_projection_steps")
        self.count = count.clone() if isinstance(count, Tensor) else None
