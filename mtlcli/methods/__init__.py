"""Multi-task weighting methods: one module each, listed in `registry`, options in `options`.

Importing this package is cheap (no torch, no pydantic): `REGISTRY`, `option_problems` and
`needs_independent_networks` come from the registry; `build` (which imports every implementation, see
`implementations`), `Method`, `Step` and `SOLVERS` are loaded on first use. The min-norm solver is
`mtlcli.methods.min_norm.min_norm`.

Public API::

    from mtlcli.methods import build
    method = build("mgda-ub", normalization="l2")
    weights = method.weights(losses, gram)      # Gram-based methods
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtlcli.methods.registry import REGISTRY, MethodInfo, needs_independent_networks, option_problems

if TYPE_CHECKING:
    from mtlcli.methods.base import Method, Step
    from mtlcli.methods.implementations import build
    from mtlcli.methods.options import SOLVERS

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


def __getattr__(name: str) -> Any:
    """The torch side of the public API (and the solver names), imported on first use (PEP 562)."""
    if name == "build":
        from mtlcli.methods.implementations import build

        return build
    if name in ("Method", "Step"):
        from mtlcli.methods import base

        return getattr(base, name)
    if name == "SOLVERS":
        from mtlcli.methods.options import SOLVERS

        return SOLVERS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
