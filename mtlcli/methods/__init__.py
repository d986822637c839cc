"""Multi-task weighting methods: one module each, registered here.

Public API::

    from mtlcli.methods import build, min_norm
    method = build("mgda-ub", normalization="l2")
    weights = method.weights(losses, gram)      # Gram-based methods
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mtlcli.errors import MtlError
from mtlcli.methods.aligned_mtl import AlignedMtl, AlignedMtlOptions
from mtlcli.methods.base import Method, Options, Step
from mtlcli.methods.cagrad import Cagrad, CagradOptions
from mtlcli.methods.db_mtl import DbMtl, DbMtlOptions
from mtlcli.methods.dualproj import DualProj, DualProjOptions
from mtlcli.methods.dwa import Dwa, DwaOptions
from mtlcli.methods.fairgrad import FairGrad, FairGradOptions
from mtlcli.methods.famo import Famo, FamoOptions
from mtlcli.methods.gls import Gls, GlsOptions
from mtlcli.methods.graddrop import GradDrop, GradDropOptions
from mtlcli.methods.gradnorm import GradNorm, GradNormOptions
from mtlcli.methods.gradvac import GradVac, GradVacOptions
from mtlcli.methods.grid import GridOptions, sweep_only
from mtlcli.methods.imtl import Imtl, ImtlOptions
from mtlcli.methods.imtl_g import ImtlG, ImtlGExact, ImtlGExactOptions, ImtlGOptions
from mtlcli.methods.imtl_l import ImtlL, ImtlLOptions
from mtlcli.methods.mgda import Mgda, MgdaExactOptions
from mtlcli.methods.mgda_ub import MgdaOptions, MgdaUb
from mtlcli.methods.mgda_unconstrained import MgdaUnconstrained, MgdaUnconstrainedOptions
from mtlcli.methods.min_norm import SOLVERS, min_norm
from mtlcli.methods.moco import Moco, MocoOptions
from mtlcli.methods.nash_mtl import NashMtl, NashMtlOptions
from mtlcli.methods.pcgrad import PcGrad, PcGradOptions
from mtlcli.methods.rlw import Rlw, RlwOptions
from mtlcli.methods.single_task import SingleTask, SingleTaskOptions
from mtlcli.methods.static import Static, StaticOptions
from mtlcli.methods.stch import Stch, StchOptions
from mtlcli.methods.uncertainty import Uncertainty, UncertaintyOptions
from mtlcli.methods.uniform import Uniform, UniformOptions
from mtlcli.methods.upgrad import UPGrad, UPGradOptions

__all__ = [
    "REGISTRY",
    "SOLVERS",
    "Method",
    "MethodInfo",
    "Step",
    "build",
    "min_norm",
    "needs_independent_networks",
    "option_problems",
]


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry: how to build the method, its options schema, and what to show users."""

    name: str
    factory: Callable[[Any], Method]
    options: type[Options]
    summary: str
    paper: str


SENER = "Sener & Koltun, NeurIPS 2018"
IMTL = "Liu et al., ICLR 2021 (IMTL)"

REGISTRY: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "single-task",
            SingleTask,
            SingleTaskOptions,
            "one independent network per task (nothing shared), trained in one run: the reference",
            "baseline",
        ),
        MethodInfo("uniform", Uniform, UniformOptions, "mean of the task losses", "baseline"),
        MethodInfo("static", Static, StaticOptions, "fixed weights on the simplex: sum_t w_t L_t", "baseline"),
        MethodInfo(
            "grid",
            sweep_only,
            GridOptions,
            "static over an even grid of the simplex, one run each, best marked on validation",
            f"{SENER} (grid-search baseline)",
        ),
        MethodInfo(
            "uncertainty",
            Uncertainty,
            UncertaintyOptions,
            "learnable log-variances s_t: sum_t exp(-s_t) L_t + s_t/2 (classification form)",
            "Kendall, Gal & Cipolla, CVPR 2018",
        ),
        MethodInfo(
            "gradnorm",
            GradNorm,
            GradNormOptions,
            "learnt weights (sum T) equalising gradient norms on the last shared layer, paced by training rates",
            "Chen et al., ICML 2018",
        ),
        MethodInfo(
            "mgda",
            Mgda,
            MgdaExactOptions,
            "exact MGDA: min-norm point of the task gradients w.r.t. the shared parameters",
            SENER,
        ),
        MethodInfo(
            "mgda-ub",
            MgdaUb,
            MgdaOptions,
            "min-norm point of the task gradients w.r.t. the shared representation (one encoder backward)",
            SENER,
        ),
        MethodInfo(
            "mgda-unconstrained",
            MgdaUnconstrained,
            MgdaUnconstrainedOptions,
            "closed-form min-norm point without alpha >= 0 (affine hull), on the representation",
            f"{IMTL}, appendix C.2",
        ),
        MethodInfo(
            "imtl-g",
            ImtlG,
            ImtlGOptions,
            "closed-form weights giving equal projections on every unit task gradient, on the representation",
            IMTL,
        ),
        MethodInfo(
            "imtl-g-exact",
            ImtlGExact,
            ImtlGExactOptions,
            "IMTL-G on the shared-parameter gradients",
            IMTL,
        ),
        MethodInfo("imtl-l", ImtlL, ImtlLOptions, "learnable loss scales: sum_t e^{s_t} L_t - s_t", IMTL),
        MethodInfo(
            "imtl",
            Imtl,
            ImtlOptions,
            "hybrid: IMTL-L scaled losses, IMTL-G weights for the encoder, raw scaled grads for the heads",
            f"{IMTL}, Algorithm 1",
        ),
        MethodInfo("gls", Gls, GlsOptions, "geometric mean of the task losses", "Chennupati et al., CVPR-W 2019"),
        MethodInfo(
            "pcgrad",
            PcGrad,
            PcGradOptions,
            "project conflicting shared-parameter gradients on each other's normal planes, random order",
            "Yu et al., NeurIPS 2020",
        ),
        MethodInfo(
            "famo",
            Famo,
            FamoOptions,
            "softmax logits z moved by the observed log-loss decreases (own Adam): sum_t z_t log L_t / c, balanced rates",
            "Liu et al., NeurIPS 2023 (FAMO)",
        ),
        MethodInfo(
            "dwa",
            Dwa,
            DwaOptions,
            "weights K softmax(L_t(e-1) / L_t(e-2) / T) from the last two epochs' mean losses (1 at first): sum_t w_t L_t",
            "Liu, Johns & Davison, CVPR 2019",
        ),
        MethodInfo(
            "rlw",
            Rlw,
            RlwOptions,
            "random weights drawn every step (softmax of a standard normal draw by default): sum_t w_t L_t",
            "Lin et al., TMLR 2022",
        ),
        MethodInfo(
            "upgrad",
            UPGrad,
            UPGradOptions,
            "mean of the task gradients each projected onto the dual cone of all of them (conflicts with none), "
            "on z or, with level: shared, the shared parameters",
            "Quinton & Rey, 2024 (Jacobian Descent, UPGrad)",
        ),
        MethodInfo(
            "dualproj",
            DualProj,
            DualProjOptions,
            "mean task gradient projected onto the dual cone of the task gradients (GEM's projection), "
            "on z or, with level: shared, the shared parameters",
            "Quinton & Rey, 2024 (TorchJD); Lopez-Paz & Ranzato, NIPS 2017 (GEM)",
        ),
        MethodInfo(
            "cagrad",
            Cagrad,
            CagradOptions,
            "mean gradient moved within a ball of radius c ||g_0|| to maximise the worst task's decrease "
            "(exact dual on the Gram matrix), on z or, with level: shared, the shared parameters",
            "Liu, Liu, Jin, Stone & Liu, NeurIPS 2021 (CAGrad)",
        ),
        MethodInfo(
            "gradvac",
            GradVac,
            GradVacOptions,
            "move each task gradient up to EMA cosine goals with the others, random order",
            "Wang, Tsvetkov, Firat & Cao, ICLR 2021 (Gradient Vaccine)",
        ),
        MethodInfo(
            "graddrop",
            GradDrop,
            GradDropOptions,
            "per element of dL/dz, keep one sign, chosen with probability of its purity",
            "Chen et al., NeurIPS 2020 (GradDrop)",
        ),
        MethodInfo(
            "nash-mtl",
            NashMtl,
            NashMtlOptions,
            "Nash bargaining update sum_t a_t g_t with G a = 1/a (exact Newton), on z or shared params",
            "Navon et al., ICML 2022 (Nash-MTL)",
        ),
        MethodInfo(
            "db-mtl",
            DbMtl,
            DbMtlOptions,
            "log-losses; EMA of their gradients, each scaled to the largest norm, summed",
            "Lin, Ye, Xu, Shi & Zhang, 2023 (DB-MTL)",
        ),
        MethodInfo(
            "moco",
            Moco,
            MocoOptions,
            "tracked loss-scaled task gradients; weights by one projected MGDA step",
            "Fernando et al., ICLR 2023 (MoCo)",
        ),
        MethodInfo(
            "aligned-mtl",
            AlignedMtl,
            AlignedMtlOptions,
            "task gradients aligned to equal singular values (condition number 1), mean",
            "Senushkin et al., CVPR 2023 (Aligned-MTL)",
        ),
        MethodInfo(
            "fairgrad",
            FairGrad,
            FairGradOptions,
            "alpha-fair update sum_t w_t g_t with G w = w^(-1/alpha) (exact Newton)",
            "Ban & Ji, ICML 2024 (FairGrad)",
        ),
        MethodInfo(
            "stch",
            Stch,
            StchOptions,
            "smooth Tchebycheff: T mu logsumexp(log(L_t/n_t)/mu), n set by a log warm-up",
            "Lin et al., ICML 2024 (STCH)",
        ),
    )
}


def _unknown_method(name: str) -> MtlError:
    return MtlError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(REGISTRY)}")


def option_problems(name: str, options: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems with `options` for method `name`, as (key path, message) pairs; empty when valid."""
    if name not in REGISTRY:
        raise _unknown_method(name)
    info = REGISTRY[name]
    problems: list[tuple[tuple[str | int, ...], str]] = []
    known = set(info.options.model_fields)
    for key in options:
        if key not in known:
            users = [m for m, i in REGISTRY.items() if key in i.options.model_fields]
            where = f"applies to {', '.join(users)}" if users else "is not an option of any method"
            close = difflib.get_close_matches(key, sorted(known), n=1)
            valid = f"did you mean {close[0]!r}?" if close else f"options of {name}: {', '.join(sorted(known)) or 'none'}"
            problems.append(((key,), f"does not apply to {name}: it {where} ({valid})"))
    try:
        info.options(**{k: v for k, v in options.items() if k in known})
    except ValidationError as exc:
        from mtlcli.recipe import describe_error  # local import: recipe imports this module

        problems.extend((tuple(err["loc"]), describe_error(err)) for err in exc.errors())
    return problems


def needs_independent_networks(name: str) -> bool:
    """Whether method `name` trains one network per task (the single-task baseline)."""
    return bool(getattr(REGISTRY[name].factory, "independent_networks", False)) if name in REGISTRY else False


def build(name: str, **options: Any) -> Method:
    """Build the method `name` with validated `options`."""
    problems = option_problems(name, options)
    if problems:
        text = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
        raise MtlError(f"invalid options for method {name}: {text}")
    info = REGISTRY[name]
    return info.factory(info.options(**options))
