"""MGDA without alpha >= 0 (Liu et al., ICLR 2021, §4 and appendix C.2).

The min-norm point of the *affine* hull of the task gradients: minimise ||sum_t alpha_t g_t||^2 with
sum(alpha) = 1 only, closed form alpha_{2:T} = g_1 D^T (D D^T)^-1 with D^T = [g_1 - g_t]_t. Then
g . (g_1 - g_t) = 0 for every t. Like MGDA-UB it works on the representation gradients dL_t/dz
(`level: shared`: on the shared parameters), with the same optional normalisation; the weights multiply
the raw losses.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import Tensor

from mtlcli.methods._closed_form import unconstrained_min_norm_weights
from mtlcli.methods._levels import LevelOptions, level_step
from mtlcli.methods._representation import normalize_gram
from mtlcli.methods.base import Stateless, Step
from mtlcli.methods.mgda_ub import Normalization


class MgdaUnconstrainedOptions(LevelOptions):
    normalization: Normalization = Field("none", description="divide g_t by 1, ||g_t||, L_t or L_t ||g_t||")


class MgdaUnconstrained(Stateless):
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

    def backward(self, step: Step) -> Tensor:
        return level_step(step, self.weights, self.options)
