"""Helpers of the reliability tests: tiny recipes, in-process hooks, bitwise run comparison."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from mtlcli.recipe import validate
from mtlcli.training import Trainer, TrainingInterrupted, load_checkpoint
from tests.conftest import ROOT, load_shipped_recipe

TIMING_KEYS = {"epoch_seconds", "eval_seconds", "step_seconds_mean", "step_seconds_median"}


def recipe(data_dir: Path, out: Path, **train: Any) -> dict[str, Any]:
    """The shipped multifashion recipe on the tiny data: 108 training images, batch 32 (4 steps)."""
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    raw["data"]["dir"] = str(data_dir)
    raw["train"].update({"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "device": "cpu", **train})
    raw["output"]["dir"] = str(out)
    return raw


def trainer(raw: dict[str, Any]) -> Trainer:
    return Trainer(validate(copy.deepcopy(raw)), console=Console(stderr=True, quiet=True), show_progress=False)


def signal_at_step(t: Trainer, step: int, signum: int = signal.SIGINT) -> None:
    """Deliver `signum` to this process during the forward pass of training step `step` (1-based)."""

    def hook(module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if module.training and t.global_step + 1 == step:
            signal.raise_signal(signum)

    t.model.register_forward_hook(hook)


def interrupted_then_resumed(raw: dict[str, Any], step: int, signum: int = signal.SIGINT) -> tuple[Trainer, str]:
    """Train `raw`, stopped by `signum` at step `step`, then resumed to the end: the resumed trainer and the stop's message."""
    first = trainer(raw)
    signal_at_step(first, step, signum)
    with pytest.raises(TrainingInterrupted) as info:
        first.run()
    assert first.run_dir is not None
    resumed = Trainer.resume(first.run_dir, show_progress=False)
    resumed.run()
    return resumed, info.value.message


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock fields (everything else must match bitwise)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics (exact floats), same final model, optimiser and method state, bit for bit."""
    assert metrics(a) == metrics(b)
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    for key in ("val", "test", "best_epoch", "skipped_steps"):
        assert sa[key] == sb[key], key
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["model"].keys() == cb["model"].keys()
    for name in ca["model"]:
        assert torch.equal(ca["model"][name], cb["model"][name]), name
    for slot, state in ca["optimizer"]["state"].items():
        for key, value in state.items():
            other = cb["optimizer"]["state"][slot][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert ca["global_step"] == cb["global_step"]


def cli_env() -> dict[str, str]:
    """Environment of `python -m mtlcli` subprocesses: this checkout first, one thread (as in-process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTL_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mtlcli", *args],
        cwd=ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60.0) -> list[str]:
    """Read the process's stderr until a line contains `needle`; return the lines read."""
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line)
        if needle in line:
            return lines
        assert time.monotonic() < deadline, f"no {needle!r} within {timeout}s: {''.join(lines)}"
    raise AssertionError(f"process ended before {needle!r}: {''.join(lines)}")
