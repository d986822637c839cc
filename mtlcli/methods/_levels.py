"""Where a Gram-based method takes its task gradients: the `level` option every such method offers.

- ``representation`` (default): dL_t/dz, the MGDA-UB trick (Sener & Koltun 2018, §3.3): one backward
  per (small) head and ONE encoder backward for the combined update;
- ``shared``: dL_t/dtheta_sh, the exact gradients of the shared parameters, by T backward passes
  (``grads: loop``) or one vmapped backward (``grads: batched``).

A method's options subclass `LevelOptions`; its `backward` is `level_step(step, self.weights, options)`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from mtlcli.methods._representation import HeadGrads, WeightsFn, gram_step_on_representation
from mtlcli.methods._shared_params import GradsMode, gram_step_on_shared_parameters
from mtlcli.methods.base import Options, Step

Level = Literal["representation", "shared"]


def grads_only_at_shared_level(grads: GradsMode | None, level: str) -> GradsMode | None:
    """`grads` (loop or batched per-task backwards) exists only at level shared: an error elsewhere."""
    if grads is not None and level != "shared":
        raise ValueError(
            "applies only at level shared (per-task gradients of the shared parameters); "
            "set level: shared, or drop grads (level representation needs one encoder backward)"
        )
    return grads


def describe_level(level: str, grads: GradsMode | None) -> str:
    """`level=...[, grads=...]` for a method's repr."""
    shown = f", grads={grads or 'loop'!r}" if level == "shared" else ""
    return f"level={level!r}{shown}"


class LevelOptions(Options):
    """`level`, `grads` (shared level only) and `head_grads`, validated together."""

    level: Level = Field(
        "representation",
        description="gradients w.r.t. the shared representation z (one encoder backward) or the shared parameters",
    )
    grads: GradsMode | None = Field(
        None, description="level shared only: per-task grads by T backwards or one batched backward (null: loop)"
    )
    head_grads: HeadGrads = Field("weighted", description="heads get w_t-scaled or raw grads")

    @field_validator("grads")
    @classmethod
    def _grads_only_at_shared_level(cls, value: GradsMode | None, info: ValidationInfo) -> GradsMode | None:
        return grads_only_at_shared_level(value, info.data.get("level", "representation"))

    def describe_level(self) -> str:
        """`level=..., [grads=...,] head_grads=...` for a method's repr."""
        return f"{describe_level(self.level, self.grads)}, head_grads={self.head_grads!r}"


def level_step(step: Step, weights: WeightsFn, options: LevelOptions) -> Tensor:
    """The whole step of a Gram-based method at the options' level; returns the detached weights."""
    if options.level == "representation":
        return gram_step_on_representation(step, weights, head_grads=options.head_grads)
    return gram_step_on_shared_parameters(step, weights, grads=options.grads or "loop", head_grads=options.head_grads)
