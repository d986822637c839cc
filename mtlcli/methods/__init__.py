"""Multi-task weighting methods: one module each, listed in `registry`, options in `options`.

Importing this package is cheap (no torch, no pydantic): `REGISTRY`, `option_problems` and `needs_independent_networks`
read the registry and the options schemas; `build` imports the one implementation it builds. The torch
side (`Method`, `Step`) is loaded on first use; the min-norm solver is `mtlcli.methods.min_norm.min_norm`.

Public API::

    from mtlcli.methods import build
    method = build("mgda-ub", normalization="l2")
    weights = method.weights(losses, gram)      # Gram-based methods
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mtlcli.errors import MtlError
from mtlcli.methods.registry import REGISTRY, MethodInfo

if TYPE_CHECKING:
    from mtlcli.methods.base import Method, Step
    from mtlcli.methods.options import SOLVERS
    from mtlcli.schema import Problem

__all__ = [
    "REGISTRY",
    "SOLVERS",
    "Method",
    "MethodInfo",
    "Step",
    "build",
    "needs_independent_networks",
    "option_problems",
]

_LAZY = {"Method": "mtlcli.methods.base", "Step": "mtlcli.methods.base", "SOLVERS": "mtlcli.methods.options"}


def __getattr__(name: str) -> Any:
    """The torch side of the public API (and the solver names), imported on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _unknown_method(name: str) -> MtlError:
    return MtlError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(REGISTRY)}")


def option_problems(name: str, options: dict[str, Any]) -> list[Problem]:
    """Problems with `options` for method `name`, as (key path, message) pairs; empty when valid."""
    from mtlcli import schema

    if name not in REGISTRY:
        raise _unknown_method(name)
    info = REGISTRY[name]
    known = sorted(info.options.model_fields)

    def unknown_key(key: str) -> str:
        users = [m for m, i in REGISTRY.items() if key in i.options.model_fields]
        where = f"applies to {', '.join(users)}" if users else "is not an option of any method"
        close = schema.closest(key, known)
        valid = f"did you mean {close!r}?" if close else f"options of {name}: {', '.join(known) or 'none'}"
        return f"does not apply to {name}: it {where} ({valid})"

    return schema.option_problems(info.options, options, unknown_key)


def needs_independent_networks(name: str) -> bool:
    """Whether method `name` trains one network per task (the single-task baseline)."""
    return name in REGISTRY and REGISTRY[name].independent_networks


def build(name: str, **options: Any) -> Method:
    """Build the method `name` with validated `options` (imports its implementation)."""
    problems = option_problems(name, options)
    if problems:
        text = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
        raise MtlError(f"invalid options for method {name}: {text}")
    info = REGISTRY[name]
    return info.load()(info.options(**options))
