"""Exact MGDA (Sener & Koltun, NeurIPS 2018, §3.2): the min-norm point on the shared parameters.

The per-task gradients g_t = dL_t/dtheta_sh come from one forward pass and T backward passes
(`grads: loop`) or one vmapped backward (`grads: batched`); alpha solves min ||sum_t alpha_t g_t||^2
on the simplex (optionally on normalised gradients) and the encoder gets sum_t alpha_t g_t.
`level: representation` makes it MGDA-UB (the same step as `mgda-ub`, which stays as its own name).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from mtlcli.methods._levels import Level
from mtlcli.methods._representation import gram_step_on_representation
from mtlcli.methods._shared_params import GradsMode, gram_step_on_shared_parameters
from mtlcli.methods.base import Stateless, Step
from mtlcli.methods.mgda_ub import MgdaOptions, min_norm_weights


class MgdaExactOptions(MgdaOptions):
    level: Level = Field("shared", description="shared parameters (exact MGDA) or representation z (= mgda-ub)")
    grads: GradsMode = Field("loop", description="level shared: per-task grads by T backwards or one batched backward")

    @field_validator("grads")
    @classmethod
    def _batched_needs_shared_level(cls, value: GradsMode, info: ValidationInfo) -> GradsMode:
        if value == "batched" and info.data.get("level") == "representation":
            raise ValueError("batched applies only at level shared (level representation needs one encoder backward)")
        return value


class Mgda(Stateless):
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

    def backward(self, step: Step) -> Tensor:
        o = self.options
        if o.level == "representation":  # exactly mgda-ub
            return gram_step_on_representation(step, self.weights, head_grads=o.head_grads)
        return gram_step_on_shared_parameters(step, self.weights, grads=o.grads, head_grads=o.head_grads)
