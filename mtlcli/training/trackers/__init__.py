"""Experiment trackers: `output.trackers: [tensorboard, mlflow]` logs each epoch to them as well.

Each tracker is a `Callback` in its own module (`tensorboard_tracker`, `mlflow_tracker`) and logs, per epoch,
what metrics.jsonl's line holds (`epoch_scalars`: losses, weights, metrics, step times, at step = the epoch)
and, once per run, the resolved recipe (`recipe_params`: flattened keys). `build_trackers` makes them from a
recipe after checking that their packages import (optional extras), so a missing one is one error before
anything is built or trained. Only rank 0 gets them: they go to the trainer as extra callbacks, and
`default_callbacks` keeps the rule of who writes.

Neither tracker package is imported here: each module imports its own when the run starts.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mtlcli.errors import MtlError
from mtlcli.names import TRACKER_NAMES, check_implemented

if TYPE_CHECKING:
    from mtlcli.recipe import Recipe
    from mtlcli.training.callbacks import Callback



def _import_tensorboard() -> None:
    import tensorboard  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401


def _import_mlflow() -> None:
    import mlflow  # noqa: F401


# tracker -> importing the packages it needs (static imports: the check); each tracker's extra is named after it
PACKAGES: dict[str, tuple[str, Callable[[], None]]] = {
    "tensorboard": ("tensorboard", _import_tensorboard),
    "mlflow": ("mlflow", _import_mlflow),
}
check_implemented("trackers", TRACKER_NAMES, PACKAGES)
_UNSAFE = re.compile(r"[^\w\-. /]")  # what MLflow allows in a metric or parameter name


def require(names: list[str]) -> None:
    """Raise one MtlError naming the extras to install when a tracker's package does not import."""
    missing, broken = [], []
    for name in names:
        problem = _import_problem(*PACKAGES[name])
        if problem == "missing":
            missing.append(name)
        elif problem is not None:
            broken.append(problem)
    if missing:
        extras = ",".join(missing)
        raise MtlError(
            f"output.trackers: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed "
            f"(the optional extra{'s' if len(missing) > 1 else ''} mtlcli[{extras}])",
            hint=f"pip install 'mtlcli[{extras}]', or remove {' and '.join(missing)} from output.trackers",
        )
    if broken:
        raise MtlError(f"output.trackers: {'; '.join(broken)}", hint="reinstall it, or remove it from output.trackers")


def _import_problem(module: str, import_it: Callable[[], None]) -> str | None:
    """None when `module` imports; `missing` when it is not installed; else what goes wrong."""
    try:
        import_it()
    except ImportError:
        return "missing"
    except Exception as exc:  # installed but unusable (e.g. with a protobuf it does not work with)
        first = str(exc).splitlines()[0][:160] if str(exc) else ""
        return f"{module} fails to import ({type(exc).__name__}: {first})"
    return None


def build_trackers(recipe: Recipe) -> list[Callback]:
    """The recipe's trackers, in its order; MtlError (before anything is built) when a package is missing."""
    names = list(recipe.output.trackers)
    require(names)
    makers: dict[str, Callable[[], Callback]] = {}
    for name in names:
        if name == "tensorboard":
            from mtlcli.training.trackers.tensorboard_tracker import TensorBoardTracker

            makers[name] = TensorBoardTracker
        else:
            from mtlcli.training.trackers.mlflow_tracker import MlflowTracker

            makers[name] = MlflowTracker
    return [makers[name]() for name in names]


def epoch_scalars(record: dict[str, Any]) -> dict[str, float]:
    """metrics.jsonl's line as flat scalars, the key path joined by '/' (`train/loss/left`, `alphas/left`,
    `val/left/accuracy`, `val_score`, `step_seconds_median`, `method_stats/...`); not `epoch` (it is the step),
    nor what is not a finite number (a median of no steps is null)."""
    return {
        _UNSAFE.sub("_", key): float(value)
        for key, value in _flatten(record, "/").items()
        if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def recipe_params(recipe: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe as flat keys (`optim.lr`, `tasks.0.name`, `method.normalization`): a list of
    sections by index, a list of values (`tasks.0.metrics`, `output.trackers`) as its JSON text."""
    return {_UNSAFE.sub("_", key): value for key, value in _flatten(recipe, ".").items()}


def param_text(value: Any) -> str:
    """A parameter's value as text: a string as it is, anything else as JSON (`0.05`, `true`, `null`, `[1, 2]`)."""
    return value if isinstance(value, str) else json.dumps(value)


def _flatten(node: Any, sep: str, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, sep, f"{prefix}{key}{sep}"))
        return out
    if isinstance(node, list) and any(isinstance(v, dict | list) for v in node):
        out = {}
        for i, value in enumerate(node):
            out.update(_flatten(value, sep, f"{prefix}{i}{sep}"))
        return out
    if isinstance(node, list):
        return {prefix[: -len(sep)]: json.dumps(node)}
    return {prefix[: -len(sep)]: node}
