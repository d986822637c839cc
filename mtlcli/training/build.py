"""From a recipe to what training needs: device, data, tasks, model, optimiser and scheduler.

Everything `mtl train`, `mtl eval` and `mtl ablate` share to turn a recipe into a model, its data on the
device, and its optimiser; `train.deterministic` turns on deterministic algorithms (`enable_determinism`);
`train.precision`, `train.channels_last` and `train.compile` are checked against the device and this torch
before anything is loaded (`check_execution`) and applied to the model (`prepare_model`).
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtlcli import distributed, methods
from mtlcli.data import registry
from mtlcli.data.device import DeviceSplit
from mtlcli.data.graphs import GraphSplit
from mtlcli.data.registry import resolve_data_dir
from mtlcli.data.store import PreparedDataset, load_prepared, task_target
from mtlcli.data.stream import StreamedSplit
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.errors import MtlError
from mtlcli.methods.registry import default_level
from mtlcli.models import ENCODERS, MultiTaskModel, build_model
from mtlcli.recipe import Recipe
from mtlcli.tasks import Task
from mtlcli.training.multi_input import TaskStreams

DEVICE_DATA_FRACTION = 0.5  # data.placement auto: the data goes to the GPU when it takes at most this share of its free memory


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


def check_execution(recipe: Recipe, device: torch.device) -> None:
    """What the recipe's precision and compilation need of the device and of this torch: one MtlError, before any
    data is read (the recipe itself is validated without torch)."""
    t = recipe.train
    if t.precision == "fp16" and device.type != "cuda":
        raise MtlError(
            f"train.precision fp16 needs a CUDA device, and this run trains on {device}",
            hint="use train.precision: bf16 (autocast on the CPU) or fp32",
        )
    if t.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MtlError(f"train.precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16", hint="use fp16 or fp32")
    if t.compile:
        problem = compile_problem(device)
        if problem is not None:
            raise MtlError(f"train.compile: {problem}", hint="set train.compile: false (eager mode trains the same model)")


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, if it cannot: TorchDynamo unsupported, no Triton for CUDA kernels, or no
    C++ compiler (Inductor builds its CPU kernels and wrappers with one; found as Inductor finds it: $CXX or g++)."""
    from torch import _dynamo

    if not _dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} cannot compile on this Python"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "compiling for CUDA needs Triton, which this torch cannot import"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # torch._inductor.exc.InvalidCxxCompiler and what a broken toolchain raises
        return f"torch.compile needs a working C++ compiler and none was found ($CXX, g++; {type(exc).__name__})"
    return None


def prepare_model(model: MultiTaskModel, recipe: Recipe) -> MultiTaskModel:
    """The model as the recipe runs it: channels-last weights (`train.channels_last`; the loop makes each batch
    channels-last too) and the encoder and every head compiled in place (`train.compile`: `nn.Module.compile`, so
    parameter names and checkpoints are those of the eager model; the method's own step stays eager). Compiled
    dropout draws its masks from Inductor's generator (seeded from torch's, so runs repeat), not eager's masks."""
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.train.compile:
        from torch._functorch import config as functorch_config

        # the methods backward through the heads once per task (retain_graph=True), which compiled backwards that
        # donate their buffers refuse
        functorch_config.donated_buffer = False
        model.encoder.compile()
        for head in model.heads.values():
            head.compile()
    return model


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
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
    entries = {entry["name"]: entry for entry in dataset.meta["tasks"]}
    for t in recipe.tasks:
        target, column = task_target(dataset.meta, t.name)
        outputs = dataset.num_classes[t.name]
        entry = entries[t.name]  # a table's regression task: standardised by the training split's mean and std
        standardize = (float(entry["mean"]), float(entry["std"])) if entry.get("kind") == "regression" else None
        tasks.append(Task(t.name, t.loss, tuple(t.metrics), t.loss_scale, target=target, column=column, num_outputs=outputs,
                          standardize=standardize))  # fmt: skip
    return tasks


def training_steps(n: int, batch_size: int) -> int:
    """Batches per epoch: the last partial batch is kept unless it would hold one sample, which BatchNorm
    cannot normalise in training (the dilated ResNet and the PSP heads would fail on it)."""
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


def check_distributable(recipe: Recipe, job: distributed.Distributed) -> None:
    """Methods that stay the same algorithm across ranks (see mtlcli.distributed); others are refused."""
    name = recipe.method.name
    reason = distributed.refusal(name, recipe.method.options)
    if reason is not None:
        raise MtlError(
            f"method {name} does not run on {job.world} processes: {reason}",
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


def dataset_spec(recipe: Recipe, dataset: PreparedDataset) -> registry.DatasetSpec:
    """The recipe's dataset as the registry describes it (a table: completed from its prepared meta.json)."""
    spec = registry.get(recipe.data.name)
    if not spec.from_table:
        return spec
    return registry.table_spec(spec, dataset.meta, recipe.data.prepared or spec.name, where=dataset.path / "meta.json")


def load_dataset(recipe: Recipe, data_dir: Path | None = None) -> PreparedDataset:
    if recipe.data.synthetic:  # random tensors of the recipe's shapes: no download, for timing and smoke tests
        return synthetic_dataset(recipe.data.name, size=recipe.data.size, seed=recipe.train.seed)
    spec = registry.get(recipe.data.name)
    prepared = recipe.data.prepared or recipe.data.name
    hint = registry.prepare_table_hint(prepared) if spec.from_table else None
    dataset = load_prepared(resolve_data_dir(data_dir or recipe.data.dir), prepared, hint=hint)
    size = int(dataset.meta["size"])
    if recipe.data.size is not None and recipe.data.size != size and not dataset.is_graph:
        height, width = dataset.images["train"].shape[1:3]
        raise MtlError(
            f"the recipe wants images {recipe.data.size} pixels high, {dataset.path} holds {height}x{width}",
            hint=f"run `mtl prepare {recipe.data.name} --size {recipe.data.size} --force`",
        )
    return dataset


def input_normalization(recipe: Recipe, dataset: PreparedDataset) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std): the recipe's, else the prepared data's measured ones, else the registry's."""
    spec = dataset_spec(recipe, dataset)

    def pick(key: str) -> list[float]:
        value = getattr(recipe.data, key)
        if value is None:
            value = dataset.meta.get(key) or list(getattr(spec, key))
        values = [float(v) for v in (value if isinstance(value, list) else [value])]
        return values * spec.channels if len(values) == 1 else values

    return pick("mean"), pick("std")


def images_fit_on(device: torch.device, dataset: PreparedDataset, targets: set[str]) -> bool:
    """Whether the images and the `targets` arrays take at most `DEVICE_DATA_FRACTION` of a CUDA device's free
    memory (on the CPU the device is host memory: they stay memory-mapped there and fit)."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return _data_bytes(dataset, targets) <= DEVICE_DATA_FRACTION * free


def _data_bytes(dataset: PreparedDataset, targets: set[str]) -> int:
    arrays = [*dataset.images.values(), *(split[name] for split in dataset.targets.values() for name in targets)]
    return sum(a.nbytes for a in arrays)


def placement(recipe: Recipe, dataset: PreparedDataset, device: torch.device, targets: set[str]) -> str:
    """`data.placement` resolved: `device` or `stream`; `auto` streams only what does not fit on a GPU."""
    chosen = recipe.data.placement
    if chosen != "auto":
        return chosen
    return "device" if images_fit_on(device, dataset, targets) else "stream"


def graph_splits(recipe: Recipe, dataset: PreparedDataset, device: torch.device) -> dict[str, GraphSplit]:
    """A graph dataset's splits on the device (molecules are small: QM9 takes about 0.2 GB)."""
    used = {task_target(dataset.meta, t.name)[0] for t in recipe.tasks}

    def tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {key: torch.from_numpy(np.ascontiguousarray(a)) for key, a in arrays.items()}

    return {
        split: GraphSplit.create(
            tensors(dataset.graphs[split]), tensors({k: a for k, a in dataset.targets[split].items() if k in used}), device
        )
        for split in ("train", "val", "test")
    }


def device_splits(
    recipe: Recipe, dataset: PreparedDataset, device: torch.device
) -> dict[str, DeviceSplit | StreamedSplit | GraphSplit]:
    """The three splits where `data.placement` puts them: on the device (a `DeviceSplit`; on the CPU its arrays
    stay memory-mapped) or streamed from host memory (a `StreamedSplit`, its batches read ahead); a graph
    dataset's on the device (`GraphSplit`)."""
    if dataset.is_graph:
        return dict(graph_splits(recipe, dataset, device))
    mean, std = input_normalization(recipe, dataset)
    used = {task_target(dataset.meta, t.name)[0] for t in recipe.tasks}  # arrays of tasks not trained stay on disk
    streamed = placement(recipe, dataset, device, used) == "stream"
    if streamed:
        return {split: _streamed_split(dataset, split, used, mean, std, device) for split in ("train", "val", "test")}
    try:
        return {split: _device_split(dataset, split, used, mean, std, device) for split in ("train", "val", "test")}
    except torch.cuda.OutOfMemoryError:
        gib = _data_bytes(dataset, used) / 2**30
        raise MtlError(
            f"data.placement: device, but the prepared data ({gib:.1f} GiB) does not fit on {device}",
            hint="set data.placement: stream (or auto) to read the batches from host memory",
        ) from None


def _device_split(
    dataset: PreparedDataset, split: str, used: set[str], mean: list[float], std: list[float], device: torch.device
) -> DeviceSplit:
    kinds = dataset.target_kinds
    targets = {}
    for name, array in dataset.targets[split].items():
        if name not in used:
            continue
        if kinds[name] == "class":  # small: on the device, as int64
            targets[name] = torch.from_numpy(array.astype(np.int64)).to(device)
        else:
            targets[name] = torch.from_numpy(array).to(device)
    return DeviceSplit.create(torch.from_numpy(dataset.images[split]).to(device), targets, mean, std, device)


def _streamed_split(
    dataset: PreparedDataset, split: str, used: set[str], mean: list[float], std: list[float], device: torch.device
) -> StreamedSplit:
    kinds = dataset.target_kinds
    targets = {
        name: torch.from_numpy(array.astype(np.int64) if kinds[name] == "class" else array)
        for name, array in dataset.targets[split].items()
        if name in used
    }
    streamed = StreamedSplit.create(torch.from_numpy(dataset.images[split]), targets, mean, std, device)
    streamed.source = f"{dataset.path} ({split})"
    return streamed


def input_shape(dataset: PreparedDataset) -> tuple[int, int, int]:
    """(channels, height, width) of the dataset's images; (node features, 1, 1) of a graph dataset's."""
    if dataset.is_graph:
        return (int(dataset.graphs["train"]["nodes"].shape[1]), 1, 1)
    shape = dataset.images["train"].shape[1:]
    return (1, *shape) if len(shape) == 2 else (shape[2], shape[0], shape[1])


def make_model(recipe: Recipe, dataset: PreparedDataset) -> MultiTaskModel:
    classes = dataset.num_classes
    encoder = recipe.model.encoder or dataset_spec(recipe, dataset).default_encoder
    problem = ENCODERS[encoder].input_problem(input_shape(dataset)) if encoder in ENCODERS else None  # else a plug-in
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


def representation_refusal(dataset: str, method: str, options: dict[str, Any]) -> MtlError | None:
    """Why `method` with `options` does not run on dataset `dataset` when it is multi-input, or None.

    Methods that take the task gradients w.r.t. z (`representation` level) are refused there: each task's loss
    depends on its own rows of z only, so the gradients lie on disjoint rows, their Gram matrix is diagonal and
    the min-norm / projection rules built on it see no conflict between the tasks at all (MGDA-UB would become
    inverse-squared-norm weighting, GradDrop the plain sum). The shared-parameter level applies unchanged: there
    every task's gradient is over the same parameters."""
    if not registry.get(dataset).multi_input or method not in methods.REGISTRY:
        return None
    if options.get("level", default_level(method)) != "representation":
        return None
    info = methods.REGISTRY[method]
    fix = (
        f"use method {info.fixed_level_of[0]} (level shared)"
        if info.fixed_level_of
        else "set method.options.level: shared"
        if info.published_level() is not None
        else "choose a method at the shared-parameter level or a loss weighting"
    )
    return MtlError(
        f"method {method} works at level representation, which has no meaning on multi-input dataset {dataset}: "
        "each task's gradient w.r.t. z lies on its own rows (a diagonal Gram matrix)",
        hint=fix,
    )


def check_multi_input(recipe: Recipe) -> None:
    """The recipe's method refused on a multi-input dataset (`representation_refusal`): one error, before loading."""
    refusal = representation_refusal(recipe.data.name, recipe.method.name, recipe.method.options)
    if refusal is not None:
        raise refusal


def multi_input_streams(
    recipe: Recipe, dataset: PreparedDataset, tasks: list[Task], train: Any, job: distributed.Distributed
) -> TaskStreams | None:
    """Each task's rows of the training split when the dataset is multi-input (`DatasetSpec.multi_input`), else None;
    every task has a full batch, and every rank a row of each task in every step."""
    if not registry.get(recipe.data.name).multi_input:
        return None
    streams = TaskStreams.of([t.target_of(train.targets) for t in tasks])
    batch = recipe.train.batch_size
    for t, rows in zip(tasks, streams.rows, strict=True):
        if len(rows) < batch:
            raise MtlError(
                f"task {t.name} of {dataset.path} has {len(rows)} training images, fewer than train.batch_size {batch}",
                hint=f"set train.batch_size to at most {len(rows)} (every step takes a full batch of every task)",
            )
    if job.active and batch < job.world:
        raise MtlError(
            f"{job.world} processes need at least {job.world} images of every task in a step; train.batch_size is {batch}",
            hint="raise train.batch_size (images of each task in a step), or use fewer processes",
        )
    return streams
