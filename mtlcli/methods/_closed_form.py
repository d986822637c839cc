"""The closed forms of the IMTL paper: weights summing to 1 that equalise projections.

Both IMTL-G (projections of g = sum_t alpha_t g_t onto the unit vectors u_t are equal) and the
unconstrained min-norm point (projections onto the g_t themselves are equal, IMTL appendix C.2) are
"find alpha, sum(alpha) = 1, with g . v_1 = g . v_t for every t", for v_t = u_t or v_t = g_t. With
A[i, j] = g_i . v_j (a function of the Gram matrix only), the paper's
alpha_{2:T} = g_1 V^T (D V^T)^-1, D^T = [g_1 - g_t]_t, V^T = [v_1 - v_t]_t, reads
alpha_{2:T} M = b with M[i, j] = A_11 - A_1j - A_i1 + A_ij and b_j = A_11 - A_1j (i, j >= 2).

M is solved by the pseudo-inverse (float64, after scaling G to unit max diagonal): when it is
singular (duplicated or parallel gradients) we return the minimum-norm alpha_{2:T} among the
least-squares solutions instead of failing, and alpha_1 = 1 - sum(alpha_{2:T}) as in the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(gram: Tensor) -> None:
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")


def equal_projection_weights(gram: Tensor, *, unit: bool) -> Tensor:
    """alpha (sum 1, any sign) with g . v_t equal for all t; v_t = g_t/||g_t|| if `unit` else g_t."""
    _check(gram)
    t = gram.shape[0]
    if t == 1:
        return torch.ones(1, dtype=gram.dtype, device=gram.device)
    g = gram.detach().to(torch.float64)
    g = (g + g.T) / 2
    g = g / g.diagonal().max().clamp_min(torch.finfo(torch.float64).tiny)
    a = g / g.diagonal().clamp_min(0).sqrt().clamp_min(torch.finfo(torch.float64).tiny)[None, :] if unit else g
    m = a[0, 0] - a[0:1, 1:] - a[1:, 0:1] + a[1:, 1:]
    b = a[0, 0] - a[0, 1:]
    rest = b @ torch.linalg.pinv(m)
    alpha = torch.cat([(1 - rest.sum()).reshape(1), rest])
    return alpha.to(gram.dtype)


def imtl_g_weights(gram: Tensor) -> Tensor:
    """IMTL-G (Liu et al., ICLR 2021, eq. IMTL-G): alpha_{2:T} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum."""
    return equal_projection_weights(gram, unit=True)


def unconstrained_min_norm_weights(gram: Tensor) -> Tensor:
    """argmin ||sum_t alpha_t g_t||^2 s.t. sum(alpha) = 1 (IMTL appendix C.2): alpha_{2:T} = g_1 D^T (D D^T)^-1."""
    return equal_projection_weights(gram, unit=False)
