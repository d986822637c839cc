"""The method registry: names, options schemas, summaries and papers, apart from the implementations.

Completing and checking method names read this module, which imports neither torch, pydantic nor any
method. Each entry names its options schema in `mtlcli.methods.options` (pydantic, imported when options
are listed or validated); the implementations are in `mtlcli.methods.implementations` (torch), imported
when a run builds a method.

Methods of other packages join through the entry-point group `mtlcli.methods` (see `mtlcli.plugins`): `REGISTRY`
lists them after the built-in ones, and they are validated, listed and built the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mtlcli import plugins
from mtlcli.errors import MtlError

if TYPE_CHECKING:
    from mtlcli.methods.options import Options
    from mtlcli.schema import Problem


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry: where the method lives, its options schema, and what to show users."""

    name: str
    options_schema: str  # its options class in mtlcli.methods.options (pydantic: imported when first read)
    summary: str
    paper: str
    independent_networks: bool = False  # one network per task (the single-task baseline)
    reference: str = ""  # the implementation the defaults reproduce (repository and file), checked by a test
    differs: str = ""  # what, if anything, the defaults still do differently from the reference, and why
    # another method's algorithm fixed at one level: (that method, the level), e.g. mgda-ub is mgda on z
    fixed_level_of: tuple[str, str] | None = None
    samples: int = 1  # independent samples (parts) of each batch a step takes (`Step.samples`): needs batch_size >= it
    # a plug-in (entry point of group mtlcli.methods): where it comes from, its options class and its factory
    plugin: str = ""
    plugin_options: type | None = field(default=None, repr=False)
    plugin_build: Callable[[Any], Any] | None = field(default=None, repr=False)

    @property
    def options(self) -> type[Options]:
        """The options schema (imports pydantic and `mtlcli.methods.options` on first use)."""
        if self.plugin_options is not None:
            return self.plugin_options  # type: ignore[return-value]
        from mtlcli.methods import options

        return getattr(options, self.options_schema)

    def published_level(self) -> str | None:
        """The level of the published method (its paper's and reference code's), or None without a `level`."""
        field = self.options.model_fields.get("level")
        return None if field is None else str(field.default)

    def variant(self, options: dict[str, Any]) -> str | None:
        """`level=representation` when `options` (all of them, defaults filled in) run the method at another
        level than its published one: a variant, never to be shown as the published method; else None."""
        published = self.published_level()
        level = options.get("level", published)
        return None if published is None or level == published else f"level={level}"


SENER = "Sener & Koltun, NeurIPS 2018"
IMTL = "Liu et al., ICLR 2021 (IMTL)"

BUILT_IN: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            "single-task",
            "SingleTaskOptions",
            "one independent network per task (nothing shared), trained in one run: the reference",
            "baseline",
            independent_networks=True,
        ),
        MethodInfo("uniform", "UniformOptions", "mean of the task losses", "baseline"),
        MethodInfo("static", "StaticOptions", "fixed weights on the simplex: sum_t w_t L_t", "baseline"),
        MethodInfo(
            "grid",
            "GridOptions",
            "static over an even grid of the simplex, one run each, best marked on validation",
            f"{SENER} (grid-search baseline)",
        ),
        MethodInfo(
            "uncertainty",
            "UncertaintyOptions",
            "learnable log-variances s_t: sum_t exp(-s_t) L_t + s_t/2 (classification form)",
            "Kendall, Gal & Cipolla, CVPR 2018",
            reference="lorenmt/mtan, im2im_pred/utils.py (`--weight uncert`) = median-research-group/LibMTL, "
            "LibMTL/weighting/UW.py, with s_t = their log-variance + log 2",
        ),
        MethodInfo(
            "gradnorm",
            "GradNormOptions",
            "learnt weights (sum T) equalising gradient norms on the last shared layer, paced by training rates",
            "Chen et al., ICML 2018",
            reference="the paper's Algorithm 1 (the authors published no code; LibMTL's GradNorm.py differs: README, Methods)",
        ),
        MethodInfo(
            "mgda",
            "MgdaExactOptions",
            "exact MGDA: min-norm point of the task gradients w.r.t. the shared parameters",
            SENER,
            reference="isl-org/MultiObjectiveOptimization, multi_task/train_multi_task.py (mgda, normalization none)",
            differs="the min-norm point is exact (Wolfe's algorithm); the authors train with an inexact "
            "projected-gradient iteration (solver: projected-gradient); a task whose gradient is exactly zero (no "
            "label in the batch) is left out of the min-norm problem",
        ),
        MethodInfo(
            "mgda-ub",
            "MgdaOptions",
            "min-norm point of the task gradients w.r.t. the shared representation (one encoder backward)",
            SENER,
            reference="isl-org/MultiObjectiveOptimization, multi_task/train_multi_task.py "
            "(approximate_norm_solution, normalization none)",
            differs="the min-norm point is exact (Wolfe's algorithm); the authors train with an inexact "
            "projected-gradient iteration (solver: projected-gradient); a task whose gradient is exactly zero (no "
            "label in the batch) is left out of the min-norm problem",
            fixed_level_of=("mgda", "representation"),
        ),
        MethodInfo(
            "mgda-unconstrained",
            "MgdaUnconstrainedOptions",
            "closed-form min-norm point without alpha >= 0 (affine hull), on the representation",
            f"{IMTL}, appendix C.2",
        ),
        MethodInfo(
            "imtl-g",
            "ImtlGOptions",
            "closed-form weights giving equal projections on every unit task gradient, on the representation",
            IMTL,
            reference="TorchJD/torchjd, src/torchjd/aggregation/_imtl_g.py on the whole dL/dz; LibMTL's "
            "LibMTL/weighting/IMTL.py (gradient part, rep_grad) where its batch-summed dL/dz is that (one example)",
            differs="LibMTL's rep_grad form sums dL_t/dz over the batch before solving; mtl keeps the whole dL_t/dz (the "
            "paper's gradient of z): equal on one-example batches",
        ),
        MethodInfo(
            "imtl-g-exact",
            "ImtlGExactOptions",
            "IMTL-G on the shared-parameter gradients",
            IMTL,
            fixed_level_of=("imtl-g", "shared"),
            reference="median-research-group/LibMTL, LibMTL/weighting/IMTL.py (gradient part, shared parameters); "
            "TorchJD's aggregation/_imtl_g.py",
        ),
        MethodInfo("imtl-l", "ImtlLOptions", "learnable loss scales: sum_t e^{s_t} L_t - s_t", IMTL),
        MethodInfo(
            "imtl",
            "ImtlOptions",
            "hybrid: IMTL-L scaled losses, IMTL-G weights for the encoder, raw scaled grads for the heads",
            f"{IMTL}, Algorithm 1",
            reference="the paper's Algorithm 1 = median-research-group/LibMTL, LibMTL/weighting/IMTL.py with rep_grad, "
            "but for its batch sum of dL_t/dz",
            differs="LibMTL's rep_grad form sums dL_t/dz over the batch before solving; mtl keeps the whole dL_t/dz (the "
            "paper's): equal on one-example batches",
        ),
        MethodInfo(
            "gls",
            "GlsOptions",
            "geometric mean of the task losses",
            "Chennupati et al., CVPR-W 2019",
            reference="median-research-group/LibMTL, LibMTL/weighting/GLS.py",
        ),
        MethodInfo(
            "pcgrad",
            "PcGradOptions",
            "project conflicting shared-parameter gradients on each other's normal planes, random order",
            "Yu et al., NeurIPS 2020",
            reference="median-research-group/LibMTL, LibMTL/weighting/PCGrad.py (and TorchJD's aggregation/_pcgrad.py)",
            differs="LibMTL and the authors shuffle all T tasks, i itself included (g_i^PC could be projected off g_i "
            "after several projections); mtl skips j = i as the paper and TorchJD; no 1e-8 added to the squared "
            "norms",
        ),
        MethodInfo(
            "famo",
            "FamoOptions",
            "softmax logits z moved by the observed log-loss decreases (own Adam): sum_t z_t log L_t / c, balanced rates",
            "Liu et al., NeurIPS 2023 (FAMO)",
            reference="Cranial-XIX/FAMO, famo.py (and experiments/nyuv2/trainer.py's loop)",
            differs="gamma 0.01 is famo.py's default; the authors' NYUv2 runs use 1e-3 (recipes/nyuv2.yaml says so)",
        ),
        MethodInfo(
            "dwa",
            "DwaOptions",
            "weights K softmax(L_t(e-1) / L_t(e-2) / T) from the last two epochs' mean losses (1 at first): sum_t w_t L_t",
            "Liu, Johns & Davison, CVPR 2019",
            reference="lorenmt/mtan, im2im_pred/utils.py (`--weight dwa`) = median-research-group/LibMTL, "
            "LibMTL/weighting/DWA.py",
        ),
        MethodInfo(
            "rlw",
            "RlwOptions",
            "random weights drawn every step (softmax of a standard normal draw by default): sum_t w_t L_t",
            "Lin et al., TMLR 2022",
            reference="median-research-group/LibMTL, LibMTL/weighting/RLW.py",
        ),
        MethodInfo(
            "upgrad",
            "UPGradOptions",
            "mean of the task gradients each projected onto the dual cone of all of them (conflicts with none), "
            "on the shared parameters or, with level: representation, on z",
            "Quinton & Rey, 2024 (Jacobian Descent, UPGrad)",
            reference="TorchJD/torchjd, src/torchjd/aggregation/_upgrad.py (with autojac.mtl_backward)",
            differs="norm_eps 0 where TorchJD uses an absolute 1e-4 (a Gram trace below it counts as zero): 0 is scale-free",
        ),
        MethodInfo(
            "dualproj",
            "DualProjOptions",
            "mean task gradient projected onto the dual cone of the task gradients (GEM's projection), "
            "on the shared parameters or, with level: representation, on z",
            "Quinton & Rey, 2024 (TorchJD); Lopez-Paz & Ranzato, NIPS 2017 (GEM)",
            reference="TorchJD/torchjd, src/torchjd/aggregation/_dualproj.py (with autojac.mtl_backward)",
            differs="norm_eps 0 where TorchJD uses an absolute 1e-4 (a Gram trace below it counts as zero): 0 is scale-free",
        ),
        MethodInfo(
            "cagrad",
            "CagradOptions",
            "mean gradient moved within a ball of radius c ||g_0|| to maximise the worst task's decrease "
            "(exact dual on the Gram matrix), on the shared parameters or, with level: representation, on z",
            "Liu, Liu, Jin, Stone & Liu, NeurIPS 2021 (CAGrad)",
            reference="Cranial-XIX/CAGrad, nyuv2/utils.py `cagrad` (c 0.4 of nyuv2/run.sh)",
            differs="the dual is solved exactly (the authors: SciPy's SLSQP, tolerance 1e-6)",
        ),
        MethodInfo(
            "gradvac",
            "GradVacOptions",
            "move each task gradient up to EMA cosine goals with the others, random order; goals over the whole "
            "gradient or per layer or parameter tensor (groups)",
            "Wang, Tsvetkov, Firat & Cao, ICLR 2021 (Gradient Vaccine)",
            reference="median-research-group/LibMTL, LibMTL/weighting/GradVac.py (group types 0, 1, 2: groups whole, "
            "layer, matrix)",
        ),
        MethodInfo(
            "graddrop",
            "GradDropOptions",
            "per element of dL/dz, keep one sign, chosen with probability of its purity",
            "Chen et al., NeurIPS 2020 (GradDrop)",
            reference="median-research-group/LibMTL, LibMTL/weighting/GradDrop.py",
        ),
        MethodInfo(
            "nash-mtl",
            "NashMtlOptions",
            "Nash bargaining update sum_t a_t g_t with G a = 1/a (exact Newton), on the shared parameters or z",
            "Navon et al., ICML 2022 (Nash-MTL)",
            reference="AvivNavon/nash-mtl, methods/weight_methods.py `NashMTL`",
            differs="G a = 1/a is solved exactly by Newton's method (the authors: up to 20 rounds of a linearised cvxpy problem)",
        ),
        MethodInfo(
            "db-mtl",
            "DbMtlOptions",
            "log-losses; EMA of their gradients, each scaled to the largest norm, summed",
            "Lin, Ye, Xu, Shi & Zhang, 2023 (DB-MTL)",
            reference="median-research-group/LibMTL, LibMTL/weighting/DB_MTL.py",
        ),
        MethodInfo(
            "moco",
            "MocoOptions",
            "tracked loss-scaled task gradients; weights by one projected MGDA step",
            "Fernando et al., ICLR 2023 (MoCo)",
            reference="median-research-group/LibMTL, LibMTL/weighting/MoCo.py",
        ),
        MethodInfo(
            "aligned-mtl",
            "AlignedMtlOptions",
            "task gradients aligned to equal singular values (condition number 1), mean",
            "Senushkin et al., CVPR 2023 (Aligned-MTL)",
            reference="SamsungLabs/MTL's sum, as TorchJD's aggregation/_aligned_mtl.py with pref_vector ones",
        ),
        MethodInfo(
            "fairgrad",
            "FairGradOptions",
            "alpha-fair update sum_t w_t g_t with G w = w^(-1/alpha) (exact Newton)",
            "Ban & Ji, ICML 2024 (FairGrad)",
            reference="OptMN-Lab/fairgrad's equation, as TorchJD's aggregation/_fairgrad.py",
            differs="G w = w^(-1/alpha) is solved exactly by a damped Newton method (the authors: SciPy's least_squares)",
        ),
        MethodInfo(
            "config",
            "ConfigOptions",
            "conflict-free update: equal cosine with every task gradient (pseudo-inverse of the unit gradients), "
            "length the sum of their projections",
            "Liu, Chu & Thuerey, ICLR 2025 (ConFIG)",
            reference="tum-pbs/ConFIG, conflictfree/grad_operator.py `ConFIG_update` (as TorchJD's aggregation/_config.py)",
            differs="cosine-matrix eigenvalues below max(T eps, 1e-10) of the largest count as zero (gradients within "
            "~1e-5 of linear dependence), where the authors' lstsq amplifies the round-off direction",
        ),
        MethodInfo(
            "excess-mtl",
            "ExcessMtlOptions",
            "weights by exponentiated steps on the tasks' excess risks (AdaGrad-scaled squared gradients): sum_t w_t L_t",
            "He et al., ICML 2024 (ExcessMTL)",
            reference="uiuctml/ExcessMTL, LibMTL/LibMTL/weighting/ExcessMTL.py (= LibMTL's weighting/ExcessMTL.py)",
            differs="the weight update runs in log space (the authors' exp overflows to NaN); a task whose first excess "
            "risk is 0 takes its first positive one as E(0); a non-finite step changes no state",
        ),
        MethodInfo(
            "stch",
            "StchOptions",
            "smooth Tchebycheff: T mu logsumexp(log(L_t/n_t)/mu), n set by a log warm-up",
            "Lin et al., ICML 2024 (STCH)",
            reference="Xi-L/STCH, STCH_MTL/LibMTL/weighting/STCH.py = median-research-group/LibMTL, "
            "LibMTL/weighting/STCH.py",
        ),
        MethodInfo(
            "modo",
            "MoDoOptions",
            "double sampling: lambda <- P(lambda - gamma (J_1 J_2^T + rho I) lambda) on two halves of the batch, "
            "update J^T lambda",
            "Chen, Fernando, Ying & Chen, NeurIPS 2023 (MoDo)",
            reference="heshandevaka/Trade-Off-MOL, LibMTL/LibMTL/weighting/MoDo.py (its sum of the two samples halved)",
            samples=2,
            differs="the two samples are the two halves of the step's batch (the authors draw two batches a step)",
        ),
        MethodInfo(
            "sdmgrad",
            "SDMGradOptions",
            "update J^T (w + lambda w~) / (1 + lambda), w by projected SGD on the cross Gram of two halves of the batch, "
            "kept across steps",
            "Xiao, Ban & Ji, NeurIPS 2023 (SDMGrad)",
            reference="OptMN-Lab/sdmgrad, methods/weight_methods.py `SDMGrad` (lamda 0.3 of experiments/nyuv2/run.sh)",
            samples=2,
            differs="its samples are the two halves of the step's batch and the batch itself (the authors draw three "
            "batches, and fill one tensor three times); heads get the batch's own gradient (the authors' add the "
            "three samples')",
        ),
    )
}


class Registry(Mapping[str, MethodInfo]):
    """The built-in methods, then the installed plug-ins (entry points of group `mtlcli.methods`).

    A built-in name is answered without reading any entry point; the plug-ins' names are read (not imported)
    when an unknown name is asked for or the registry is listed, and a plug-in is loaded when its entry is
    first read. A plug-in that fails to load is one MtlError naming its entry point; one named like a built-in
    method is refused the same way.
    """

    def __init__(self, built_in: dict[str, MethodInfo]) -> None:
        self._built_in = built_in
        self._entry_points: dict[str, Any] | None = None
        self._loaded: dict[str, MethodInfo] = {}

    def reload(self) -> None:
        """Forget the plug-ins read so far (after installing one in this process)."""
        self._entry_points = None
        self._loaded.clear()

    def _plugins(self) -> dict[str, Any]:
        if self._entry_points is None:
            found = plugins.method_entry_points()
            clash = sorted(set(found) & set(self._built_in))
            if clash:
                entry = found[clash[0]]
                raise MtlError(
                    f"method plug-in {entry.name!r} ({plugins.describe(entry)}) is named like a built-in method",
                    hint="rename its entry point in the plug-in's package (group mtlcli.methods)",
                )
            self._entry_points = found
        return self._entry_points

    def __getitem__(self, name: str) -> MethodInfo:
        if name in self._built_in:
            return self._built_in[name]
        if name not in self._loaded:
            entry = self._plugins().get(name) if isinstance(name, str) else None
            if entry is None:
                raise KeyError(name)
            spec = plugins.load_method_plugin(entry)
            self._loaded[name] = MethodInfo(
                name,
                "",
                spec.summary,
                spec.paper,
                reference=spec.reference,
                plugin=spec.source,
                plugin_options=spec.options,
                plugin_build=spec.build,
            )
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._built_in or (isinstance(name, str) and name in self._plugins())

    def __iter__(self) -> Iterator[str]:
        return iter([*self._built_in, *sorted(self._plugins())])

    def __len__(self) -> int:
        return len(self._built_in) + len(self._plugins())


REGISTRY = Registry(BUILT_IN)


# where the default takes its task gradients, for the methods without a `level` option that take any
GRADIENT_LEVELS = {"pcgrad": "shared", "graddrop": "representation", "gradnorm": "last shared layer", "imtl": "representation"}


def default_level(name: str) -> str:
    """Where method `name` takes its task gradients with no options: `shared` (dL_t/dtheta of the shared
    parameters, T backwards), `representation` (dL_t/dz, one encoder backward), `last shared layer` (GradNorm),
    or `losses` for a loss weighting (no per-task gradient; `-` for the single-task baseline)."""
    info = REGISTRY[name]
    if info.fixed_level_of:
        return info.fixed_level_of[1]
    if name == "single-task":
        return "-"
    return info.published_level() or GRADIENT_LEVELS.get(name, "losses")


def unknown_method(name: str) -> MtlError:
    return MtlError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(REGISTRY)}")


def option_problems(name: str, options: dict[str, Any]) -> list[Problem]:
    """Problems with `options` for method `name`, as (key path, message) pairs; empty when valid."""
    from mtlcli import schema

    if name not in REGISTRY:
        raise unknown_method(name)
    info = REGISTRY[name]
    known = sorted(info.options.model_fields)

    def unknown_key(key: str) -> str:
        if info.fixed_level_of and key in REGISTRY[info.fixed_level_of[0]].options.model_fields:
            return fixed_level_problem(name, *info.fixed_level_of, key)
        users = [m for m, i in REGISTRY.items() if key in i.options.model_fields]
        where = f"applies to {', '.join(users)}" if users else "is not an option of any method"
        close = schema.closest(key, known)
        valid = f"did you mean {close!r}?" if close else f"options of {name}: {', '.join(known) or 'none'}"
        return f"does not apply to {name}: it {where} ({valid})"

    return schema.option_problems(info.options, options, unknown_key)


def fixed_level_problem(name: str, general: str, level: str, key: str) -> str:
    """Why `key`, an option of method `general`, does not apply to `name`, which is `general` fixed at `level`."""
    other = "representation" if level == "shared" else "shared"
    fixed = f"{name} is {general} at level {level}"
    if key == "level":
        return f"does not apply to {name}: {fixed}; for level {other} use --method {general} with level: {other}"
    return f"does not apply to {name}: {fixed}, where {key} means nothing; it applies to {general} at level {other}"


def needs_independent_networks(name: str) -> bool:
    """Whether method `name` trains one network per task (the single-task baseline)."""
    return name in REGISTRY and REGISTRY[name].independent_networks
