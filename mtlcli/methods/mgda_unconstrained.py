"""MGDA without alpha >= 0 (Liu et al., ICLR 2021, §4 and appendix C.2).

The min-norm point of the *affine* hull of the task gradients: minimise ||sum_t alpha_t g_t||^2 with
sum(alpha) = 1 only, closed form alpha_{2:T} = g_1 D^T (D D^T)^-1 with D^T = [g_1 - g_t]_t. Then
g . (g_1 - g_t) = 0 for every t. Like MGDA-UB it works on the representation gradients dL_t/dz
(`level: shared`: on the shared parameters), with the same optional normalisation; the weights multiply
the raw losses.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtlcli.methods._closed_form import unconstrained_min_norm_weights
from mtlcli.methods._levels import GramMethod
from mtlcli.methods._representation import normalize_gram
from mtlcli.methods.options import MgdaUnconstrainedOptions


class MgdaUnconstrained(GramMethod):
    """Closed-form min-norm point of the affine hull of dL_t/dz (weights may be negative)."""

    name: ClassVar[str] = "mgda-unconstrained"

    def __init__(self, options: MgdaUnconstrainedOptions | None = None) -> None:
        self.options = options or MgdaUnconstrainedOptions()

    def __repr__(self) -> str:
        o = self.options
        if o.level == "representation":
            return f"MgdaUnconstrained(normalization={o.normalization!r}, head_grads={o.head_grads!r})"
        return f"MgdaUnconstrained(normalization={o.normalization!r}, {o.describe_level()})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        return unconstrained_min_norm_weights(normalize_gram(gram, losses, self.options.normalization))
