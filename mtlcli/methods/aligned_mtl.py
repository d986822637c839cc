"""Aligned-MTL (Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for
Multi-Task Learning", CVPR 2023, Algorithm 1; authors' code: SamsungLabs/MTL, `ProcrustesSolver`).

The task gradients (rows of J, Gram matrix G = J J^T = V diag(lambda) V^T) are replaced by the closest
(Procrustes) set of gradients whose Jacobian has all its non-zero singular values equal: with
sigma = sqrt(lambda) on the non-negligible spectrum (rank r) and s the chosen scale,

    B = s V_r diag(1 / sigma_r) V_r^T,    J_aligned = B J,    J_aligned J_aligned^T = s^2 V_r V_r^T,

so the aligned Jacobian has condition number 1 (the defining property). The update is
d = J_aligned^T p = J^T (B p), and the method returns the weights w = B p.

Options:
- `scale_mode`: s = sigma_min (`min`, default: the paper's and the authors'), the lower median singular value
  (`median`, torch.median's as in the authors' code) or sqrt(mean(lambda)) (`rmse`, named so by the authors).
- `reduction`: p = 1/T (`mean`, default: TorchJD's `AlignedMTLWeighting` and this project's mean-loss
  scale, so that orthogonal equal-norm gradients give the mean) or p = 1 (`sum`: the authors' code sums the
  aligned gradients, a T-times larger update).

Rank: an eigenvalue counts when lambda > tol = lambda_max * max(T eps, 1e-10), eps the machine epsilon of
the Gram matrix's dtype. T eps is the authors' and TorchJD's tolerance (the authors use float32's eps
always; TorchJD the dtype's); the 1e-10 floor only matters for float64 Gram matrices, where a rounding-noise
eigenvalue of an exactly rank-deficient G (about eps lambda_max) would otherwise become sigma_min and
shrink the update by ~1e-8 with noise-driven weights.
Degenerate G: G = 0 (rank 0) gives B = I, the weights p (TorchJD; the authors' code fails there), as does
a non-finite G (`level_step` flags the non-finite gradients). Rank-deficient G: B lives on the retained
eigenspace, so the null space of G (directions of task weights that move nothing) gets weight 0.

Levels: `representation` (default) uses dL_t/dz and one encoder backward (the authors' `amtlub`);
`shared` uses dL_t/dtheta_sh (the authors' `amtl`), by T backwards or one batched backward. Heads get
their raw gradients by default, as in the authors' code (`scale_decoder_grad: False`);
`head_grads: weighted` scales them by w_t (the authors' `scale_decoder_grad: True`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlcli.methods._levels import GramMethod
from mtlcli.methods.options import AlignedMtlOptions

_RANK_FLOOR = 1e-10  # relative eigenvalue floor below which a direction counts as null (see the docstring)


def balance_transformation(gram: np.ndarray, scale_mode: str = "min", eps: float = float(np.finfo(np.float64).eps)) -> np.ndarray:
    """B = s V_r diag(1/sigma_r) V_r^T for the symmetric PSD `gram` [T, T] (float64); I when G = 0 or non-finite."""
    t = gram.shape[0]
    g = (gram + gram.T) / 2
    if not np.isfinite(g).all():
        return np.eye(t)
    lam, vec = np.linalg.eigh(g)
    lam_max = float(lam.max(initial=0.0))
    if lam_max <= 0:
        return np.eye(t)
    keep = lam > lam_max * max(t * eps, _RANK_FLOOR)
    lam, vec = lam[keep], vec[:, keep]
    if scale_mode == "min":
        scale2 = float(lam.min())
    elif scale_mode == "median":
        scale2 = float(np.sort(lam)[(len(lam) - 1) // 2])  # torch.median's lower median, as the authors' code
    elif scale_mode == "rmse":
        scale2 = float(lam.mean())
    else:
        raise ValueError(f"Invalid scale_mode={scale_mode!r}. Expected 'min', 'median' or 'rmse'.")
    return (vec * np.sqrt(scale2 / lam)) @ vec.T


def aligned_mtl_weights(gram: Tensor, scale_mode: str = "min", reduction: str = "mean") -> Tensor:
    """Aligned-MTL weights w = B p [T] from the Gram matrix of the task gradients [T, T]."""
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        raise ValueError(f"`gram` should be a non-empty square matrix. Found `gram.shape = {tuple(gram.shape)}`.")
    t = gram.shape[0]
    eps = float(torch.finfo(gram.dtype).eps) if gram.dtype.is_floating_point else float(np.finfo(np.float64).eps)
    b = balance_transformation(gram.detach().to("cpu", torch.float64).numpy(), scale_mode, eps)
    pref = np.full(t, 1.0 / t if reduction == "mean" else 1.0)
    return torch.as_tensor(b @ pref, dtype=gram.dtype, device=gram.device)


class AlignedMtl(GramMethod):
    """Aligned-MTL on the representation gradients dL_t/dz (default) or the shared-parameter gradients."""

    name: ClassVar[str] = "aligned-mtl"

    def __init__(self, options: AlignedMtlOptions | None = None) -> None:
        self.options = options or AlignedMtlOptions()

    def __repr__(self) -> str:
        o = self.options
        return f"AlignedMtl(scale_mode={o.scale_mode!r}, reduction={o.reduction!r}, {o.describe_level()})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Weights w = B p of the aligned update d = J^T w; `losses` is unused."""
        return aligned_mtl_weights(gram, self.options.scale_mode, self.options.reduction)
