"""Everything around the training loop plugs in through one small interface: `Callback`.

Every hook of `Callback` is a no-op; a callback overrides the ones it needs, and the loop calls each hook
on every callback, in list order (`CallbackList`). The order matters at an epoch's end: metrics.jsonl gets
the epoch's line before last.pt and best.pt are written (resume keeps the lines its checkpoint knows), and
the console line comes last. The hot path stays sync-free: the per-step hooks get device tensors, and
reading them (`.tolist()`) is a host sync, so only opt-in callbacks do (the step trace).

An experiment tracker is one more callback (`mtlcli.training.trackers`: the recipe's `output.trackers`, which
the trainer adds before its `extra_callbacks`): `on_train_start` (the recipe and the run directory),
`on_resume`, `on_epoch_end` (the epoch's record, the line metrics.jsonl gets) and `on_train_end`.

Distributed runs: rank 0 writes the run directory and speaks for every rank. That rule lives here alone, in
`default_callbacks`: the other ranks get no callback, as every one of them writes or prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from mtlcli.distributed import Distributed
from mtlcli.errors import RunError
from mtlcli.io import append_jsonl, write_json_atomic, write_text_atomic
from mtlcli.methods.registry import REGISTRY
from mtlcli.runs import BEST, LAST, METRICS, SUMMARY, RunLock, open_new_run
from mtlcli.training.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from torch import Tensor

    from mtlcli.recipe import Recipe
    from mtlcli.training.loop import Trainer

CONSOLE_TASKS = 4  # more tasks than this: the console shows means instead of one number per task
TRACE_ENV = "MTL_STEP_TRACE"  # a file: rank 0 appends each step's method weights (tests of the distributed run)
SIGNAL_AT_ENV = "MTL_SIGNAL_AT_STEP"  # tests: rank 0 sends itself SIGTERM before this (1-based) step


def run_name(recipe: Recipe) -> str:
    """The method part of a run directory's name: `cagrad`, or `cagrad-representation` for a variant at another
    level than the published method's, so that a listing never passes a variant off as the published method."""
    variant = REGISTRY[recipe.method.name].variant(recipe.method.options)
    return recipe.method.name if variant is None else f"{recipe.method.name}-{variant.partition('=')[2]}"


class Callback:
    """A plug-in of the training loop. Every hook is a no-op; override those you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """`run()` begins, a new run or a resumed one. The first default callback creates (or locks) the
        run directory, so the later ones see `trainer.run_dir`."""

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """`Trainer.resume` restored `state` (last.pt) and `trainer.records` (the epochs it holds)."""

    def on_epoch_start(self, trainer: Trainer, steps: int) -> None:
        """An epoch of `steps` steps starts, or resumes at `trainer.position.batch`."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before a training step (`trainer.global_step` steps are done)."""

    def on_step_end(self, trainer: Trainer, losses: Tensor, weights: Tensor) -> None:
        """After a training step (applied or skipped): its task losses [T] and the method's weights [T], on
        the device (reading them is a host sync)."""

    def on_progress(self, trainer: Trainer, mean_losses: Tensor, mean_weights: Tensor) -> None:
        """Every `REFRESH_EVERY` steps and at an epoch's last: the epoch's running means over applied steps."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        """An epoch ended: `record` is its metrics.jsonl line, `improved` whether it is the best on validation
        so far. `trainer.position` is already the next epoch's start (what a checkpoint taken now holds)."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """A signal stopped training between two steps; `TrainingInterrupted` follows."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """The last epoch ended; `summary` is summary.json's content."""

    def on_exit(self, trainer: Trainer) -> None:
        """Last of all, however `run()` ends: finished, stopped or failed."""


class CallbackList(Callback):
    """The callbacks of a trainer: each hook is called on every one, in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_train_start(self, trainer: Trainer) -> None:
        for c in self.callbacks:
            c.on_train_start(trainer)

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_resume(trainer, state)

    def on_epoch_start(self, trainer: Trainer, steps: int) -> None:
        for c in self.callbacks:
            c.on_epoch_start(trainer, steps)

    def on_step_start(self, trainer: Trainer) -> None:
        for c in self.callbacks:
            c.on_step_start(trainer)

    def on_step_end(self, trainer: Trainer, losses: Tensor, weights: Tensor) -> None:
        for c in self.callbacks:
            c.on_step_end(trainer, losses, weights)

    def on_progress(self, trainer: Trainer, mean_losses: Tensor, mean_weights: Tensor) -> None:
        for c in self.callbacks:
            c.on_progress(trainer, mean_losses, mean_weights)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        for c in self.callbacks:
            c.on_epoch_end(trainer, record, improved)

    def on_interrupt(self, trainer: Trainer) -> None:
        for c in self.callbacks:
            c.on_interrupt(trainer)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        for c in self.callbacks:
            c.on_train_end(trainer, summary)

    def on_exit(self, trainer: Trainer) -> None:
        for c in self.callbacks:
            c.on_exit(trainer)


def default_callbacks(job: Distributed, console: Console, show_progress: bool, extra: Sequence[Callback] = ()) -> list[Callback]:
    """This process's callbacks: on rank 0 the run directory, metrics.jsonl, checkpoints and the console (in
    that order), the test hooks their environment variables ask for, then `extra` (experiment trackers).
    The other ranks of a distributed job get none: rank 0 writes and speaks for every rank."""
    if not job.writer:
        return []
    callbacks: list[Callback] = [RunDirectory(), MetricsLog(), Checkpoints(console), ConsoleLog(console, show_progress)]
    if TRACE_ENV in os.environ:
        callbacks.append(StepTrace(Path(os.environ[TRACE_ENV])))
    if int(os.environ.get(SIGNAL_AT_ENV, "0")):
        callbacks.append(SignalAtStep(int(os.environ[SIGNAL_AT_ENV])))
    return [*callbacks, *extra]


class RunDirectory(Callback):
    """The run directory: created (a new run) and locked while training, summary.json at the end; on resume,
    locked before its files are touched and rid of the temp files of writes a kill -9 cut short."""

    def __init__(self) -> None:
        self.lock: RunLock | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        r = trainer.recipe
        if trainer.run_dir is None:
            self.lock = open_new_run(Path(r.output.dir), run_name(r), r.train.seed, r.dump())
            trainer.run_dir = self.lock.run_dir
        elif self.lock is None:
            self.lock = RunLock(trainer.run_dir).acquire()

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        assert trainer.run_dir is not None
        self.lock = RunLock(trainer.run_dir).acquire()
        for stale in trainer.run_dir.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        assert trainer.run_dir is not None
        write_json_atomic(trainer.run_dir / SUMMARY, summary)

    def on_exit(self, trainer: Trainer) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class MetricsLog(Callback):
    """metrics.jsonl: one line per epoch; on resume, only the epochs the checkpoint holds (lines written after
    it, and a torn last line, are dropped)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        assert trainer.run_dir is not None
        append_jsonl(trainer.run_dir / METRICS, record)

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        assert trainer.run_dir is not None
        write_text_atomic(trainer.run_dir / METRICS, "".join(json.dumps(rec) + "\n" for rec in trainer.records))


class Checkpoints(Callback):
    """last.pt every `train.checkpoint_every` epochs, at the end and when a signal stops training; best.pt
    whenever validation improves. On resume, best.pt is made to agree with the checkpoint resumed from."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        epoch, train = record["epoch"], trainer.recipe.train
        due = epoch % train.checkpoint_every == 0 or epoch == train.epochs
        if not (due or improved):
            return
        state = trainer.checkpoint()
        # last before best: a crash in between leaves a last.pt that knows it is the best (resume re-saves it)
        if due:
            trainer.save(LAST, state)
            trainer.last_saved_epoch = epoch
        if improved:
            trainer.save(BEST, state)

    def on_interrupt(self, trainer: Trainer) -> None:
        pos = trainer.position
        if pos.batch or trainer.last_saved_epoch != pos.epoch - 1:  # unless last.pt already holds this point
            trainer.save(LAST)

    def on_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """A crash may have come between the two saves of an epoch: best.pt is the checkpoint's best."""
        assert trainer.run_dir is not None
        resumed_at = trainer.position.epoch - 1
        try:
            on_disk = int(load_checkpoint(trainer.run_dir / BEST)["position"]["epoch"]) - 1
        except (RunError, KeyError, TypeError, ValueError):
            on_disk = None
        if on_disk == trainer.best_epoch:
            return
        if trainer.best_epoch and trainer.best_epoch == resumed_at:  # the checkpoint itself is the best state
            trainer.save(BEST, state)
        elif on_disk is not None and on_disk > resumed_at:
            self.console.print(
                f"[yellow]note:[/] {BEST} holds epoch {on_disk}, trained after the checkpoint; "
                f"it is replaced when an epoch beats epoch {trainer.best_epoch}"
            )


class ConsoleLog(Callback):
    """The progress bar (running losses and weights) and one line per epoch (validation, time per step)."""

    def __init__(self, console: Console, show_progress: bool) -> None:
        self.console = console
        self.show_progress = show_progress
        self.progress: Progress | None = None
        self.bar: TaskID | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            disable=not self.show_progress,
            transient=False,
        )
        self.progress.start()

    def on_epoch_start(self, trainer: Trainer, steps: int) -> None:
        assert self.progress is not None
        pos = trainer.position
        description = f"epoch {pos.epoch}/{trainer.recipe.train.epochs}"
        self.bar = self.progress.add_task(description, total=steps, completed=pos.batch, status="")

    def on_progress(self, trainer: Trainer, mean_losses: Tensor, mean_weights: Tensor) -> None:
        if self.progress is None or self.bar is None or not self.show_progress:  # the status reads the device
            return
        status = self._status(trainer, mean_losses, mean_weights)
        self.progress.update(self.bar, completed=trainer.position.batch, status=status)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any], improved: bool) -> None:
        mark = " *" if improved else ""
        if record["skipped_steps"]:
            mark += f"  [{record['skipped_steps']} non-finite step(s) skipped]"
        self.console.print(
            f"epoch {record['epoch']}/{trainer.recipe.train.epochs}  val {self._val_line(trainer, record['val'])}  "
            f"({record['epoch_seconds']:.1f}s train, {1000 * (record['step_seconds_median'] or 0):.1f} ms/step){mark}"
        )

    def on_exit(self, trainer: Trainer) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    @staticmethod
    def _status(trainer: Trainer, mean_losses: Tensor, mean_weights: Tensor) -> str:
        losses = mean_losses.tolist()
        weights = mean_weights.tolist()
        if len(trainer.tasks) > CONSOLE_TASKS:  # many tasks: a summary that fits a line
            return f"loss mean {statistics.fmean(losses):.3f} | α min {min(weights):.3f} max {max(weights):.3f}"
        parts = [f"{t.name} {loss:.3f}" for t, loss in zip(trainer.tasks, losses, strict=True)]
        alphas = "/".join(f"{w:.2f}" for w in weights)
        return f"loss {' '.join(parts)} | α {alphas}"

    @staticmethod
    def _val_line(trainer: Trainer, val: dict[str, dict[str, float]]) -> str:
        """Validation metrics for the epoch line: per task, or their mean when there are many tasks."""
        tasks = trainer.tasks
        if len(tasks) <= CONSOLE_TASKS:
            return "  ".join(f"{t.name} {val[t.name][t.metrics[0]]:.2f}" for t in tasks)
        metrics = dict.fromkeys(t.metrics[0] for t in tasks)
        means = [f"mean {m} {statistics.fmean(val[t.name][m] for t in tasks if t.metrics[0] == m):.2f}" for m in metrics]
        return "  ".join(means) + f" ({len(tasks)} tasks)"


class StepTrace(Callback):
    """Appends each step's method weights to a jsonl file (`MTL_STEP_TRACE`: the distributed tests compare runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, trainer: Trainer, losses: Tensor, weights: Tensor) -> None:
        append_jsonl(self.path, {"step": trainer.global_step, "weights": weights.tolist()})


class SignalAtStep(Callback):
    """Sends this process SIGTERM before 1-based step `step` (`MTL_SIGNAL_AT_STEP`: tests of a stopped run)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_start(self, trainer: Trainer) -> None:
        if trainer.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGTERM)
