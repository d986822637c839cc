"""DualProj (TorchJD's `DualProj`, Quinton & Rey 2024; the projection of GEM, Lopez-Paz & Ranzato 2017, eq. 11).

The combination J^T p of the task gradients (default p_t = 1/T: the mean gradient) is projected onto the
dual cone {x : J x >= 0} of the task gradients:

    d = pi_C(J^T p) = J^T w,    w = argmin_{w >= p} w^T G w / 2,

one T x T quadratic program on the Gram matrix (see `_dual_cone` for the dual and the solver). d
conflicts with no task, equals the mean gradient when that conflicts with none, and is positively
homogeneous (d(aJ) = a d(J)), but unlike UPGrad not linear under scaling of the individual rows of J.

Levels, `grads` and `head_grads` as in `upgrad`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._dual_cone import (
    check_pref_vector,
    pref_weights,
    prepared_gram,
    project_weights,
)
from mtlcli.methods._levels import GramMethod
from mtlcli.methods.options import DualProjOptions


def dualproj_weights(gram: Tensor, options: DualProjOptions) -> Tensor:
    """w for the Gram matrix `gram` [T, T], as a tensor of its dtype on its device."""
    t = gram.shape[0] if gram.ndim == 2 else 0
    g = prepared_gram(gram, norm_eps=options.norm_eps, reg_eps=options.reg_eps)
    p = pref_weights(options, t)
    w = p if g is None else project_weights(g, p, tol=options.tol, max_iter=options.max_iter)
    return torch.as_tensor(w, dtype=gram.dtype, device=gram.device)


class DualProj(GramMethod):
    """The mean task gradient projected onto the dual cone of the task gradients."""

    name: ClassVar[str] = "dualproj"

    def __init__(self, options: DualProjOptions | None = None) -> None:
        self.options = options or DualProjOptions()

    def __repr__(self) -> str:
        return f"DualProj({self.options.describe()})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        check_pref_vector(self.options, num_tasks, self.name)

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """DualProj weights w [T] (d = sum_t w_t g_t); `losses` is unused."""
        return dualproj_weights(gram, self.options)
