"""The one training loop every method shares.

The trainer owns data, model, optimiser and bookkeeping; the method (held, not inherited) turns the
per-task losses of each step into parameter gradients. Data lives on the device as tensors; the hot
path has no per-step host sync (losses and weights accumulate on the device, the progress bar reads
them every `REFRESH_EVERY` steps).

Reliability: `last.pt` (every `train.checkpoint_every` epochs, at the end and on SIGINT/SIGTERM)
holds everything needed to continue bitwise-identically on the CPU; `NonFiniteGuard` stops (or skips)
on NaN/inf losses and gradients; `train.deterministic` turns on deterministic algorithms.
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

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked
    fcntl = None  # type: ignore[assignment]

from mtlcli import __version__, distributed, methods
from mtlcli.augment import build_augment
from mtlcli.data import registry
from mtlcli.data.store import PreparedDataset, load_prepared, resolve_data_dir, task_target
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.errors import MtlError, RunError
from mtlcli.evaluation import DeviceSplit, evaluate, selection_score
from mtlcli.io import append_jsonl, atomic_open, read_jsonl, write_json_atomic, write_text_atomic
from mtlcli.methods.base import Method, Step
from mtlcli.models import ENCODERS, MultiTaskModel, build_model, count_parameters
from mtlcli.recipe import Recipe
from mtlcli.runs import BEST, LAST, METRICS, SUMMARY, create_run_dir, write_recipe
from mtlcli.tasks import Task

REFRESH_EVERY = 50
CONSOLE_TASKS = 4  # more tasks than this: the console shows means instead of one number per task
DEVICE_DATA_FRACTION = 0.5  # images go to the GPU when they take at most this share of its free memory
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


def enable_determinism(device: torch.device) -> None:
    """Deterministic algorithms only (errors on ops without one); cuBLAS needs its workspace pinned."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def tasks_of(recipe: Recipe, dataset: PreparedDataset) -> list[Task]:
    """The recipe's tasks bound to the prepared data: which target array (and column) each reads."""
    tasks = []
    for t in recipe.tasks:
        target, column = task_target(dataset.meta, t.name)
        outputs = dataset.num_classes[t.name]
        tasks.append(Task(t.name, t.loss, tuple(t.metrics), t.loss_scale, target=target, column=column, num_outputs=outputs))
    return tasks


def training_steps(n: int, batch_size: int) -> int:
    """Batches per epoch: the last partial batch is kept unless it would hold one sample, which BatchNorm
    cannot normalise in training (the dilated ResNet and the PSP heads would fail on it)."""
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


TRACE_ENV = "MTL_STEP_TRACE"  # a file: rank 0 appends each step's method weights (tests of the distributed run)
SIGNAL_AT_ENV = "MTL_SIGNAL_AT_STEP"  # tests: rank 0 sends itself SIGTERM before this (1-based) step


def check_distributable(recipe: Recipe, job: distributed.Distributed) -> None:
    """Methods that stay the same algorithm across ranks (see mtlcli.distributed); others are refused."""
    if recipe.method.name not in distributed.SUPPORTED:
        raise MtlError(
            f"method {recipe.method.name} does not run on {job.world} processes yet: its learned state or its use of "
            "per-task gradients beyond their Gram matrix is not reduced across processes",
            hint=f"train it on one process, or choose one of: {', '.join(distributed.SUPPORTED)}",
        )


def check_batches(n: int, batch_size: int, job: distributed.Distributed) -> None:
    """Every rank gets at least one row of every batch (the last one included)."""
    last = n - (training_steps(n, batch_size) - 1) * batch_size
    if min(batch_size, last) < job.world:
        raise MtlError(
            f"{job.world} processes need at least {job.world} rows in every batch; with {n} training samples and "
            f"train.batch_size {batch_size} a batch has {min(batch_size, last)}",
            hint="raise train.batch_size, or use fewer processes",
        )


def augmentation_of(recipe: Recipe) -> str:
    """The recipe's training augmentation, `default` resolved through the dataset's registry entry."""
    name = recipe.data.augment
    return registry.get(recipe.data.name).augment if name == "default" else name


def load_dataset(recipe: Recipe, data_dir: Path | None = None) -> PreparedDataset:
    if recipe.data.synthetic:  # random tensors of the recipe's shapes: no download, for timing and smoke tests
        return synthetic_dataset(recipe.data.name, size=recipe.data.size, seed=recipe.train.seed)
    dataset = load_prepared(resolve_data_dir(data_dir or recipe.data.dir), recipe.data.name)
    size = int(dataset.meta["size"])
    if recipe.data.size is not None and recipe.data.size != size:
        height, width = dataset.images["train"].shape[1:3]
        raise MtlError(
            f"the recipe wants images {recipe.data.size} pixels high, {dataset.path} holds {height}x{width}",
            hint=f"run `mtl prepare {recipe.data.name} --size {recipe.data.size} --force`",
        )
    return dataset


def input_normalization(recipe: Recipe, dataset: PreparedDataset) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std): the recipe's, else the prepared data's measured ones, else the registry's."""
    spec = registry.get(recipe.data.name)

    def pick(key: str) -> list[float]:
        value = getattr(recipe.data, key)
        if value is None:
            value = dataset.meta.get(key) or list(getattr(spec, key))
        values = [float(v) for v in (value if isinstance(value, list) else [value])]
        return values * spec.channels if len(values) == 1 else values

    return pick("mean"), pick("std")


def images_fit_on(device: torch.device, dataset: PreparedDataset, targets: set[str]) -> bool:
    """Whether the images and the `targets` arrays go to the device (CUDA with room to spare); on the CPU they
    stay memory-mapped and each batch is gathered in host memory."""
    if device.type != "cuda":
        return False
    free, _total = torch.cuda.mem_get_info(device)
    arrays = [*dataset.images.values(), *(split[name] for split in dataset.targets.values() for name in targets)]
    return sum(a.nbytes for a in arrays) <= DEVICE_DATA_FRACTION * free


def device_splits(recipe: Recipe, dataset: PreparedDataset, device: torch.device) -> dict[str, DeviceSplit]:
    mean, std = input_normalization(recipe, dataset)
    used = {task_target(dataset.meta, t.name)[0] for t in recipe.tasks}  # arrays of tasks not trained stay on disk
    on_device = images_fit_on(device, dataset, used)
    kinds = dataset.target_kinds
    splits = {}
    for split in ("train", "val", "test"):
        images = torch.from_numpy(dataset.images[split])
        targets = {}
        for name, array in dataset.targets[split].items():
            if name not in used:
                continue
            if kinds[name] == "class":  # small: always on the device, as int64
                targets[name] = torch.from_numpy(array.astype(np.int64)).to(device)
            else:
                tensor = torch.from_numpy(array)
                targets[name] = tensor.to(device) if on_device else tensor
        splits[split] = DeviceSplit.create(images.to(device) if on_device else images, targets, mean, std, device)
    return splits


def input_shape(dataset: PreparedDataset) -> tuple[int, int, int]:
    """(channels, height, width) of the dataset's images."""
    shape = dataset.images["train"].shape[1:]
    return (1, *shape) if len(shape) == 2 else (shape[2], shape[0], shape[1])


def make_model(recipe: Recipe, dataset: PreparedDataset) -> MultiTaskModel:
    classes = dataset.num_classes
    encoder = recipe.model.encoder or registry.get(recipe.data.name).default_encoder
    problem = ENCODERS[encoder].input_problem(input_shape(dataset))
    if problem is not None:  # e.g. data prepared with a --size the encoder cannot take
        raise MtlError(
            f"model.encoder {encoder}: {problem}",
            hint=f"prepare the data with another --size (mtl prepare {recipe.data.name} --size N --force) or choose "
            "another encoder",
        )
    return build_model(
        encoder=encoder,
        num_classes={t.name: classes[t.name] for t in recipe.tasks},
        input_shape=input_shape(dataset),
        options=recipe.model.options,
        independent=methods.needs_independent_networks(recipe.method.name),
    )


def make_optimizer(
    recipe: Recipe, params: list[torch.nn.Parameter], method_params: list[torch.nn.Parameter] | None = None
) -> torch.optim.Optimizer:
    """The recipe's optimiser over the model's parameters and the method's own (learned loss scales),
    which never get weight decay: decay would pull log-variances towards 0, i.e. towards uniform weights."""
    o = recipe.optim
    groups: list[dict[str, Any]] = [{"params": params}]
    if method_params:
        if o.weight_decay:
            groups.append({"params": method_params, "weight_decay": 0.0})
        else:  # one group, as checkpoints written before the split have it
            groups[0]["params"] = [*params, *method_params]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)


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
    """Training stopped on a signal after saving a resumable checkpoint (exit status 130, as for Ctrl-C)."""

    exit_code = 130


class NonFiniteError(MtlError):
    """A NaN/inf loss or gradient under `train.on_nonfinite: stop`; the last good checkpoint is kept."""

    def __init__(self, message: str, hint: str | None, *, step: int, tasks: list[str]) -> None:
        super().__init__(message, hint)
        self.step = step
        self.tasks = tasks


class NonFiniteGuard:
    """Watches every step's task losses and parameter gradients for NaN/inf.

    When the flag is read (the cost trade-off):
    - on the CPU reading it is free, so it is read every step, before `optimizer.step()`: a bad step
      never touches parameters or optimiser state (`stop` raises, `skip` drops the step);
    - `skip` on CUDA must also decide before `optimizer.step()`, so it costs one host sync per step
      (choose it for runs known to be unstable);
    - `stop` on CUDA keeps the hot path sync-free: the first bad step (its losses and which gradients
      were bad) is recorded on the device and read with the progress refresh, at the end of each
      epoch and before any checkpoint is written. Updates after the bad step may be poisoned, so
      nothing more is saved: the checkpoint on disk is the last good state.
    """

    def __init__(
        self, task_names: list[str], named_params: list[tuple[str, torch.nn.Parameter]], device: torch.device, policy: str
    ) -> None:
        self.task_names = task_names
        self.param_names = [name for name, _ in named_params]
        self.params = [p for _, p in named_params]
        self.policy = policy
        self.immediate = device.type != "cuda" or policy == "skip"
        self._true = torch.ones((), dtype=torch.bool, device=device)
        self._zero = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_losses = torch.zeros(len(task_names), device=device)
        self.bad_grads = torch.zeros(len(self.params), dtype=torch.bool, device=device)
        self.bad_weights = torch.zeros(len(task_names), dtype=torch.bool, device=device)

    def _flags(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finite flags of the task losses [T] and of each parameter's gradient [P], in a few fused kernels:
        0 * g is 0 where g is finite and NaN where it is not, so the norm of 0 * g is 0 or NaN (exact, no
        overflow), and the foreach ops launch a handful of kernels for all parameters together."""
        loss_ok = torch.isfinite(losses)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return loss_ok, self._true.reshape(1).expand(len(self.params))
        norms = iter(torch._foreach_norm(torch._foreach_mul(grads, 0.0)))
        per_param = [next(norms) if p.grad is not None else self._zero for p in self.params]
        return loss_ok, torch.isfinite(torch.stack(per_param))

    def observe(self, step: int, losses: torch.Tensor, where: str, weights: torch.Tensor | None = None) -> bool:
        """After backward: True to apply the step, False to skip it; NonFiniteError under `stop`.
        `weights` are the method's task weights: a Gram-based method gives NaN to a task whose gradient
        was non-finite (`min_norm` and friends), which names that task."""
        losses = losses.detach()
        loss_ok, grad_ok = self._flags(losses)
        weight_ok = torch.isfinite(weights.detach()) if weights is not None else torch.ones_like(loss_ok)
        ok = loss_ok.all() & grad_ok.all() & weight_ok.all()
        if self.immediate:
            if bool(ok):
                return True
            if self.policy == "skip":
                return False
            raise self.error(step, where, losses.tolist(), (~grad_ok).tolist(), (~weight_ok).tolist())
        new = ~ok & (self.first_bad < 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_losses = torch.where(new, losses.to(self.bad_losses.dtype), self.bad_losses)
        self.bad_grads = torch.where(new, ~grad_ok, self.bad_grads)
        self.bad_weights = torch.where(new, ~weight_ok, self.bad_weights)
        return True

    def check(self, where: Any) -> None:
        """Raise NonFiniteError if a bad step was recorded on the device (one sync); `where(step)` locates it."""
        if self.immediate:
            return
        step = int(self.first_bad.item())
        if step >= 0:
            raise self.error(step, where(step), self.bad_losses.tolist(), self.bad_grads.tolist(), self.bad_weights.tolist())

    def error(
        self, step: int, where: str, losses: list[float], bad_grads: list[bool], bad_weights: list[bool] | None = None
    ) -> NonFiniteError:
        bad_tasks = [name for name, v in zip(self.task_names, losses, strict=True) if not math.isfinite(v)]
        gradient_tasks = [name for name, bad in zip(self.task_names, bad_weights or [], strict=False) if bad]
        if not bad_tasks and gradient_tasks and len(gradient_tasks) < len(self.task_names):
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.task_names, losses, strict=True))
            what = ", ".join(f"task {name!r}" for name in gradient_tasks)
            message = f"non-finite gradient at step {step} ({where}) of {what}; task losses: {values}"
            return NonFiniteError(message, None, step=step, tasks=gradient_tasks)
        if bad_tasks:
            what = ", ".join(
                f"task {name!r} loss is {v}" for name, v in zip(self.task_names, losses, strict=True) if not math.isfinite(v)
            )
            message = f"non-finite loss at step {step} ({where}): {what}"
        else:
            params = [name for name, bad in zip(self.param_names, bad_grads, strict=True) if bad]
            shown = ", ".join(params[:3]) + (f" (+{len(params) - 3} more)" if len(params) > 3 else "")
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.task_names, losses, strict=True))
            message = f"non-finite gradient at step {step} ({where}) in {shown}; task losses: {values}"
        return NonFiniteError(message, None, step=step, tasks=bad_tasks)


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


@dataclass
class Trainer:
    """Train `recipe` into a run directory; `resume` continues one from its last checkpoint."""

    recipe: Recipe
    console: Console = field(default_factory=lambda: Console(stderr=True))
    show_progress: bool = True
    run_dir: Path | None = None

    def __post_init__(self) -> None:
        r = self.recipe
        self.job, device_spec = distributed.setup_from_environment(r.train.device)
        self.device = resolve_device(device_spec)
        if self.job.active:
            check_distributable(r, self.job)
            if not self.job.writer:  # one console: rank 0's
                self.console = Console(stderr=True, quiet=True)
                self.show_progress = False
        if r.train.deterministic:
            enable_determinism(self.device)
        self.dataset = load_dataset(r)
        self.tasks = tasks_of(r, self.dataset)
        seed_everything(r.train.seed)
        self.model = make_model(r, self.dataset).to(self.device)
        self.method: Method = methods.build(r.method.name, **r.method.options)
        self.method.setup(len(self.tasks), self.device)
        self.optimizer = make_optimizer(r, list(self.model.parameters()), self.method.parameters())
        self.scheduler = make_scheduler(r, self.optimizer)
        named = [*self.model.named_parameters(), *((f"method.{i}", p) for i, p in enumerate(self.method.parameters()))]
        self.guard = NonFiniteGuard([t.name for t in self.tasks], named, self.device, r.train.on_nonfinite)
        self.splits = device_splits(r, self.dataset, self.device)
        if self.job.active:
            check_batches(len(self.splits["train"]), r.train.batch_size, self.job)
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
        self.last_saved_epoch = 0  # the epoch whose end last.pt holds (0: none yet)
        self.lock: RunLock | None = None

    # ----------------------------------------------------------------- checkpoints
    def _rng_state(self) -> dict[str, Any]:
        """Every generator a method or the loop may draw from, as tensors and plain lists/ints
        (what `torch.load(weights_only=True)` accepts)."""
        version, mt, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "shuffle": self.shuffle.get_state(),
            "python": {"version": version, "state": list(mt), "gauss": gauss},
            "numpy": {
                "kind": kind,
                "keys": [int(k) for k in keys],
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached": float(cached),
            },
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        self.shuffle.set_state(rng["shuffle"])
        if "python" in rng:
            py = rng["python"]
            random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
        if "numpy" in rng:
            n = rng["numpy"]
            keys = np.array(n["keys"], dtype=np.uint32)
            np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)

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
                "skipped": p.skipped,
            },
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "global_step": self.global_step,
            "skipped_steps": self.skipped_steps,
            "all_step_times": list(self.all_step_times),
            "elapsed": self.elapsed,
        }

    def save(self, name: str, state: dict[str, Any] | None = None) -> None:
        assert self.run_dir is not None
        if not self.job.writer:  # rank 0 writes; every rank holds the same state
            return
        save_checkpoint(self.run_dir / name, state if state is not None else self.checkpoint())

    def restore(self, state: dict[str, Any], source: Path | str = "checkpoint") -> None:
        """Load a checkpoint's state; RunError if it does not fit this recipe's model and method."""
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = next((line for line in lines if not line.endswith(":")), lines[0] if lines else repr(exc))
            raise RunError(f"{source} does not fit this run: {detail[:200]}") from None

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        self._set_rng_state(state["rng"])
        pos = state["position"]
        self.position = Position(
            epoch=int(pos["epoch"]),
            batch=int(pos["batch"]),
            perm=pos["perm"].to(self.device) if pos["perm"] is not None else None,
            loss_sum=pos["loss_sum"].to(self.device) if pos["loss_sum"] is not None else None,
            weight_sum=pos["weight_sum"].to(self.device) if pos["weight_sum"] is not None else None,
            step_times=list(pos["step_times"]),
            epoch_seconds=float(pos["epoch_seconds"]),
            skipped=int(pos.get("skipped", 0)),
        )
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.global_step = int(state["global_step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.last_saved_epoch = self.position.epoch - 1
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
        if not (run_dir / LAST).is_file():
            raise RunError(
                f"{run_dir} has no checkpoint to resume from (stopped before its first one was written)",
                hint="train the recipe again: `mtl train " + str(run_dir / "recipe.yaml") + "`",
            )
        state = load_checkpoint(run_dir / LAST)
        job, _ = distributed.setup_from_environment(recipe.train.device)
        lock = RunLock(run_dir).acquire() if job.writer else None  # before touching its files
        try:
            trainer = cls(recipe, console=console or Console(stderr=True), show_progress=show_progress, run_dir=run_dir)
            trainer.restore(state, run_dir / LAST)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        trainer.lock = lock
        if not job.writer:  # the files are rank 0's
            return trainer
        trainer._repair_best(state)
        # drop lines written after the checkpoint we resume from, and a torn last line (kill -9)
        kept = [rec for rec in run.metrics if isinstance(rec, dict) and rec.get("epoch", 0) < trainer.position.epoch]
        write_text_atomic(run_dir / METRICS, "".join(json.dumps(rec) + "\n" for rec in kept))
        for stale in run_dir.glob(".*.tmp"):  # temp files of writes a kill -9 cut short
            with contextlib.suppress(OSError):
                stale.unlink()
        return trainer

    def _repair_best(self, state: dict[str, Any]) -> None:
        """Make best.pt agree with the checkpoint resumed from (a crash may have come between the two saves)."""
        assert self.run_dir is not None
        resumed_at = self.position.epoch - 1
        try:
            on_disk = int(load_checkpoint(self.run_dir / BEST)["position"]["epoch"]) - 1
        except (RunError, KeyError, TypeError, ValueError):
            on_disk = None
        if on_disk == self.best_epoch:
            return
        if self.best_epoch and self.best_epoch == resumed_at:  # the checkpoint itself is the best state
            self.save(BEST, state)
        elif on_disk is not None and on_disk > resumed_at:
            self.console.print(
                f"[yellow]note:[/] {BEST} holds epoch {on_disk}, trained after the checkpoint; "
                f"it is replaced when an epoch beats epoch {self.best_epoch}"
            )

    # ----------------------------------------------------------------- the loop
    def run(self) -> Path:
        """Train to the last epoch (from the current position) and write summary.json."""
        r = self.recipe
        if self.run_dir is None:
            created = None
            if self.job.writer:
                self.run_dir = create_run_dir(Path(r.output.dir), r.method.name, r.train.seed)
                self.lock = RunLock(self.run_dir).acquire()
                write_recipe(self.run_dir, r.dump())
                (self.run_dir / METRICS).touch()  # a run directory from the start: resumable after epoch 1's first step
                created = str(self.run_dir)
            self.run_dir = Path(self.job.broadcast_text(created))
        if self.lock is None and self.job.writer:
            self.lock = RunLock(self.run_dir).acquire()
        try:
            return self._run()
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _run(self) -> Path:
        r = self.recipe
        assert self.run_dir is not None
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
                if stop or not self._train_epoch(progress, stop):
                    self._interrupted(stop)
        self._write_summary()
        return self.run_dir

    def _interrupted(self, stop: StopRequest) -> None:
        """Save where training is (unless the last checkpoint already holds it) and say how to resume."""
        assert self.run_dir is not None
        self._check_finite()
        pos = self.position
        if pos.batch or self.last_saved_epoch != pos.epoch - 1:
            self.save(LAST)
        where = f"epoch {pos.epoch}, batch {pos.batch}" if pos.batch else f"the end of epoch {pos.epoch - 1}"
        name = signal.Signals(stop.signal).name if stop.signal is not None else "a signal"
        how = (
            f"torchrun --nproc-per-node N -m mtlcli train --resume {self.run_dir}` (any N; or `mtl train --resume "
            f"{self.run_dir} --nproc N`"
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

    def _train_epoch(self, progress: Progress, stop: StopRequest) -> bool:
        r = self.recipe
        pos = self.position
        train = self.splits["train"]
        n = len(train)
        batch_size = r.train.batch_size
        steps = training_steps(n, batch_size)
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
        signal_at = int(os.environ.get(SIGNAL_AT_ENV, "0"))
        trace = Path(os.environ[TRACE_ENV]) if TRACE_ENV in os.environ and self.job.writer else None
        while pos.batch < steps:
            if signal_at == self.global_step + 1 and self.job.writer:  # tests: a SIGTERM to rank 0 alone
                signal.raise_signal(signal.SIGTERM)
            if self.job.active:  # every rank stops at the same step, whichever got the signal
                self._agree_on_stop(stop)
            if stop:  # the step before has finished: stop between steps
                pos.step_times.extend(timer.collect())
                pos.epoch_seconds += time.perf_counter() - started
                self.elapsed += time.perf_counter() - started
                return False
            index = pos.perm[pos.batch * batch_size : (pos.batch + 1) * batch_size]
            mine = self.job.shard(index)  # rows r, r + N, ... of the global batch
            x, y = train.batch(mine)
            x, y = self.augment(x, y, self.global_step * self.job.world + self.job.rank)
            timer.start()
            self.optimizer.zero_grad(set_to_none=True)
            z, outputs = self.model(x)
            task_losses = [t.loss_scale * t.compute_loss(outputs[t.name], t.target_of(y)) for t in self.tasks]
            if self.job.active:  # this rank's share of the batch: the ranks' losses add up to the batch's
                task_losses = [loss * (len(mine) / len(index)) for loss in task_losses]
            step = Step.of(self.model, z, task_losses)
            weights = self.method.backward(step)
            losses = step.summed_losses()  # all-reduced once per step, by the method when it needed them
            if self.job.active:
                self._sum_gradients()
                self.job.check_identical(weights.detach(), f"the method's weights at step {self.global_step + 1}")
            if trace is not None:
                append_jsonl(trace, {"step": self.global_step + 1, "weights": weights.tolist()})
            try:
                apply = self.guard.observe(self.global_step + 1, losses, f"epoch {pos.epoch}, batch {pos.batch + 1}", weights)
            except NonFiniteError as exc:
                exc.hint = self._nonfinite_hint()
                raise
            if apply:
                self.optimizer.step()
                pos.loss_sum += losses.detach()
                pos.weight_sum += weights.to(pos.weight_sum.dtype)
            else:  # skip: no parameter or optimiser-state change, not averaged into the epoch's losses
                undo = getattr(self.method, "step_skipped", None)  # nor a change of the method's own state
                if undo is not None:
                    undo()
                pos.skipped += 1
                self.skipped_steps += 1
            timer.stop()
            pos.batch += 1
            self.global_step += 1
            if pos.batch % REFRESH_EVERY == 0 or pos.batch == steps:
                self._check_finite()
                done = max(pos.batch - pos.skipped, 1)
                status = self._status(pos.loss_sum / done, pos.weight_sum / done)
                progress.update(bar, completed=pos.batch, status=status)
        self._check_finite()
        pos.step_times.extend(timer.collect())
        train_seconds = pos.epoch_seconds + (time.perf_counter() - started)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self._end_epoch(steps, train_seconds, lr)
        return True

    def _sum_gradients(self) -> None:
        """All-reduce every gradient (one flattened buffer): the ranks' partial gradients add up to the batch's."""
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        flat = self.job.sum_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _agree_on_stop(self, stop: StopRequest) -> None:
        """A signal seen by any rank stops every rank before the same step (one tiny all-reduce per step)."""
        flag = torch.tensor([float(stop.signal or 0)], device=self.device)
        seen = int(self.job.max_(flag).item())
        if seen and not stop:
            stop.signal = seen

    def _status(self, mean_losses: torch.Tensor, mean_weights: torch.Tensor) -> str:
        losses = mean_losses.tolist()
        weights = mean_weights.tolist()
        if len(self.tasks) > CONSOLE_TASKS:  # many tasks: a summary that fits a line
            return f"loss mean {statistics.fmean(losses):.3f} | α min {min(weights):.3f} max {max(weights):.3f}"
        parts = [f"{t.name} {loss:.3f}" for t, loss in zip(self.tasks, losses, strict=True)]
        alphas = "/".join(f"{w:.2f}" for w in weights)
        return f"loss {' '.join(parts)} | α {alphas}"

    def _val_line(self, val: dict[str, dict[str, float]]) -> str:
        """Validation metrics for the epoch line: per task, or their mean when there are many tasks."""
        if len(self.tasks) <= CONSOLE_TASKS:
            return "  ".join(f"{t.name} {val[t.name][t.metrics[0]]:.2f}" for t in self.tasks)
        metrics = dict.fromkeys(t.metrics[0] for t in self.tasks)
        means = [f"mean {m} {statistics.fmean(val[t.name][m] for t in self.tasks if t.metrics[0] == m):.2f}" for m in metrics]
        return "  ".join(means) + f" ({len(self.tasks)} tasks)"

    def _end_epoch(self, steps: int, train_seconds: float, lr: float) -> None:
        r = self.recipe
        pos = self.position
        assert pos.loss_sum is not None and pos.weight_sum is not None and self.run_dir is not None
        eval_started = time.perf_counter()
        val = evaluate(self.model, self.tasks, self.splits["val"], batch_size=r.train.eval_batch_size)
        test = evaluate(self.model, self.tasks, self.splits["test"], batch_size=r.train.eval_batch_size)
        eval_seconds = time.perf_counter() - eval_started
        score = selection_score(val, self.tasks)
        applied = max(steps - pos.skipped, 1)
        mean_losses = (pos.loss_sum / applied).tolist()
        mean_weights = (pos.weight_sum / applied).tolist()
        times = pos.step_times
        record = {
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
        stats = getattr(self.method, "epoch_stats", None)  # what a method counts per epoch (IMTL-G: negative projections)
        if stats is not None:
            record["method_stats"] = stats()
        end_epoch = getattr(self.method, "end_epoch", None)  # methods paced by epochs (DWA) see its mean losses
        if end_epoch is not None:
            end_epoch(pos.loss_sum.detach() / applied)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, pos.epoch
        self.position = Position(epoch=pos.epoch + 1)
        state = self.checkpoint()
        if self.job.writer:
            append_jsonl(self.run_dir / METRICS, record)
        # last before best: a crash in between leaves a last.pt that knows it is the best (resume re-saves it)
        if pos.epoch % r.train.checkpoint_every == 0 or pos.epoch == r.train.epochs:
            self.save(LAST, state)
            self.last_saved_epoch = pos.epoch
        if improved:
            self.save(BEST, state)
        accs = self._val_line(val)
        mark = " *" if improved else ""
        if pos.skipped:
            mark += f"  [{pos.skipped} non-finite step(s) skipped]"
        self.console.print(
            f"epoch {record['epoch']}/{r.train.epochs}  val {accs}  ({train_seconds:.1f}s train, "
            f"{1000 * (record['step_seconds_median'] or 0):.1f} ms/step){mark}"
        )

    def _write_summary(self) -> None:
        assert self.run_dir is not None
        if not self.job.writer:
            return
        records = read_jsonl(self.run_dir / METRICS)
        best = next(rec for rec in records if rec["epoch"] == self.best_epoch)
        summary = {
            "status": "complete",
            "method": self.recipe.method.name,
            "method_options": self.recipe.method.options,
            "dataset": self.recipe.data.name,
            "seed": self.recipe.train.seed,
            "tasks": [t.name for t in self.tasks],
            "encoder": self.recipe.model.encoder,
            "input_shape": list(input_shape(self.dataset)),
            "normalization": dict(zip(("mean", "std"), input_normalization(self.recipe, self.dataset), strict=True)),
            "device": str(self.device),
            "epochs": self.recipe.train.epochs,
            "skipped_steps": self.skipped_steps,
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
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


class RunLock:
    """An exclusive lock on a run directory, held while it trains (a second trainer is refused).

    `flock` locks die with their process, so a kill -9 never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._handle: Any = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        handle = open(self.run_dir / ".lock", "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunError(f"{self.run_dir} is being trained by another process", hint="wait for it, or stop it first") from None
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


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
