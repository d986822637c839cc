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
from mtlcli.methods.base import Method, Options, Step
from mtlcli.methods.mgda_ub import MgdaOptions, MgdaUb
from mtlcli.methods.min_norm import SOLVERS, min_norm
from mtlcli.methods.uniform import Uniform, UniformOptions

__all__ = ["REGISTRY", "SOLVERS", "Method", "MethodInfo", "Step", "build", "min_norm", "option_problems"]


@dataclass(frozen=True)
class MethodInfo:
    """A registry entry: how to build the method, its options schema, and what to show users."""

    name: str
    factory: Callable[[Any], Method]
    options: type[Options]
    summary: str
    paper: str


REGISTRY: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo("uniform", Uniform, UniformOptions, "mean of the task losses", "baseline"),
        MethodInfo(
            "mgda-ub",
            MgdaUb,
            MgdaOptions,
            "min-norm point of the task gradients w.r.t. the shared representation (one encoder backward)",
            "Sener & Koltun, NeurIPS 2018",
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


def build(name: str, **options: Any) -> Method:
    """Build the method `name` with validated `options`."""
    problems = option_problems(name, options)
    if problems:
        text = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
        raise MtlError(f"invalid options for method {name}: {text}")
    info = REGISTRY[name]
    return info.factory(info.options(**options))
