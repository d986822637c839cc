"""`mtl ablate`: what one training step of each method costs, on the same model, batch and device.

Every method starts from the same initial weights and the same batch, in one process: a warm-up,
then the median of N timed steps (zero_grad + forward + the method's backward + optimiser step),
with CUDA synchronised around each step on a GPU. Reported absolute and as a ratio to uniform, with
the peak memory where the device reports it (CUDA).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mtlcli import __version__, methods
from mtlcli.data import registry
from mtlcli.data.device import DeviceSplit
from mtlcli.data.graphs import GraphSplit, first_molecules
from mtlcli.data.store import PreparedDataset
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.errors import MtlError
from mtlcli.methods._representation import representation_grads
from mtlcli.methods.base import Step
from mtlcli.recipe import MethodConfig, Recipe, parse_yaml
from mtlcli.report.tables import Table
from mtlcli.training.build import (
    check_execution,
    input_normalization,
    load_dataset,
    make_model,
    make_optimizer,
    prepare_model,
    representation_refusal,
    resolve_device,
    tasks_of,
)
from mtlcli.training.multi_input import TaskStreams
from mtlcli.training.precision import Precision

KIND = "mtl-ablation"
BLOCK = 5  # timed steps per method before the next method takes its turn
# The timing-relevant methods, in the order the table shows them; names not registered are skipped. Each
# Gram-based method at its published level (its default: the shared parameters, T backwards) and, next to it,
# at the representation (MGDA-UB's one-backward variant); FAMO and Nash-MTL with their cheaper options too.
BOTH_LEVELS = (
    "upgrad", "dualproj", "cagrad", "aligned-mtl", "fairgrad", "config", "excess-mtl", "nash-mtl", "gradvac", "db-mtl", "moco",
    "modo", "sdmgrad",
)  # fmt: skip
DEFAULT_METHODS = (
    "uniform",
    "mgda-ub",
    "mgda:grads=loop",
    "mgda:grads=batched",
    "imtl-g",
    "imtl-g-exact",
    "pcgrad",
    "gradnorm",
    *(f"{name}{variant}" for name in BOTH_LEVELS for variant in ("", ":level=representation")),
    "nash-mtl:update_weights_every=4",
    "graddrop",
    "famo",
    "famo:update=next-batch",
    "dwa",
    "rlw",
    "stch",
)


@dataclass(frozen=True)
class MethodSpec:
    """`name[:key=value[:key=value]]`, e.g. `mgda:grads=batched` (values parsed as YAML)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name} ({opts})" if opts else self.name

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        name, *assignments = text.strip().split(":")
        options: dict[str, Any] = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise MtlError(f"--methods {text!r}: {item!r} is not key=value", hint="e.g. --methods mgda:grads=batched")
            options[key.strip()] = parse_yaml(value, source=f"--methods {text}")
        if not name:
            raise MtlError(f"--methods {text!r}: no method name")
        return cls(name, options)


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a,static:weights=[0.5,0.5]' -> ['a', 'static:weights=[0.5,0.5]']."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth <= 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_methods(items: list[str] | None) -> tuple[list[MethodSpec], list[str]]:
    """The methods to time and notes on skipped defaults; explicit unknown methods are errors."""
    if not items:
        specs = [MethodSpec.parse(s) for s in DEFAULT_METHODS]
        kept = [s for s in specs if s.name in methods.REGISTRY and _valid(s)]
        notes = [f"{s.label}: not available in this build, skipped" for s in specs if s not in kept]
        return kept, notes
    specs = [MethodSpec.parse(part) for item in items for part in split_top_level(item) if part.strip()]
    for spec in specs:
        if spec.name not in methods.REGISTRY:
            raise MtlError(f"unknown method {spec.name!r}", hint=f"choose from: {', '.join(methods.REGISTRY)}")
        problems = methods.option_problems(spec.name, spec.options)
        if problems:
            text = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems)
            raise MtlError(f"--methods {spec.label}: {text}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise MtlError("--methods lists a method twice")
    return specs, []


def refused_on(recipe: Recipe, specs: list[MethodSpec]) -> tuple[list[MethodSpec], list[str]]:
    """The methods that run on the recipe's dataset, and a note for each refused there (`representation_refusal`:
    the representation level on a multi-input dataset)."""
    kept, notes = [], []
    for spec in specs:
        options = {**(recipe.method.options if spec.name == recipe.method.name else {}), **spec.options}
        refusal = representation_refusal(recipe.data.name, spec.name, options)
        if refusal is None:
            kept.append(spec)
        else:
            notes.append(f"{spec.label}: skipped, {refusal.message.split(': ', 1)[0]} ({refusal.hint})")
    return kept, notes


def _valid(spec: MethodSpec) -> bool:
    return not methods.option_problems(spec.name, spec.options)


def _synchronize(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def ablation_batch(recipe: Recipe) -> tuple[PreparedDataset, DeviceSplit | GraphSplit]:
    """The dataset (for the model's shapes) and a one-batch train split: real data, or random tensors."""
    batch = recipe.train.batch_size
    multi = registry.get(recipe.data.name).multi_input  # a batch of every task (mtlcli.training.multi_input)
    if recipe.data.synthetic:
        counts = {"train": batch * (len(recipe.tasks) if multi else 1), "val": 1, "test": 1}
        dataset = synthetic_dataset(recipe.data.name, size=recipe.data.size, seed=recipe.train.seed, counts=counts)
    else:
        dataset = load_dataset(recipe)
    if dataset.is_graph:
        graphs = {key: torch.from_numpy(np.ascontiguousarray(a)) for key, a in dataset.graphs["train"].items()}
        values = {name: torch.from_numpy(np.ascontiguousarray(a[:batch])) for name, a in dataset.targets["train"].items()}
        return dataset, GraphSplit.create(first_molecules(graphs, batch), values, torch.device("cpu"))
    rows: slice | np.ndarray = slice(0, batch)
    if multi:  # the first batch of every task, interleaved as the trainer's steps are
        labels = torch.from_numpy(dataset.targets["train"]["labels"].astype(np.int64))
        streams = TaskStreams.of([t.target_of({"labels": labels}) for t in tasks_of(recipe, dataset)])
        rows = streams.plan(batch, 1, torch.Generator().manual_seed(recipe.train.seed))[0].numpy()
    images = torch.from_numpy(np.ascontiguousarray(dataset.images["train"][rows]))
    kinds = dataset.target_kinds
    targets = {
        name: torch.from_numpy(np.ascontiguousarray(array[rows]).astype("int64" if kinds[name] == "class" else array.dtype))
        for name, array in dataset.targets["train"].items()
    }
    mean, std = input_normalization(recipe, dataset)
    split = DeviceSplit.create(images, targets, mean, std, torch.device("cpu"))
    return dataset, split


@dataclass
class _Contender:
    """One method under test with its own copy of the model (same initial weights) and optimiser."""

    spec: MethodSpec
    method: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    peak_mib: float | None = None


def run_ablation(
    recipe: Recipe,
    specs: list[MethodSpec],
    *,
    steps: int = 20,
    warmup: int = 5,
    block: int = BLOCK,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every method on the same model, batch and device; the JSON payload `mtl ablate` writes.

    The timed steps run in blocks of `block` steps, method after method, round after round, so that
    a machine busy with other work slows every method alike instead of whichever ran at that moment.
    """
    if steps < 1 or warmup < 0 or block < 1:
        raise MtlError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    device = resolve_device(recipe.train.device)
    if recipe.train.precision == "fp16":
        raise MtlError("mtl ablate times fp32 and bf16 steps, not fp16's loss scaler", hint="--set train.precision=bf16")
    check_execution(recipe, device)
    precision = Precision(recipe.train.precision, device)
    sync = _synchronize(device)
    cuda = device.type == "cuda"
    dataset, split = ablation_batch(recipe)
    x, y = split.batch(slice(None))
    x, y = x.to(device), {name: t.to(device) for name, t in y.items()}
    if recipe.train.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    tasks = tasks_of(recipe, dataset)
    contenders = []
    for spec in specs:
        options = dict(recipe.method.options) if spec.name == recipe.method.name else {}
        options.update(spec.options)
        method = methods.build(spec.name, **options)
        setup = getattr(method, "setup", None)  # methods with learnable state create it here
        if setup is not None:
            setup(len(tasks), device)
        for p in method.parameters():
            p.data = p.data.to(device)
        as_trained = recipe.model_copy(update={"method": MethodConfig(name=spec.name, **options)})
        torch.manual_seed(recipe.train.seed)  # the same initial weights for every method
        model = make_model(as_trained, dataset).to(device).train()  # the method's own architecture, if any
        model = prepare_model(model, recipe)  # channels_last, compile
        optimizer = make_optimizer(recipe, list(model.parameters()), method.parameters())
        contenders.append(_Contender(spec, method, model, optimizer))

    def losses_of(outputs: dict[str, torch.Tensor], rows: slice | None = None) -> list[torch.Tensor]:
        """The task losses of the batch, or of some of its rows (`Step.samples`)."""
        with precision.autocast():
            if rows is None:
                losses = [t.loss_scale * t.compute_loss(outputs[t.name], t.target_of(y)) for t in tasks]
            else:
                losses = [t.loss_scale * t.compute_loss(outputs[t.name][rows], t.target_of(y)[rows]) for t in tasks]
        return precision.losses(losses, None)

    @torch.no_grad()
    def losses_after(c: _Contender) -> torch.Tensor:
        with precision.autocast():
            outputs = c.model(x)[1]
        return torch.stack(losses_of(outputs))

    def step(c: _Contender) -> None:
        c.optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            z, outputs = c.model(x)
        c.method.backward(Step.of(c.model, z, losses_of(outputs), lambda rows: losses_of(outputs, rows)))
        c.optimizer.step()
        c.method.after_update(lambda: losses_after(c))  # as the trainer: FAMO re-evaluates the batch here

    torch.manual_seed(recipe.train.seed)
    for c in contenders:
        for _ in range(warmup):
            step(c)
    remaining = steps
    while remaining > 0:
        size = min(block, remaining)
        for c in contenders:
            c.optimizer.zero_grad(set_to_none=True)
            sync()
            if cuda:
                resident = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(size):
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                step(c)
                sync()
                c.times.append(time.perf_counter() - start)
                c.cpu_times.append(time.process_time() - cpu_start)
            if cuda:
                peak = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
                c.peak_mib = max(c.peak_mib or 0.0, peak)
        remaining -= size
    rows = []
    for c in contenders:
        rows.append(
            {
                "label": c.spec.label,
                "method": c.spec.name,
                "options": c.spec.options,
                "median_ms": statistics.median(c.times) * 1000.0,
                "mean_ms": statistics.fmean(c.times) * 1000.0,
                "min_ms": min(c.times) * 1000.0,
                "max_ms": max(c.times) * 1000.0,
                "cpu_median_ms": statistics.median(c.cpu_times) * 1000.0,
                "peak_mib": c.peak_mib,
                "timed_steps": len(c.times),
            }
        )
        if progress is not None:
            progress(f"{c.spec.label}: {rows[-1]['median_ms']:.2f} ms/step")
    solve = _min_norm_timing(contenders, x, lambda outputs: losses_of(outputs), sync)
    base = next((r["median_ms"] for r in rows if r["method"] == "uniform" and not r["options"]), None)
    for row in rows:
        row["ratio"] = row["median_ms"] / base if base else None
    cpu_base = next((r["cpu_median_ms"] for r in rows if r["method"] == "uniform" and not r["options"]), None)
    for row in rows:
        row["cpu_ratio"] = row["cpu_median_ms"] / cpu_base if cpu_base else None
    return {
        "kind": KIND,
        "dataset": recipe.data.prepared or recipe.data.name,
        "synthetic": recipe.data.synthetic,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": recipe.train.batch_size,
        "precision": recipe.train.precision,
        "tasks": [t.name for t in tasks],
        "warmup": warmup,
        "steps": steps,
        "block": block,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"mtlcli": __version__, "torch": torch.__version__},
        "methods": rows,
        "min_norm": solve,
    }


SOLVES = 200  # min-norm solves timed for the caption


def _min_norm_timing(
    contenders: list[_Contender],
    x: torch.Tensor,
    losses_of: Callable[[dict[str, torch.Tensor]], list[torch.Tensor]],
    sync: Callable[[], None],
) -> dict[str, Any] | None:
    """The median time of mgda-ub's min-norm solve on the Gram matrix of this batch's dL_t/dz (after
    the timed steps, on mgda-ub's own model): the part of a step that grows with T^2 or worse."""
    ub = next((c for c in contenders if c.spec.name == "mgda-ub"), None)
    if ub is None:
        return None
    z, outputs = ub.model(x)
    step = Step.of(ub.model, z, losses_of(outputs))
    gram = representation_grads(step).gram().detach()
    losses = step.losses.detach()
    times = []
    for i in range(SOLVES + 5):
        sync()
        start = time.perf_counter()
        ub.method.weights(losses, gram)
        sync()
        if i >= 5:
            times.append(time.perf_counter() - start)
    options = ub.method.options
    return {
        "tasks": int(gram.shape[0]),
        "solver": options.solver,
        "normalization": options.normalization,
        "solves": SOLVES,
        "median_ms": statistics.median(times) * 1000.0,
    }


def _speedups(payload: dict[str, Any]) -> str:
    """Exact MGDA's step over MGDA-UB's (the paper's Table 2 speed-up) and the min-norm solve time."""
    rows = {r["label"]: r["median_ms"] for r in payload["methods"]}
    ub = rows.get("mgda-ub")
    parts = []
    if ub:
        exact = [(label, ms) for label, ms in rows.items() if label.split(" ")[0] == "mgda"]
        if exact:
            parts.append("exact MGDA / MGDA-UB: " + ", ".join(f"x{ms / ub:.2f} ({label})" for label, ms in exact))
    solve = payload.get("min_norm")
    if solve:
        parts.append(
            f"min-norm solve ({solve['solver']}, T = {solve['tasks']}, normalization {solve['normalization']}): "
            f"median {solve['median_ms']:.3f} ms over {solve['solves']} solves"
        )
    return "".join(f"; {p}" for p in parts)


def ablation_table(payload: dict[str, Any]) -> Table:
    """The measured step costs as a compare table."""
    cpu = not payload["device"].startswith("cuda")
    rows = []
    for r in payload["methods"]:
        row = {
            "method": r["label"],
            "ms/step": r["median_ms"],
            "× uniform": r["ratio"] if r["ratio"] is not None else math.nan,
            "min ms": r["min_ms"],
            "max ms": r["max_ms"],
        }
        if cpu and "cpu_median_ms" in r:  # CPU time: what a step costs whatever else runs on the machine
            row["CPU ms/step"] = r["cpu_median_ms"]
            row["CPU × uniform"] = r["cpu_ratio"] if r.get("cpu_ratio") is not None else math.nan
        else:
            row["peak MiB"] = r["peak_mib"] if r["peak_mib"] is not None else math.nan
        rows.append(row)
    data = "random tensors of its shapes" if payload["synthetic"] else "its real data"
    device = payload["device"]
    caption = (
        f"{payload['dataset']} ({data}), batch {payload['batch_size']}, {len(payload['tasks'])} tasks, on {device} "
        f"({payload['device_name']}, {payload['threads']} threads): median of {payload['steps']} steps after "
        f"{payload['warmup']} warm-up steps{_speedups(payload)}; every method starts from the same initial weights on the "
        "same batch; a step is zero_grad + forward + the method's backward + optimiser step (+ the re-evaluation "
        "a method asks for after it, FAMO's); methods take turns in blocks of "
        f"{payload.get('block', BLOCK)} steps, so a busy machine slows them alike"
        + (
            "; CUDA synchronised around each step; peak MiB: the most memory a step allocates beyond what was resident."
            if device.startswith("cuda")
            else (
                "; CPU ms/step: the process's CPU time per step (median), robust to other load on the machine"
                if any("cpu_median_ms" in r for r in payload["methods"])
                else ""
            )
            + "; peak memory is not reported on the CPU."
        )
    )
    key = f"ablation-{payload['dataset']}-{device.replace(':', '')}"
    return Table(key, f"{payload['dataset']}: step-cost ablation ({device})", caption, pd.DataFrame(rows))


def find_ablations(roots: list[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Ablation payloads (`ablation-*.json` written by `mtl ablate`) under `roots`."""
    found, warnings = [], []
    paths = sorted({p for root in roots for p in ([root] if root.is_file() else root.rglob("ablation-*.json"))})
    for path in paths:
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            warnings.append(f"skipped {path}: {exc}")
            continue
        if isinstance(payload, dict) and payload.get("kind") == KIND:
            found.append(payload)
    return found, warnings
