"""Checkpoints: what `last.pt` and `best.pt` hold, how they are written and read back.

Reliability: `last.pt` (every `train.checkpoint_every` epochs, at the end and on SIGINT/SIGTERM) holds
everything needed to continue bitwise-identically on the CPU: model, optimiser, scheduler and method state,
fp16's loss scaler, every random generator, where training is (`Position`, mid-epoch too) and the loop's
bookkeeping. Writes are atomic (temp file, fsync, rename); reads are `weights_only` (no pickled code runs).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mtlcli.errors import RunError
from mtlcli.io import atomic_open

if TYPE_CHECKING:
    from mtlcli.training.loop import Trainer

CHECKPOINT_FORMAT = 1


@dataclass
class Position:
    """Where training is: the next epoch to run and, mid-epoch, the batch order and progress."""

    epoch: int = 1
    batch: int = 0
    perm: torch.Tensor | None = None
    loss_sum: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None
    step_times: list[float] = field(default_factory=list)
    epoch_seconds: float = 0.0
    skipped: int = 0
    bounds: list[int] | None = None  # multi-input: where each step's rows start in `perm` (its steps' sizes vary)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "perm": self.perm,
            "loss_sum": self.loss_sum,
            "weight_sum": self.weight_sum,
            "step_times": list(self.step_times),
            "epoch_seconds": self.epoch_seconds,
            "skipped": self.skipped,
            "bounds": self.bounds,
        }

    @classmethod
    def from_state_dict(cls, pos: dict[str, Any], device: torch.device) -> Position:
        return cls(
            epoch=int(pos["epoch"]),
            batch=int(pos["batch"]),
            perm=pos["perm"].to(device) if pos["perm"] is not None else None,
            loss_sum=pos["loss_sum"].to(device) if pos["loss_sum"] is not None else None,
            weight_sum=pos["weight_sum"].to(device) if pos["weight_sum"] is not None else None,
            step_times=list(pos["step_times"]),
            epoch_seconds=float(pos["epoch_seconds"]),
            skipped=int(pos.get("skipped", 0)),
            bounds=[int(b) for b in pos["bounds"]] if pos.get("bounds") is not None else None,
        )


def rng_state(shuffle: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every generator a method or the loop may draw from, as tensors and plain lists/ints
    (what `torch.load(weights_only=True)` accepts)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(rng: dict[str, Any], shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    shuffle.set_state(rng["shuffle"])
    if "python" in rng:
        py = rng["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "numpy" in rng:
        n = rng["numpy"]
        keys = np.array(n["keys"], dtype=np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


def training_state(t: Trainer) -> dict[str, Any]:
    """The checkpoint of trainer `t` (format `CHECKPOINT_FORMAT`)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "recipe": t.recipe.dump(),
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "method": t.method.state_dict(),
        "rng": rng_state(t.shuffle, t.device),
        "precision": t.precision.state_dict(),  # fp16's loss scaler ({} otherwise)
        "position": t.position.state_dict(),
        **({"streams": t.streams.state_dict()} if t.streams is not None else {}),  # multi-input: each task's place
        "best_score": t.best_score,
        "best_epoch": t.best_epoch,
        "global_step": t.global_step,
        "skipped_steps": t.skipped_steps,
        "all_step_times": list(t.all_step_times),
        "elapsed": t.elapsed,
    }


def restore_training_state(t: Trainer, state: dict[str, Any]) -> None:
    """Put checkpoint `state` back into trainer `t` (raises what torch raises when it does not fit)."""
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.method.load_state_dict(state["method"])
    t.precision.load_state_dict(state.get("precision", {}))
    set_rng_state(state["rng"], t.shuffle, t.device)
    t.position = Position.from_state_dict(state["position"], t.device)
    if t.streams is not None:
        t.streams.load_state_dict(state["streams"])
    t.best_score = float(state["best_score"])
    t.best_epoch = int(state["best_epoch"])
    t.global_step = int(state["global_step"])
    t.skipped_steps = int(state.get("skipped_steps", 0))
    t.last_saved_epoch = t.position.epoch - 1
    t.all_step_times = list(state["all_step_times"])
    t.elapsed = float(state["elapsed"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, rename: a crash never leaves a torn checkpoint."""
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (weights_only: no pickled code runs); RunError if missing or corrupt."""
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise RunError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not an mtl checkpoint")
    position = state.get("position")
    if not isinstance(state.get("model"), dict) or not isinstance(position, dict) or "epoch" not in position:
        raise RunError(f"{path} is not a complete mtl checkpoint (no model or position)")
    return state
