"""The one training loop every method shares.

The trainer owns data, model, optimiser and bookkeeping; the method (held, not inherited) turns the
per-task losses of each step into parameter gradients. Data lives on the device as tensors; the hot
path has no per-step host sync (losses and weights accumulate on the device, the progress bar reads
them every `REFRESH_EVERY` steps).

Reliability: `last.pt` (every `train.checkpoint_every` epochs, at the end and on SIGINT/SIGTERM)
holds everything needed to continue bitwise-identically on the CPU; `NonFiniteGuard` stops (or skips)
on NaN/inf losses and gradients; `train.deterministic` turns on deterministic algorithms.

Precision (`train.precision`, mtlcli.training.precision): the forward and the losses run under autocast, the
method's step outside it; under fp16 the loss scaler unscales the gradients before the guard, which skips an
overflowed step. `train.channels_last` and `train.compile` change how the model runs, not what it computes.

Everything around the loop (the run directory, metrics.jsonl, checkpoints, the console, experiment
trackers) is a callback (`mtlcli.training.callbacks`), which is also where "rank 0 writes" is decided.
"""

from __future__ import annotations

import math
import signal
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from mtlcli import distributed, methods
from mtlcli.augment import build_augment
from mtlcli.data.device import EpochPlan, Feed
from mtlcli.errors import RunError
from mtlcli.methods.base import LossesOn, Method, Step
from mtlcli.recipe import Recipe, validate
from mtlcli.runs import LAST, read_run
from mtlcli.training.build import (
    augmentation_of,
    check_batches,
    check_distributable,
    check_execution,
    check_multi_input,
    device_splits,
    enable_determinism,
    load_dataset,
    make_model,
    make_optimizer,
    make_scheduler,
    multi_input_streams,
    prepare_model,
    resolve_device,
    seed_everything,
    tasks_of,
    training_steps,
)
from mtlcli.training.callbacks import Callback, CallbackList, default_callbacks
from mtlcli.training.checkpoint import Position, load_checkpoint, restore_training_state, save_checkpoint, training_state
from mtlcli.training.evaluation import evaluate, selection_score
from mtlcli.training.guard import NonFiniteError, NonFiniteGuard
from mtlcli.training.multi_input import TaskStreams, task_shard
from mtlcli.training.precision import Precision
from mtlcli.training.signals import StopRequest, TrainingInterrupted
from mtlcli.training.summary import build_summary
from mtlcli.training.timing import StepTimer
from mtlcli.training.trackers import build_trackers

REFRESH_EVERY = 50


@dataclass
class Trainer:
    """Train `recipe` into a run directory; `resume` continues one from its last checkpoint.

    The recipe's experiment trackers (`output.trackers`), then `extra_callbacks`, run after the default
    callbacks, on rank 0 (`default_callbacks`).
    """

    recipe: Recipe
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    run_dir: Path | None = None
    extra_callbacks: Sequence[Callback] = ()

    def __post_init__(self) -> None:
        r = self.recipe
        trackers = build_trackers(r)  # a tracker's missing package: one error, before anything is set up
        self.job, device_spec = distributed.setup_from_environment(r.train.device)
        self.device = resolve_device(device_spec)
        check_execution(r, self.device)  # fp16 without CUDA, compile without a compiler: before anything is loaded
        check_multi_input(r)  # refused before loading (the representation level on a multi-input dataset)
        if self.job.active:
            check_distributable(r, self.job)
        extra = [*trackers, *self.extra_callbacks]
        self.callbacks = CallbackList(default_callbacks(self.job, self.console, self.show_progress, extra))
        if r.train.deterministic:
            enable_determinism(self.device)
        self.dataset = load_dataset(r)
        self.tasks = tasks_of(r, self.dataset)
        seed_everything(r.train.seed)
        self.model = prepare_model(make_model(r, self.dataset).to(self.device), r)
        self.precision = Precision(r.train.precision, self.device)
        self.method: Method = methods.build(r.method.name, **r.method.options)
        self.method.setup(len(self.tasks), self.device)
        self.optimizer = make_optimizer(r, list(self.model.parameters()), self.method.parameters())
        self.scheduler = make_scheduler(r, self.optimizer)
        named = [*self.model.named_parameters(), *((f"method.{i}", p) for i, p in enumerate(self.method.parameters()))]
        self.guard = NonFiniteGuard(
            [t.name for t in self.tasks], named, self.device, r.train.on_nonfinite, scaled=self.precision.scaled
        )
        self.splits = device_splits(r, self.dataset, self.device)
        self.streams: TaskStreams | None = multi_input_streams(r, self.dataset, self.tasks, self.splits["train"], self.job)
        if self.job.active and self.streams is None:
            check_batches(len(self.splits["train"]), r.train.batch_size, self.job)
        # this rank's rows of a step: rows r, r + N, ... (multi-input: samples r, r + N, ... of every task)
        self.shard = self.job.shard if self.streams is None else task_shard(self.job, len(self.tasks))
        self.augment = build_augment(augmentation_of(r), self.dataset.target_kinds, r.train.seed, self.device)
        self.shuffle = torch.Generator(device=self.device)
        self.shuffle.manual_seed(r.train.seed)
        self.position = Position()
        self.best_score = -math.inf
        self.best_epoch = 0
        self.global_step = 0
        self.skipped_steps = 0
        self.all_step_times: list[float] = []
        self.elapsed = 0.0
        self.last_saved_epoch = 0  # the epoch whose end last.pt holds (0: none yet; kept by rank 0's Checkpoints)
        self.records: list[dict[str, Any]] = []  # every finished epoch's metrics.jsonl line, resumed ones included

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue from here (mtlcli.training.checkpoint)."""
        return training_state(self)

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        """Write checkpoint `name` (last.pt, best.pt) of the run directory: the one save path (rank 0's callbacks)."""
        assert self.run_dir is not None
        save_checkpoint(self.run_dir / name, state if state is not None else self.checkpoint())

    def restore(self, state: dict[str, Any], source: Path | str = "checkpoint") -> None:
        """Load a checkpoint's state; RunError if it does not fit this recipe's model and method."""
        try:
            restore_training_state(self, state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = next((line for line in lines if not line.endswith(":")), lines[0] if lines else repr(exc))
            raise RunError(f"{source} does not fit this run: {detail[:200]}") from None

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        *,
        console: Console | None = None,
        show_progress: bool = True,
        extra_callbacks: Sequence[Callback] = (),
    ) -> Trainer:
        """A trainer positioned where `run_dir`'s last checkpoint left off."""
        run = read_run(run_dir)
        if run.complete:
            raise RunError(f"{run_dir} has already finished", hint="train a new run, or raise --epochs on a new one")
        recipe = validate(run.recipe, source=str(run_dir / "recipe.yaml"))
        if not (run_dir / LAST).is_file():
            raise RunError(
                f"{run_dir} has no checkpoint to resume from (stopped before its first one was written)",
                hint="train the recipe again: `mtl train " + str(run_dir / "recipe.yaml") + "`",
            )
        state = load_checkpoint(run_dir / LAST)
        trainer = cls(
            recipe,
            console=console or Console(stderr=True),
            show_progress=show_progress,
            run_dir=run_dir,
            extra_callbacks=extra_callbacks,
        )
        trainer.restore(state, run_dir / LAST)
        # the epochs the checkpoint holds: not the lines written after it, nor a torn last line (kill -9)
        trainer.records = [rec for rec in run.metrics if isinstance(rec, dict) and rec.get("epoch", 0) < trainer.position.epoch]
        trainer.callbacks.on_resume(trainer, state)  # rank 0 locks the run directory and makes its files agree
        return trainer

    # ----------------------------------------------------------------- the loop
    def run(self) -> Path:
        """Train to the last epoch (from the current position) and write summary.json."""
        new = self.run_dir is None
        stop = StopRequest()
        try:
            self.callbacks.on_train_start(self)  # rank 0 creates (a new run) and locks the run directory
            if new:  # every rank learns the directory rank 0 created
                self.run_dir = Path(self.job.broadcast_text(str(self.run_dir) if self.run_dir is not None else None))
            with stop.installed():
                while self.position.epoch <= self.recipe.train.epochs:
                    if stop or not self._train_epoch(stop):
                        self._interrupted(stop)
            self.callbacks.on_train_end(self, build_summary(self))
        finally:
            self.callbacks.on_exit(self)
        assert self.run_dir is not None
        return self.run_dir

    def _interrupted(self, stop: StopRequest) -> None:
        """Save where training is (unless the last checkpoint already holds it) and say how to resume."""
        assert self.run_dir is not None
        self._check_finite()
        self.callbacks.on_interrupt(self)
        pos = self.position
        where = f"epoch {pos.epoch}, batch {pos.batch}" if pos.batch else f"the end of epoch {pos.epoch - 1}"
        name = signal.Signals(stop.signal).name if stop.signal is not None else "a signal"
        how = (
            f"torchrun --nproc-per-node N -m mtlcli train --resume {self.run_dir}` (any N), or `mtl train --resume "
            f"{self.run_dir} --nproc N"
            if self.job.active
            else f"mtl train --resume {self.run_dir}"
        )
        raise TrainingInterrupted(
            f"training stopped by {name} at {where}; progress saved in {self.run_dir / LAST}",
            hint=f"resume with `{how}`",
        )

    def _check_finite(self) -> None:
        """Read the device-side non-finite record (CUDA, `stop`); name the last good checkpoint."""
        pos = self.position
        first = self.global_step - pos.batch
        try:
            self.guard.check(lambda step: f"epoch {pos.epoch}, batch {step - first}")
        except NonFiniteError as exc:
            exc.hint = self._nonfinite_hint()
            raise

    def _nonfinite_hint(self) -> str:
        assert self.run_dir is not None
        kept = (
            f"the last good checkpoint, {self.run_dir / LAST} (end of epoch {self.last_saved_epoch}), is kept"
            if self.last_saved_epoch
            else "no checkpoint had been written yet"
        )
        return f"{kept}; lower optim.lr, or set train.on_nonfinite: skip to drop such steps"

    def _train_epoch(self, stop: StopRequest) -> bool:
        """Train from the current position to the epoch's end (True), or until a signal stops it (False)."""
        r, pos, train = self.recipe, self.position, self.splits["train"]
        n, batch_size = len(train), r.train.batch_size
        steps = training_steps(n, batch_size) if self.streams is None else self.streams.steps(batch_size)
        if pos.perm is None:  # a fresh epoch (one resumed mid-way has its order and sums)
            if self.streams is None:
                pos.perm = torch.randperm(n, generator=self.shuffle, device=self.device)
            else:  # multi-input: every task's batches of the epoch, each task on from where it was
                pos.perm, pos.bounds = self.streams.plan(batch_size, steps, self.shuffle)
            pos.loss_sum = torch.zeros(len(self.tasks), device=self.device)
            pos.weight_sum = torch.zeros(len(self.tasks), device=self.device)
            pos.step_times = []
            pos.epoch_seconds = 0.0
        assert pos.loss_sum is not None and pos.weight_sum is not None
        plan = EpochPlan(pos.perm, batch_size, steps, start=pos.batch, shard=self.shard, bounds=pos.bounds)
        with train.feed(plan) as feed:
            return self._train_steps(stop, plan, feed)

    def _train_steps(self, stop: StopRequest, plan: EpochPlan, feed: Feed) -> bool:
        """The epoch's steps from the current position on (`plan`), each on the next batch of `feed` (the split
        gathers them: on demand, or read ahead when it streams)."""
        pos, steps = self.position, plan.steps
        assert pos.perm is not None and pos.loss_sum is not None and pos.weight_sum is not None
        timer = StepTimer(self.device)
        self.callbacks.on_epoch_start(self, steps)
        self.model.train()
        started = time.perf_counter()
        while pos.batch < steps:
            self.callbacks.on_step_start(self)
            if self.job.active:  # every rank stops at the same step, whichever got the signal
                self._agree_on_stop(stop)
            if stop:  # the step before has finished: stop between steps
                pos.step_times.extend(timer.collect())
                pos.epoch_seconds += time.perf_counter() - started
                self.elapsed += time.perf_counter() - started
                return False
            index = plan.rows(pos.batch)  # the global batch (multi-input: a batch of every task)
            mine = self.shard(index)  # this rank's rows of the global batch
            x, y = next(feed)  # the rows `mine`
            x, y = self.augment(x, y, self.global_step * self.job.world + self.job.rank)
            timer.start()
            self.optimizer.zero_grad(set_to_none=True)
            share = len(mine) / len(index)  # this rank's share of the batch: the ranks' losses add up to the batch's
            grad_scale = self.precision.grad_scale()  # fp16's loss scale (None otherwise)
            z, task_losses, losses_on = self._forward(x, y, share, grad_scale)
            step = Step.of(self.model, z, task_losses, losses_on, batch_rows=len(index), grad_scale=grad_scale)
            weights = self.method.backward(step)
            losses = step.summed_losses()  # all-reduced once per step, by the method when it needed them
            if self.job.active:
                grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
                distributed.sum_gradients(self.job, grads)  # the ranks' partial gradients add up to the batch's
                self.job.check_identical(weights.detach(), f"the method's weights at step {self.global_step + 1}")
            self.precision.unscale_(self.optimizer, self.method.parameters())  # fp16: true .grad, overflow recorded
            try:
                apply = self.guard.observe(self.global_step + 1, losses, f"epoch {pos.epoch}, batch {pos.batch + 1}", weights)
            except NonFiniteError as exc:
                exc.hint = self._nonfinite_hint()
                raise
            if apply:
                self.optimizer.step()
                self.method.after_update(lambda x=x, y=y, share=share: self._losses_after(x, y, share))
                pos.loss_sum += losses.detach()
                pos.weight_sum += weights.to(pos.weight_sum.dtype)
            else:  # skip: no parameter, optimiser-state or method-state change, not averaged into the epoch's losses
                self.method.step_skipped()
                pos.skipped += 1
                self.skipped_steps += 1
            self.precision.update()  # fp16: the scale halves after an overflow, grows after a run of good steps
            timer.stop()
            pos.batch += 1
            self.global_step += 1
            self.callbacks.on_step_end(self, losses, weights)
            if pos.batch % REFRESH_EVERY == 0 or pos.batch == steps:
                self._check_finite()
                done = max(pos.batch - pos.skipped, 1)
                self.callbacks.on_progress(self, pos.loss_sum / done, pos.weight_sum / done)
        self._check_finite()
        pos.step_times.extend(timer.collect())
        train_seconds = pos.epoch_seconds + (time.perf_counter() - started)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self._end_epoch(steps, train_seconds, lr)
        return True

    def _forward(
        self, x: torch.Tensor, y: dict[str, torch.Tensor], share: float, grad_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], LossesOn]:
        """z and each task's (loss_scale-multiplied) loss of this rank's `share` of the batch; and the same losses
        of some rows of it, from this forward (`Step.samples`: the methods that draw several samples per step).
        The forward and the losses run under the precision's autocast; the losses are float32, and under fp16 their
        backward is multiplied by `grad_scale` (`Precision.losses`)."""
        if self.recipe.train.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            z, outputs = self.model(x)

        def losses_on(rows: slice) -> list[torch.Tensor]:
            whole = rows == slice(None)  # the batch itself: no slicing in the graph
            losses = []
            with self.precision.autocast():
                for t in self.tasks:
                    output, target = outputs[t.name], t.target_of(y)
                    if not whole:
                        output, target = output[rows], target[rows]
                    losses.append(t.loss_scale * t.compute_loss(output, target))
            return self.precision.losses(losses if share == 1 else [loss * share for loss in losses], grad_scale)

        return z, losses_on(slice(None)), losses_on

    @torch.no_grad()
    def _losses_after(self, x: torch.Tensor, y: dict[str, torch.Tensor], share: float) -> torch.Tensor:
        """The same batch's task losses [T] with the updated parameters (a method's `after_update`): each rank
        evaluates its rows, and the parts are summed across the ranks (one all-reduce of T numbers)."""
        return self.job.sum_(torch.stack(self._forward(x, y, share)[1]).detach())

    def _agree_on_stop(self, stop: StopRequest) -> None:
        """A signal seen by any rank stops every rank before the same step (one tiny all-reduce per step)."""
        flag = torch.tensor([float(stop.signal or 0)], device=self.device)
        seen = int(self.job.max_(flag).item())
        if seen and not stop:
            stop.signal = seen

    def _end_epoch(self, steps: int, train_seconds: float, lr: float) -> None:
        """Evaluate, record the epoch and hand the record to the callbacks (metrics.jsonl, checkpoints, console)."""
        r, pos = self.recipe, self.position
        assert pos.loss_sum is not None and pos.weight_sum is not None
        eval_started = time.perf_counter()
        val = evaluate(self.model, self.tasks, self.splits["val"], batch_size=r.train.eval_batch_size)
        test = evaluate(self.model, self.tasks, self.splits["test"], batch_size=r.train.eval_batch_size)
        eval_seconds = time.perf_counter() - eval_started
        score = selection_score(val, self.tasks)
        applied = max(steps - pos.skipped, 1)
        mean_losses = (pos.loss_sum / applied).tolist()
        mean_weights = (pos.weight_sum / applied).tolist()
        times = pos.step_times
        record: dict[str, Any] = {
            "epoch": pos.epoch,
            "lr": lr,
            "steps": steps,
            "skipped_steps": pos.skipped,
            "train": {"loss": {t.name: v for t, v in zip(self.tasks, mean_losses, strict=True)}},
            "alphas": {t.name: v for t, v in zip(self.tasks, mean_weights, strict=True)},
            "val": val,
            "test": test,
            "val_score": score,
            "epoch_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "step_seconds_mean": statistics.fmean(times) if times else None,
            "step_seconds_median": statistics.median(times) if times else None,
        }
        self.all_step_times.extend(times)
        self.elapsed += train_seconds + eval_seconds
        stats = self.method.epoch_stats()  # what a method counts per epoch (IMTL-G: negative projections)
        if stats:
            record["method_stats"] = stats
        self.method.end_epoch(pos.loss_sum.detach() / applied)  # methods paced by epochs (DWA) see its mean losses
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, pos.epoch
        self.position = Position(epoch=pos.epoch + 1)
        self.records.append(record)
        self.callbacks.on_epoch_end(self, record, improved)
