"""Every method's implementation by registry name, and `build`: the torch side of the method registry.

`mtlcli.methods.registry` holds what listing and validation need (names, options, papers) without torch;
this module imports every method. A test checks that both list the same built-in names; a plug-in method
(entry point of group mtlcli.methods) is built by its own `build` (`build_plugin`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtlcli.errors import MtlError
from mtlcli.methods.aligned_mtl import AlignedMtl
from mtlcli.methods.base import Method
from mtlcli.methods.cagrad import Cagrad
from mtlcli.methods.config import Config
from mtlcli.methods.db_mtl import DbMtl
from mtlcli.methods.dualproj import DualProj
from mtlcli.methods.dwa import Dwa
from mtlcli.methods.excess_mtl import ExcessMtl
from mtlcli.methods.fairgrad import FairGrad
from mtlcli.methods.famo import Famo
from mtlcli.methods.gls import Gls
from mtlcli.methods.graddrop import GradDrop
from mtlcli.methods.gradnorm import GradNorm
from mtlcli.methods.gradvac import GradVac
from mtlcli.methods.grid import sweep_only
from mtlcli.methods.imtl import Imtl
from mtlcli.methods.imtl_g import ImtlG, ImtlGExact
from mtlcli.methods.imtl_l import ImtlL
from mtlcli.methods.mgda import Mgda
from mtlcli.methods.mgda_ub import MgdaUb
from mtlcli.methods.mgda_unconstrained import MgdaUnconstrained
from mtlcli.methods.moco import Moco
from mtlcli.methods.modo import MoDo
from mtlcli.methods.nash_mtl import NashMtl
from mtlcli.methods.pcgrad import PcGrad
from mtlcli.methods.registry import REGISTRY, MethodInfo, option_problems
from mtlcli.methods.rlw import Rlw
from mtlcli.methods.sdmgrad import SDMGrad
from mtlcli.methods.single_task import SingleTask
from mtlcli.methods.static import Static
from mtlcli.methods.stch import Stch
from mtlcli.methods.uncertainty import Uncertainty
from mtlcli.methods.uniform import Uniform
from mtlcli.methods.upgrad import UPGrad

IMPLEMENTATIONS: dict[str, Callable[[Any], Method]] = {
    "single-task": SingleTask,
    "uniform": Uniform,
    "static": Static,
    "grid": sweep_only,
    "uncertainty": Uncertainty,
    "gradnorm": GradNorm,
    "mgda": Mgda,
    "mgda-ub": MgdaUb,
    "mgda-unconstrained": MgdaUnconstrained,
    "imtl-g": ImtlG,
    "imtl-g-exact": ImtlGExact,
    "imtl-l": ImtlL,
    "imtl": Imtl,
    "gls": Gls,
    "pcgrad": PcGrad,
    "famo": Famo,
    "dwa": Dwa,
    "rlw": Rlw,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "cagrad": Cagrad,
    "gradvac": GradVac,
    "graddrop": GradDrop,
    "nash-mtl": NashMtl,
    "db-mtl": DbMtl,
    "moco": Moco,
    "aligned-mtl": AlignedMtl,
    "fairgrad": FairGrad,
    "config": Config,
    "excess-mtl": ExcessMtl,
    "stch": Stch,
    "modo": MoDo,
    "sdmgrad": SDMGrad,
}


def build(name: str, **options: Any) -> Method:
    """Build the method `name` with validated `options`."""
    problems = option_problems(name, options)
    if problems:
        text = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
        raise MtlError(f"invalid options for method {name}: {text}")
    info = REGISTRY[name]
    if name in IMPLEMENTATIONS:
        return IMPLEMENTATIONS[name](info.options(**options))
    return build_plugin(info, info.options(**options))


HOOKS = ("backward", "setup", "parameters", "state_dict", "load_state_dict", "step_skipped", "epoch_stats", "end_epoch",
         "after_update")  # fmt: skip


def build_plugin(info: MethodInfo, options: Any) -> Method:
    """A plug-in's method from its validated options; one MtlError when its `build` does not return a `Method`."""
    assert info.plugin_build is not None
    method = info.plugin_build(options)
    missing = [hook for hook in HOOKS if not callable(getattr(method, hook, None))]
    if missing:
        raise MtlError(
            f"method plug-in {info.name!r} ({info.plugin}): build returned {type(method).__name__}, which lacks "
            f"{', '.join(missing)}",
            hint="subclass mtlcli.methods.base.Stateless (no state) or MethodHooks (with state hooks): see README, Plug-ins",
        )
    return method
