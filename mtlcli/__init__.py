"""mtl: train and compare multi-task learning methods (MGDA-UB and its rivals).

The Python API (`mtlcli.api`): `train`, `evaluate`, `compare`, `Run`, and `method` / `backward` for a training
loop of your own. They are imported on first use (PEP 562): `import mtlcli` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtlcli.api import Run, backward, compare, evaluate, method, train

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "backward", "compare", "evaluate", "method", "train"]
_API = ("Run", "backward", "compare", "evaluate", "method", "train")


def __getattr__(name: str) -> Any:
    """The Python API, from `mtlcli.api` on first use."""
    if name in _API:
        from mtlcli import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
