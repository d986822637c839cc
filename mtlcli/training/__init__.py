"""Training: a recipe in, a run directory out (`Trainer`), one module per job.

`build` turns a recipe into device, data, model, method and optimiser; `loop` is the training loop;
`callbacks` is everything around it (run directory, metrics.jsonl, checkpoints, console, trackers);
`checkpoint` what last.pt / best.pt hold; `guard` the NaN/inf watch; `precision` autocast and fp16's loss
scaler; `signals` stopping on SIGINT/SIGTERM; `timing` step times; `summary` summary.json; `evaluation`
per-task metrics of a split; `trackers` the experiment trackers (TensorBoard, MLflow), one module each.

The public names below are imported on first use (PEP 562): importing the package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mtlcli.training.callbacks import Callback
    from mtlcli.training.checkpoint import load_checkpoint, save_checkpoint
    from mtlcli.training.guard import NonFiniteError, NonFiniteGuard
    from mtlcli.training.loop import Trainer
    from mtlcli.training.signals import TrainingInterrupted

__all__ = [
    "Callback",
    "NonFiniteError",
    "NonFiniteGuard",
    "Trainer",
    "TrainingInterrupted",
    "load_checkpoint",
    "save_checkpoint",
]


def __getattr__(name: str) -> Any:
    """The public names, from their modules on first use."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from mtlcli.training import callbacks, checkpoint, guard, loop, signals

    home = {
        "Callback": callbacks,
        "NonFiniteError": guard,
        "NonFiniteGuard": guard,
        "Trainer": loop,
        "TrainingInterrupted": signals,
        "load_checkpoint": checkpoint,
        "save_checkpoint": checkpoint,
    }
    return getattr(home[name], name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
