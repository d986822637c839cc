"""The training package: importing it (and runs) costs no torch; the callback interface forwards every hook, and
rank 0 alone gets the callbacks that write or print."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mtlcli.distributed import Distributed
from mtlcli.training.callbacks import (
    SIGNAL_AT_ENV,
    TRACE_ENV,
    Callback,
    CallbackList,
    Checkpoints,
    ConsoleLog,
    MetricsLog,
    RunDirectory,
    SignalAtStep,
    StepTrace,
    default_callbacks,
)
from tests.conftest import ROOT

HOOKS = sorted(name for name, _ in inspect.getmembers(Callback, inspect.isfunction) if name.startswith("on_"))


def test_importing_the_package_and_runs_imports_no_torch() -> None:
    code = "import sys, mtlcli.training, mtlcli.runs; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_every_hook_is_a_no_op_and_the_list_forwards_each_in_order() -> None:
    assert len(HOOKS) >= 9
    calls: list[tuple[str, str]] = []

    class Recorder(Callback):
        def __init__(self, tag: str) -> None:
            self.tag = tag

    for hook in HOOKS:  # a recorder overriding every hook
        setattr(Recorder, hook, lambda self, *args, _hook=hook: calls.append((self.tag, _hook)))
    callbacks = CallbackList([Callback(), Recorder("a"), Recorder("b")])
    for hook in HOOKS:
        arity = len(inspect.signature(getattr(Callback, hook)).parameters) - 1
        assert getattr(Callback(), hook)(*[None] * arity) is None
        getattr(callbacks, hook)(*[None] * arity)
    assert calls == [(tag, hook) for hook in HOOKS for tag in ("a", "b")]


def test_rank_0_alone_writes_and_prints(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    console = Console(quiet=True)
    tracker = Callback()
    monkeypatch.delenv(TRACE_ENV, raising=False)
    monkeypatch.delenv(SIGNAL_AT_ENV, raising=False)
    kinds = [type(c) for c in default_callbacks(Distributed(), console, True, [tracker])]
    assert kinds == [RunDirectory, MetricsLog, Checkpoints, ConsoleLog, Callback]  # metrics.jsonl before checkpoints
    assert default_callbacks(Distributed(rank=1, world=2), console, True, [tracker]) == []
    monkeypatch.setenv(TRACE_ENV, str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv(SIGNAL_AT_ENV, "3")
    on_rank_0: list[Any] = default_callbacks(Distributed(rank=0, world=2), console, True)
    assert [type(c) for c in on_rank_0[-2:]] == [StepTrace, SignalAtStep]
    assert default_callbacks(Distributed(rank=1, world=2), console, True) == []
