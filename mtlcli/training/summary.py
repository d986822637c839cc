"""summary.json: what a finished run reports (its best epoch on validation, timings, versions)."""

from __future__ import annotations

import platform
import statistics
from typing import TYPE_CHECKING, Any

import torch

from mtlcli import __version__
from mtlcli.models import count_parameters
from mtlcli.training.build import input_normalization, input_shape

if TYPE_CHECKING:
    from mtlcli.training.loop import Trainer


def build_summary(t: Trainer) -> dict[str, Any]:
    """summary.json's content, from trainer `t` at the end of training and its epochs' records."""
    records = t.records
    best = next(rec for rec in records if rec["epoch"] == t.best_epoch)
    return {
        "status": "complete",
        "method": t.recipe.method.name,
        "method_options": t.recipe.method.options,
        "dataset": t.recipe.data.prepared or t.recipe.data.name,
        "seed": t.recipe.train.seed,
        "tasks": [task.name for task in t.tasks],
        "encoder": t.recipe.model.encoder,
        "input_shape": list(input_shape(t.dataset)),
        "normalization": dict(zip(("mean", "std"), input_normalization(t.recipe, t.dataset), strict=True)),
        "device": str(t.device),
        "epochs": t.recipe.train.epochs,
        "skipped_steps": t.skipped_steps,
        "best_epoch": t.best_epoch,
        "selection": "best mean validation " + "/".join(dict.fromkeys(task.metrics[0] for task in t.tasks)),
        "val": best["val"],
        "test": best["test"],
        "total_seconds": t.elapsed,
        "train_seconds": sum(rec["epoch_seconds"] for rec in records),
        "step_seconds_median": statistics.median(t.all_step_times) if t.all_step_times else None,
        "step_seconds_mean": statistics.fmean(t.all_step_times) if t.all_step_times else None,
        "parameters": count_parameters(t.model),
        "versions": {
            "mtlcli": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
