"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024; TorchJD's `UPGrad`).

Each task gradient g_t is projected onto the dual cone {x : J x >= 0} of all the task gradients, and the
projections are combined with a preference vector p (default: the mean, p_t = 1/T):

    d = sum_t p_t pi_C(g_t) = J^T w,    w = sum_t w^(t),    w^(t) = argmin_{w >= p_t e_t} w^T G w / 2,

one T x T quadratic program per task on the Gram matrix (see `_dual_cone` for the dual and the solver).
d conflicts with no task (J d >= 0), equals the mean gradient when no two tasks conflict, and is linear
under a positive scaling of the rows of J (scaling g_t by c_t scales the t-th projection by c_t, the
cone is unchanged). The weights w are not on the simplex (sum w >= sum p).

`level: representation` (default) uses dL_t/dz as MGDA-UB does (one encoder backward); `level: shared`
the gradients of the shared parameters (TorchJD's setting), computed by `grads: loop | batched`.
Heads get w_t-scaled gradients (`head_grads: weighted`) or their raw ones (`raw`, what TorchJD's
`mtl_backward` gives the task-specific parameters).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from mtlcli.methods._dual_cone import (
    check_pref_vector,
    pref_weights,
    prepared_gram,
    project_weights,
)
from mtlcli.methods._levels import GramMethod
from mtlcli.methods.options import UPGradOptions


def upgrad_weights(gram: Tensor, options: UPGradOptions) -> Tensor:
    """sum_t w^(t) for the Gram matrix `gram` [T, T], as a tensor of its dtype on its device."""
    t = gram.shape[0] if gram.ndim == 2 else 0
    g = prepared_gram(gram, norm_eps=options.norm_eps, reg_eps=options.reg_eps)
    p = pref_weights(options, t)
    if g is None:
        w = p
    else:
        # the projection is positively homogeneous: w^(t) = p_t * (weights of the projection of g_t)
        active = np.flatnonzero(p > 0)
        w = p[active] @ project_weights(g, np.eye(t)[active], tol=options.tol, max_iter=options.max_iter)
    return torch.as_tensor(w, dtype=gram.dtype, device=gram.device)


class UPGrad(GramMethod):
    """Mean of the task gradients each projected onto the dual cone of all of them."""

    name: ClassVar[str] = "upgrad"

    def __init__(self, options: UPGradOptions | None = None) -> None:
        self.options = options or UPGradOptions()

    def __repr__(self) -> str:
        return f"UPGrad({self.options.describe()})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        check_pref_vector(self.options, num_tasks, self.name)

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """UPGrad weights w [T] (d = sum_t w_t g_t); `losses` is unused."""
        return upgrad_weights(gram, self.options)
