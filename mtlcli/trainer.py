"""The one training loop every method shares.

The trainer owns data, model, optimiser and bookkeeping; the method (held, not inherited) turns the
per-task losses of each step into parameter gradients. Data lives on the device as tensors; the hot
path has no per-step host sync (losses and weights accumulate on the device, the progress bar reads
them every `REFRESH_EVERY` steps).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mtlcli import __version__, methods
from mtlcli.data.store import PreparedDataset, load_prepared, resolve_data_dir
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.errors import MtlError, RunError
from mtlcli.evaluation import DeviceSplit, evaluate, selection_score
from mtlcli.io import append_jsonl, read_jsonl, write_json_atomic, write_text_atomic
from mtlcli.methods.base import Method, Step
from mtlcli.models import MultiTaskModel, build_model, count_parameters
from mtlcli.recipe import Recipe
from mtlcli.runs import BEST, LAST, METRICS, SUMMARY, create_run_dir, write_recipe
from mtlcli.tasks import Task

REFRESH_EVERY = 50
CHECKPOINT_FORMAT = 1


def resolve_device(spec: str) -> torch.device:
    """`auto` = CUDA when available, else CPU; asking for CUDA without one is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MtlError(f"device {spec!r} was asked for, but torch sees no CUDA device", hint="use --device cpu or auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise MtlError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(spec)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def tasks_of(recipe: Recipe) -> list[Task]:
    return [Task(t.name, t.loss, tuple(t.metrics), t.loss_scale) for t in recipe.tasks]


def load_dataset(recipe: Recipe, data_dir: Path | None = None) -> PreparedDataset:
    if recipe.data.synthetic:  # random tensors of the recipe's shapes: no download, for timing and smoke tests
        return synthetic_dataset(recipe.data.name, size=recipe.data.size or 28, seed=recipe.train.seed)
    dataset = load_prepared(resolve_data_dir(data_dir or recipe.data.dir), recipe.data.name)
    size = int(dataset.meta["size"])
    if recipe.data.size is not None and recipe.data.size != size:
        raise MtlError(
            f"the recipe wants {recipe.data.size}x{recipe.data.size} images, {dataset.path} holds {size}x{size}",
            hint=f"run `mtl prepare {recipe.data.name} --size {recipe.data.size} --force`",
        )
    return dataset


def device_splits(recipe: Recipe, dataset: PreparedDataset, device: torch.device) -> dict[str, DeviceSplit]:
    return {
        split: DeviceSplit(
            images=torch.from_numpy(dataset.images[split]).to(device),
            labels=torch.from_numpy(dataset.labels[split].astype(np.int64)).to(device),
            mean=recipe.data.mean,
            std=recipe.data.std,
        )
        for split in ("train", "val", "test")
    }


def make_model(recipe: Recipe, dataset: PreparedDataset) -> MultiTaskModel:
    classes = dataset.num_classes
    return build_model(
        encoder=recipe.model.encoder,
        num_classes={t.name: classes[t.name] for t in recipe.tasks},
        input_size=int(dataset.meta["size"]),
        dropout=recipe.model.dropout,
        hidden=recipe.model.hidden,
    )


def make_optimizer(recipe: Recipe, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    o = recipe.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def make_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    s = recipe.optim.scheduler
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class StepTimer:
    """Per-step wall time: CUDA events on the GPU (read once per epoch), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._events: list[tuple[Any, Any]] = []
        self._times: list[float] = []
        self._start: Any = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self._times.append(time.perf_counter() - self._start)

    def collect(self) -> list[float]:
        """Step times (seconds) since the last collect."""
        if self.cuda:
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1000.0 for s, e in self._events]
            self._events = []
        else:
            times, self._times = self._times, []
        return times


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the current step, saves and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, _frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signal = signum

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class TrainingInterrupted(MtlError):
    """Training stopped on a signal after saving a resumable checkpoint."""


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


@dataclass
class Trainer:
    """Train `recipe` into a run directory; `resume` continues one from its last checkpoint."""

    recipe: Recipe
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        r = self.recipe
        self.device = resolve_device(r.train.device)
        self.dataset = load_dataset(r)
        self.tasks = tasks_of(r)
        self.columns = [self.dataset.task_names.index(t.name) for t in self.tasks]
        seed_everything(r.train.seed)
        self.model = make_model(r, self.dataset).to(self.device)
        self.method: Method = methods.build(r.method.name, **r.method.options)
        for p in self.method.parameters():
            p.data = p.data.to(self.device)
        self.optimizer = make_optimizer(r, [*self.model.parameters(), *self.method.parameters()])
        self.scheduler = make_scheduler(r, self.optimizer)
        self.splits = device_splits(r, self.dataset, self.device)
        self.shuffle = torch.Generator(device=self.device)
        self.shuffle.manual_seed(r.train.seed)
        self.position = Position()
        self.best_score = -math.inf
        self.best_epoch = 0
        self.global_step = 0
        self.all_step_times: list[float] = []
        self.elapsed = 0.0

    # ----------------------------------------------------------------- checkpoints
    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state(), "shuffle": self.shuffle.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def checkpoint(self) -> dict[str, Any]:
        p = self.position
        return {
            "format": CHECKPOINT_FORMAT,
            "recipe": self.recipe.dump(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "rng": self._rng_state(),
            "position": {
                "epoch": p.epoch,
                "batch": p.batch,
                "perm": p.perm,
                "loss_sum": p.loss_sum,
                "weight_sum": p.weight_sum,
                "step_times": list(p.step_times),
                "epoch_seconds": p.epoch_seconds,
            },
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "global_step": self.global_step,
            "all_step_times": list(self.all_step_times),
            "elapsed": self.elapsed,
        }

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        assert self.run_dir is not None
        save_checkpoint(self.run_dir / name, state if state is not None else self.checkpoint())

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        pos = state["position"]
        self.position = Position(
            epoch=int(pos["epoch"]),
            batch=int(pos["batch"]),
            perm=pos["perm"].to(self.device) if pos["perm"] is not None else None,
            loss_sum=pos["loss_sum"].to(self.device) if pos["loss_sum"] is not None else None,
            weight_sum=pos["weight_sum"].to(self.device) if pos["weight_sum"] is not None else None,
            step_times=list(pos["step_times"]),
            epoch_seconds=float(pos["epoch_seconds"]),
        )
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.global_step = int(state["global_step"])
        self.all_step_times = list(state["all_step_times"])
        self.elapsed = float(state["elapsed"])

    @classmethod
    def resume(cls, run_dir: Path, *, console: Console | None = None, show_progress: bool = True) -> Trainer:
        """A trainer positioned where `run_dir`'s last checkpoint left off."""
        from mtlcli.recipe import validate
        from mtlcli.runs import read_run

        run = read_run(run_dir)
        if run.complete:
            raise RunError(f"{run_dir} has already finished", hint="train a new run, or raise --epochs on a new one")
        recipe = validate(run.recipe, source=str(run_dir / "recipe.yaml"))
        state = load_checkpoint(run_dir / LAST)
        trainer = cls(recipe, console=console or Console(stderr=True), show_progress=show_progress, run_dir=run_dir)
        trainer.restore(state)
        kept = [rec for rec in run.metrics if rec["epoch"] < trainer.position.epoch]
        if len(kept) != len(run.metrics):  # lines written after the checkpoint we resume from
            write_text_atomic(run_dir / METRICS, "".join(json.dumps(rec) + "\n" for rec in kept))
        return trainer

    # ----------------------------------------------------------------- the loop
    def run(self) -> Path:
        """Train to the last epoch (from the current position) and write summary.json."""
        r = self.recipe
        if self.run_dir is None:
            self.run_dir = create_run_dir(Path(r.output.dir), r.method.name, r.train.seed)
            write_recipe(self.run_dir, r.dump())
        stop = StopRequest()
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            disable=not self.show_progress,
            transient=False,
        )
        with stop.installed(), progress:
            while self.position.epoch <= r.train.epochs:
                finished = self._train_epoch(progress, stop)
                if not finished:
                    self.save(LAST)
                    raise TrainingInterrupted(
                        f"training stopped by signal {stop.signal} at epoch {self.position.epoch}, "
                        f"batch {self.position.batch}; progress saved in {self.run_dir / LAST}",
                        hint=f"resume with `mtl train --resume {self.run_dir}`",
                    )
        self._write_summary()
        return self.run_dir

    def _train_epoch(self, progress: Progress, stop: StopRequest) -> bool:
        r = self.recipe
        pos = self.position
        train = self.splits["train"]
        n = len(train)
        batch_size = r.train.batch_size
        steps = math.ceil(n / batch_size)
        if pos.perm is None:
            pos.perm = torch.randperm(n, generator=self.shuffle, device=self.device)
            pos.loss_sum = torch.zeros(len(self.tasks), device=self.device)
            pos.weight_sum = torch.zeros(len(self.tasks), device=self.device)
            pos.step_times = []
            pos.epoch_seconds = 0.0
        assert pos.loss_sum is not None and pos.weight_sum is not None
        timer = StepTimer(self.device)
        bar = progress.add_task(f"epoch {pos.epoch}/{r.train.epochs}", total=steps, completed=pos.batch, status="")
        self.model.train()
        started = time.perf_counter()
        while pos.batch < steps:
            index = pos.perm[pos.batch * batch_size : (pos.batch + 1) * batch_size]
            x, y = train.batch(index)
            timer.start()
            self.optimizer.zero_grad(set_to_none=True)
            z, outputs = self.model(x)
            losses = torch.stack(
                [t.loss_scale * t.compute_loss(outputs[t.name], y[:, c]) for t, c in zip(self.tasks, self.columns, strict=True)]
            )
            weights = self.method.backward(Step(self.model, z, losses))
            self.optimizer.step()
            timer.stop()
            pos.loss_sum += losses.detach()
            pos.weight_sum += weights.to(pos.weight_sum.dtype)
            pos.batch += 1
            self.global_step += 1
            if pos.batch % REFRESH_EVERY == 0 or pos.batch == steps:
                status = self._status(pos.loss_sum / pos.batch, pos.weight_sum / pos.batch)
                progress.update(bar, completed=pos.batch, status=status)
            if stop and pos.batch < steps:
                pos.step_times.extend(timer.collect())
                pos.epoch_seconds += time.perf_counter() - started
                self.elapsed += time.perf_counter() - started
                return False
        pos.step_times.extend(timer.collect())
        train_seconds = pos.epoch_seconds + (time.perf_counter() - started)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self._end_epoch(steps, train_seconds, lr)
        return True

    def _status(self, mean_losses: torch.Tensor, mean_weights: torch.Tensor) -> str:
        losses = mean_losses.tolist()
        weights = mean_weights.tolist()
        parts = [f"{t.name} {loss:.3f}" for t, loss in zip(self.tasks, losses, strict=True)]
        alphas = "/".join(f"{w:.2f}" for w in weights)
        return f"loss {' '.join(parts)} | α {alphas}"

    def _end_epoch(self, steps: int, train_seconds: float, lr: float) -> None:
        r = self.recipe
        pos = self.position
        assert pos.loss_sum is not None and pos.weight_sum is not None and self.run_dir is not None
        eval_started = time.perf_counter()
        val = evaluate(self.model, self.tasks, self.columns, self.splits["val"], batch_size=r.train.eval_batch_size)
        test = evaluate(self.model, self.tasks, self.columns, self.splits["test"], batch_size=r.train.eval_batch_size)
        eval_seconds = time.perf_counter() - eval_started
        score = selection_score(val, self.tasks)
        mean_losses = (pos.loss_sum / steps).tolist()
        mean_weights = (pos.weight_sum / steps).tolist()
        times = pos.step_times
        record = {
            "epoch": pos.epoch,
            "lr": lr,
            "steps": steps,
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
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, pos.epoch
        self.position = Position(epoch=pos.epoch + 1)
        state = self.checkpoint()
        append_jsonl(self.run_dir / METRICS, record)
        if improved:
            self.save(BEST, state)
        self.save(LAST, state)
        accs = "  ".join(f"{t.name} {val[t.name][t.metrics[0]]:.2f}" for t in self.tasks)
        mark = " *" if improved else ""
        self.console.print(
            f"epoch {record['epoch']}/{r.train.epochs}  val {accs}  ({train_seconds:.1f}s train, "
            f"{1000 * (record['step_seconds_median'] or 0):.1f} ms/step){mark}"
        )

    def _write_summary(self) -> None:
        assert self.run_dir is not None
        records = read_jsonl(self.run_dir / METRICS)
        best = next(rec for rec in records if rec["epoch"] == self.best_epoch)
        summary = {
            "status": "complete",
            "method": self.recipe.method.name,
            "method_options": self.recipe.method.options,
            "dataset": self.recipe.data.name,
            "seed": self.recipe.train.seed,
            "tasks": [t.name for t in self.tasks],
            "device": str(self.device),
            "epochs": self.recipe.train.epochs,
            "best_epoch": self.best_epoch,
            "selection": "best mean validation " + "/".join(dict.fromkeys(t.metrics[0] for t in self.tasks)),
            "val": best["val"],
            "test": best["test"],
            "total_seconds": self.elapsed,
            "train_seconds": sum(rec["epoch_seconds"] for rec in records),
            "step_seconds_median": statistics.median(self.all_step_times) if self.all_step_times else None,
            "step_seconds_mean": statistics.fmean(self.all_step_times) if self.all_step_times else None,
            "parameters": count_parameters(self.model),
            "versions": {
                "mtlcli": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
        write_json_atomic(self.run_dir / SUMMARY, summary)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, rename: a crash never leaves a torn checkpoint."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


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
    return state
