"""Exact MGDA (Sener & Koltun, NeurIPS 2018, §3.2): the min-norm point on the shared parameters.

The per-task gradients g_t = dL_t/dtheta_sh come from one forward pass and T backward passes
(`grads: loop`) or one vmapped backward (`grads: batched`); alpha solves min ||sum_t alpha_t g_t||^2
on the simplex (optionally on normalised gradients) and the encoder gets sum_t alpha_t g_t.
`level: representation` makes it MGDA-UB (the same step as `mgda-ub`, which stays as its own name).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtlcli.methods._levels import GramMethod
from mtlcli.methods.mgda_ub import min_norm_weights
from mtlcli.methods.options import MgdaExactOptions


class Mgda(GramMethod):
    """MGDA on the shared-parameter gradients: weights from the T x T Gram matrix of dL_t/dtheta_sh."""

    name: ClassVar[str] = "mgda"

    def __init__(self, options: MgdaExactOptions | None = None) -> None:
        self.options = options or MgdaExactOptions()

    def __repr__(self) -> str:
        o = self.options
        where = f"grads={o.grads!r}" if o.level == "shared" else "level='representation'"
        return f"Mgda(normalization={o.normalization!r}, solver={o.solver!r}, head_grads={o.head_grads!r}, {where})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        return min_norm_weights(losses, gram, self.options)
