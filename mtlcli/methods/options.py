"""Every method's options: the schemas `mtl methods` lists and a recipe is validated against.

Torch-free on purpose (pydantic only): listing the methods, validating a recipe and shell completion
import this module and `mtlcli.methods.registry`, never the implementations. Each method's module
imports its options from here.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


# ---------------------------------------------------------------- base
class Options(BaseModel):
    """Base of every method's options: unknown options are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- _representation
HeadGrads = Literal["weighted", "raw"]


# ---------------------------------------------------------------- _shared_params
GradsMode = Literal["loop", "batched"]
ParameterGroups = Literal["whole", "layer", "matrix"]  # blocks of the shared parameters (GradVac's goals)


# ---------------------------------------------------------------- min_norm
Solver = Literal["min-norm-point", "frank-wolfe", "projected-gradient"]
SOLVERS: tuple[str, ...] = ("min-norm-point", "frank-wolfe", "projected-gradient")


# ---------------------------------------------------------------- _levels
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


class SharedLevelOptions(LevelOptions):
    """A method its paper runs on the shared parameters: `level: shared` by default (the published method);
    `level: representation` is MGDA-UB's cheaper variant on z, labelled as such wherever runs are listed."""

    level: Level = Field(
        "shared",
        description="the shared parameters (the published method) or the representation z (a cheaper variant: one "
        "encoder backward)",
    )

    @field_validator("grads")
    @classmethod
    def _grads_only_at_shared_level(cls, value: GradsMode | None, info: ValidationInfo) -> GradsMode | None:
        return grads_only_at_shared_level(value, info.data.get("level", "shared"))


# ---------------------------------------------------------------- mgda_ub
Normalization = Literal["none", "l2", "loss", "loss+"]


class MgdaOptions(Options):
    normalization: Normalization = Field("none", description="divide g_t by 1, ||g_t||, L_t or L_t ||g_t||")
    solver: Solver = Field("min-norm-point", description="min-norm solver (exact, paper's, authors' code)")
    max_iter: int = Field(250, gt=0, description="solver iteration limit")
    tol: float = Field(1e-10, gt=0, description="solver tolerance (duality gap, or step size)")
    head_grads: HeadGrads = Field("weighted", description="heads get alpha_t-scaled (authors) or raw (paper) grads")


# ---------------------------------------------------------------- _dual_cone
def non_negative_pref_vector(value: list[float] | None) -> list[float] | None:
    """A preference vector: finite weights >= 0, not all zero (or null)."""
    if value is not None and (any(not math.isfinite(p) or p < 0 for p in value) or sum(value) <= 0):
        raise ValueError(f"pref_vector must be finite, >= 0 and not all zero, got {value}")
    return value


class DualConeOptions(SharedLevelOptions):
    """Options shared by upgrad and dualproj (TorchJD's defaults: the shared parameters, heads' raw gradients as
    `mtl_backward` gives them)."""

    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (TorchJD's mtl_backward) or w_t-scaled ones")

    pref_vector: list[float] | None = Field(
        None, min_length=1, description="one weight >= 0 per task combining the projected gradients (null: 1/T each, the mean)"
    )
    reg_eps: float = Field(1e-4, ge=0, description="added to the diagonal of G / trace(G) (TorchJD's reg_eps)")
    norm_eps: float = Field(0.0, ge=0, description="a G with trace below this counts as zero (TorchJD's default: 1e-4)")
    tol: float = Field(1e-10, gt=0, description="relative KKT tolerance of the projection solver")
    max_iter: int = Field(1000, gt=0, description="active-set iterations per projection")

    @field_validator("pref_vector")
    @classmethod
    def _non_negative(cls, value: list[float] | None) -> list[float] | None:
        return non_negative_pref_vector(value)

    def describe(self) -> str:
        o = self
        return f"{o.describe_level()}, pref_vector={o.pref_vector!r}, reg_eps={o.reg_eps!r}, norm_eps={o.norm_eps!r}"


# ---------------------------------------------------------------- _tracked
class TrackedOptions(Options):
    level: Level = Field(
        "shared",
        description="the shared parameters (LibMTL's level; default) or the representation z (one encoder backward; "
        "the kept gradients then mix the gradients of different examples)",
    )
    grads: GradsMode | None = Field(
        None, description="level shared only: per-task grads by T backwards or one batched backward (null: loop)"
    )

    @field_validator("grads")
    @classmethod
    def _grads_only_at_shared_level(cls, value: GradsMode | None, info: ValidationInfo) -> GradsMode | None:
        return grads_only_at_shared_level(value, info.data.get("level", "shared"))

    def describe_level(self) -> str:
        return describe_level(self.level, self.grads)


# ---------------------------------------------------------------- aligned_mtl
ScaleMode = Literal["min", "median", "rmse"]


Reduction = Literal["mean", "sum"]


class AlignedMtlOptions(SharedLevelOptions):
    scale_mode: ScaleMode = Field("min", description="scale of the aligned singular values: min (paper), median or rmse")
    reduction: Reduction = Field("sum", description="combine the aligned gradients by their sum (the authors') or mean (TorchJD)")
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (authors) or w_t-scaled ones")


# ---------------------------------------------------------------- cagrad
Rescale = Literal[0, 1, 2]


class CagradOptions(SharedLevelOptions):
    c: float = Field(0.4, ge=0, description="radius of the ball around the mean gradient, in units of ||g_0||")
    rescale: Rescale = Field(1, description="divide the update by 1 (0), 1 + c^2 (1, the authors') or 1 + c (2)")
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (authors) or alpha_t-scaled ones")


# ---------------------------------------------------------------- config
class ConfigOptions(SharedLevelOptions):
    pref_vector: list[float] | None = Field(
        None,
        min_length=1,
        description="one weight >= 0 per task: cos(g_t, update) is proportional to it (null: equal, the authors')",
    )
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (authors, TorchJD) or w_t-scaled ones")

    @field_validator("pref_vector")
    @classmethod
    def _non_negative(cls, value: list[float] | None) -> list[float] | None:
        return non_negative_pref_vector(value)


# ---------------------------------------------------------------- db_mtl
class DbMtlOptions(TrackedOptions):
    beta: float = Field(0.9, ge=0, le=1, description="EMA coefficient of the log-loss gradients: beta / k^beta_sigma")
    beta_sigma: float = Field(0.0, ge=0, description="decay of the EMA coefficient with the update count k (LibMTL: 0)")


# ---------------------------------------------------------------- dualproj
class DualProjOptions(DualConeOptions):
    """DualProj's options: exactly the dual-cone options (level, grads, head_grads, pref_vector, solver)."""


# ---------------------------------------------------------------- dwa
class DwaOptions(Options):
    temperature: float = Field(2.0, gt=0, description="softmax temperature T (large: weights near 1)")


# ---------------------------------------------------------------- fairgrad
class FairGradOptions(SharedLevelOptions):
    alpha: float = Field(
        1.0, ge=0, description="alpha-fairness: 0 mean, 1 proportional (authors' default), 2 delay, large max-min"
    )
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (authors) or w_t-scaled ones")


# ---------------------------------------------------------------- excess_mtl
class ExcessMtlOptions(TrackedOptions):
    level: Level = Field(
        "shared",
        description="the shared parameters (the authors' level; default) or the representation z, its per-task "
        "gradients summed over the batch (LibMTL's rep_grad; one encoder backward)",
    )
    robust_step_size: float = Field(
        1e-2, gt=0, description="step eta of the exponentiated weight update w_t <- w_t exp(eta E_t / E_t(0)) (authors: 1e-2)"
    )


# ---------------------------------------------------------------- famo
FamoUpdate = Literal["same-batch", "next-batch"]


class FamoOptions(Options):
    gamma: float = Field(
        0.01, ge=0, description="weight decay (L2) of the task logits in their Adam optimiser (famo.py; NYUv2 runs: 1e-3)"
    )
    w_lr: float = Field(0.025, gt=0, description="learning rate of the task logits' own Adam optimiser")
    update: FamoUpdate = Field(
        "same-batch",
        description="the logits move after each step from the same batch re-evaluated (the authors': one more "
        "forward) or at the next step from its losses (no extra forward)",
    )


# ---------------------------------------------------------------- gls
class GlsOptions(Options):
    """No options: the method has no hyper-parameters."""


# ---------------------------------------------------------------- graddrop
GradDropMask = Literal["feature", "element"]


class GradDropOptions(Options):
    leak: float = Field(0.0, ge=0, le=1, description="fraction of each task's dropped gradient let through (0: none)")
    mask: GradDropMask = Field(
        "feature",
        description="one sign choice per feature of z from the batch sums of sign(z) dL_t/dz (the paper, LibMTL) "
        "or per element of dL_t/dz (TorchJD's form)",
    )


# ---------------------------------------------------------------- gradnorm
class GradNormOptions(Options):
    alpha: float = Field(1.5, ge=0, description="asymmetry: pull of the slower tasks (0: equal norms)")
    lr: float = Field(0.025, gt=0, description="learning rate of the weights' own Adam optimiser")


# ---------------------------------------------------------------- gradvac
class GradVacOptions(SharedLevelOptions):
    beta: float = Field(0.5, ge=0, le=1, description="EMA rate of the similarity goals: phi_hat += beta (phi - phi_hat)")
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (LibMTL) or w_t-scaled ones")
    groups: ParameterGroups = Field(
        "whole",
        description="one cosine goal per task pair over the whole shared gradient, or per layer (each module's own "
        "parameters) or per parameter tensor, with their own goals and weights (LibMTL's group types 0, 1, 2); "
        "layer and matrix at level shared only",
    )

    @field_validator("groups")
    @classmethod
    def _groups_need_the_shared_level(cls, value: ParameterGroups, info: ValidationInfo) -> ParameterGroups:
        if value == "whole":
            return value
        if info.data.get("level", "shared") != "shared":
            raise ValueError(
                f"{value} applies only at level shared (per-parameter gradients); set level: shared, or groups: whole"
            )
        if info.data.get("head_grads", "raw") != "raw":
            raise ValueError(
                f"{value} gives each group its own task weights, so no single weight scales a head; "
                "set head_grads: raw, or groups: whole"
            )
        return value


# ---------------------------------------------------------------- grid
class GridOptions(Options):
    points: int | None = Field(None, ge=2, description="grid points per axis; null: 11 for 2 tasks, 6 for 3, 4 for 4+")


# ---------------------------------------------------------------- imtl
class ImtlOptions(Options):
    """No options: the method has no hyper-parameters."""


# ---------------------------------------------------------------- imtl_g
class ImtlGOptions(LevelOptions):
    """`level: shared` makes it IMTL-G (exact), the same step as `imtl-g-exact` (which stays as its own name)."""

    head_grads: HeadGrads = Field(
        "raw", description="heads get their raw grads (the paper's Algorithm 1, LibMTL, TorchJD) or alpha_t-scaled ones"
    )


class ImtlGExactOptions(Options):
    head_grads: HeadGrads = Field(
        "raw", description="heads get their raw grads (the paper's Algorithm 1, LibMTL, TorchJD) or alpha_t-scaled ones"
    )
    grads: GradsMode = Field("loop", description="per-task grads by T backwards or one batched backward")


# ---------------------------------------------------------------- imtl_l
class ImtlLOptions(Options):
    """No options: the method has no hyper-parameters."""


# ---------------------------------------------------------------- mgda
class MgdaExactOptions(MgdaOptions):
    level: Level = Field("shared", description="shared parameters (exact MGDA) or representation z (= mgda-ub)")
    grads: GradsMode = Field("loop", description="level shared: per-task grads by T backwards or one batched backward")

    @field_validator("grads")
    @classmethod
    def _batched_needs_shared_level(cls, value: GradsMode, info: ValidationInfo) -> GradsMode:
        if value == "batched" and info.data.get("level") == "representation":
            raise ValueError("batched applies only at level shared (level representation needs one encoder backward)")
        return value


# ---------------------------------------------------------------- mgda_unconstrained
class MgdaUnconstrainedOptions(LevelOptions):
    normalization: Normalization = Field("none", description="divide g_t by 1, ||g_t||, L_t or L_t ||g_t||")


# ---------------------------------------------------------------- moco
Projection = Literal["softmax", "simplex"]


class MocoOptions(TrackedOptions):
    beta: float = Field(0.5, ge=0, le=1, description="step of the gradient tracking y: beta / k^beta_sigma")
    beta_sigma: float = Field(0.5, ge=0, description="decay of the tracking step with the update count k")
    gamma: float = Field(0.1, ge=0, description="step of the task weights lambda: gamma / k^gamma_sigma")
    gamma_sigma: float = Field(0.5, ge=0, description="decay of the weights' step with the update count k")
    rho: float = Field(0.0, ge=0, description="l2 regularisation of lambda in its update")
    projection: Projection = Field(
        "softmax", description="back onto the simplex after the lambda step: softmax (LibMTL) or Euclidean (the paper)"
    )


# ---------------------------------------------------------------- modo
class MoDoOptions(SharedLevelOptions):
    gamma: float = Field(
        0.1, ge=0, description="lambda <- P(lambda - gamma (G_12 + rho I) lambda): its step (authors' 0.1; LibMTL 1e-3)"
    )
    rho: float = Field(0.1, ge=0, description="l2 regularisation of lambda in its step")
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (authors) or lambda_t-scaled ones")


# ---------------------------------------------------------------- nash_mtl
class NashMtlOptions(SharedLevelOptions):
    update_weights_every: int = Field(1, ge=1, description="recompute alpha every N steps, reuse it in between")
    max_norm: float = Field(1.0, ge=0, description="clip ||sum_t alpha_t g_t|| to this (0: no clipping)")


# ---------------------------------------------------------------- pcgrad
class PcGradOptions(Options):
    grads: GradsMode = Field("loop", description="per-task grads by T backwards or one batched backward")


# ---------------------------------------------------------------- rlw
Distribution = Literal["normal", "uniform", "dirichlet", "bernoulli", "constrained-bernoulli"]


class RlwOptions(Options):
    distribution: Distribution = Field(
        "normal", description="what the weights are drawn from (softmax of normal, uniform or Dirichlet draws; raw Bernoulli)"
    )


# ---------------------------------------------------------------- sdmgrad
class SDMGradOptions(SharedLevelOptions):
    lambda_reg: float = Field(
        0.3, ge=0, description="pull towards the mean gradient g_0: update (J^T w + lambda_reg g_0) / (1 + lambda_reg)"
    )
    niter: int = Field(20, ge=1, description="projected momentum-SGD iterations on w per step (restarted every step)")
    w_lr: float = Field(10.0, gt=0, description="their learning rate (the authors' 10; LibMTL's 5)")
    w_momentum: float = Field(0.5, ge=0, lt=1, description="their momentum")
    scale_eps: float = Field(
        1e-4,
        ge=1e-12,
        description="G_12 divided by (mean_t sqrt(max(G_tt, 0) + scale_eps))^2 (the authors' 1e-4; >= 1e-12 keeps it "
        "finite when no G_tt is positive)",
    )
    reduction: Reduction = Field(
        "sum", description="weights summing to T (the authors' x T, 'to match the sum loss') or to 1 (LibMTL, TorchJD)"
    )
    max_norm: float = Field(1.0, ge=0, description="clip the shared update's norm to this (the authors' 1.0; 0: none)")
    head_grads: HeadGrads = Field("raw", description="heads get their raw grads (authors) or w_t-scaled ones")


# ---------------------------------------------------------------- single_task
class SingleTaskOptions(Options):
    """No options: the method has no hyper-parameters."""


# ---------------------------------------------------------------- static
class StaticOptions(Options):
    weights: list[float] = Field(description="one weight per task, >= 0, summing to 1", min_length=1)

    @field_validator("weights")
    @classmethod
    def _on_simplex(cls, value: list[float]) -> list[float]:
        if any(w < 0 for w in value):
            raise ValueError(f"weights must be >= 0, got {value}")
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {value} (sum {sum(value):g})")
        return value


# ---------------------------------------------------------------- stch
class StchOptions(Options):
    mu: float = Field(1.0, gt=0, description="smoothing mu (small: the Tchebycheff max; large: a mean)")
    warmup_epoch: int = Field(4, ge=0, description="epochs 0..warmup_epoch train on sum log L; the last sets the nadir")


# ---------------------------------------------------------------- uncertainty
class UncertaintyOptions(Options):
    """No options: the method has no hyper-parameters."""


# ---------------------------------------------------------------- uniform
class UniformOptions(Options):
    """No options: the method has no hyper-parameters."""


# ---------------------------------------------------------------- upgrad
class UPGradOptions(DualConeOptions):
    """UPGrad's options: exactly the dual-cone options (level, grads, head_grads, pref_vector, solver)."""


