"""The dataset registry: one entry per dataset, the only place that knows a dataset by name.

A `DatasetSpec` says what a dataset's prepared arrays look like (channels, image side, tasks with
their default loss and metrics), its default input normalisation and encoder, and how `mtl prepare`
builds it. The recipe, the trainer, the synthetic stand-in and the reports ask this registry; they
never name a dataset. Adding a dataset = one module under `mtlcli.data` + one entry here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mtlcli.data import multimnist
from mtlcli.errors import DataError

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """A task a dataset offers: its label column's number of classes and the default loss and metrics."""

    name: str
    num_classes: int
    loss: str = "cross_entropy"
    metrics: tuple[str, ...] = ("accuracy",)


@dataclass(frozen=True)
class PrepareRequest:
    """What `mtl prepare` was asked for; each dataset reads the fields that apply to it."""

    data_dir: Path
    sources: list[str] = field(default_factory=list)
    size: int | None = None
    seed: int = 0
    force: bool = False
    mirror: str | None = None
    workers: int | None = None
    console: Console | None = None


@dataclass(frozen=True)
class Prepared:
    """The outcome of a prepare: where the dataset is, whether it was built now, and its meta.json."""

    path: Path
    built: bool
    meta: dict[str, Any]


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry. Prepared arrays: uint8 images [N, H, W] (channels == 1) or [N, H, W, C], and
    labels [N, len(tasks)] in the order of `tasks`."""

    name: str
    description: str
    tasks: tuple[TaskSpec, ...]
    channels: int
    default_size: int
    min_size: int
    max_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_encoder: str
    prepare: Callable[[DatasetSpec, PrepareRequest], Prepared]
    how_to_get: str
    aliases: tuple[str, ...] = ()
    uses_seed: bool = True  # whether `--seed` changes what prepare builds (pairing, validation split)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec | None:
        return next((t for t in self.tasks if t.name == name), None)


# ----------------------------------------------------------------------------- MNIST family
def _paired_sources(spec: DatasetSpec, values: list[str]) -> dict[str, Path]:
    """`--source DIR` (one raw source) or `--source NAME=DIR` (each of two)."""
    needed = multimnist.SPECS[spec.name].sources
    result: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in ("mnist", "fashion-mnist"):
            result[name] = Path(path)
        elif len(needed) == 1:
            result[needed[0]] = Path(value)
        else:
            raise DataError(
                f"--source {value!r}: {spec.name} is built from {' and '.join(needed)}",
                hint="name each source: --source mnist=DIR --source fashion-mnist=DIR",
            )
    return result


def _prepare_paired(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    from mtlcli.data.prepare import prepare

    if request.workers is not None:
        raise DataError(f"--workers applies to datasets decoded from images (celeba), not to {spec.name}")
    result = prepare(
        spec.name,
        data_dir=request.data_dir,
        source_dirs=_paired_sources(spec, request.sources),
        mirror=request.mirror,
        seed=request.seed,
        size=request.size if request.size is not None else spec.default_size,
        force=request.force,
        console=request.console,
    )
    return Prepared(result.path, result.built, result.meta)


def _paired(name: str, aliases: tuple[str, ...] = ()) -> DatasetSpec:
    paired = multimnist.SPECS[name]
    raw = " and ".join(dict.fromkeys({"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[s] for s in paired.sources))
    return DatasetSpec(
        name=name,
        description=paired.description,
        tasks=tuple(TaskSpec(task, 10) for task in multimnist.TASKS),
        channels=1,
        default_size=28,
        min_size=16,
        max_size=multimnist.CANVAS,
        mean=(0.1307,),
        std=(0.3081,),
        default_encoder="multilenet",
        prepare=_prepare_paired,
        how_to_get=f"downloaded by `mtl prepare {name}` ({raw} IDX files; or --source DIR with the raw files)",
        aliases=aliases,
    )


# ----------------------------------------------------------------------------- CelebA
def _prepare_celeba(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    from mtlcli.data.celeba import prepare_celeba

    if len(request.sources) > 1:
        raise DataError("--source: celeba is read from one directory", hint="pass --source DIR once")
    if request.mirror is not None:
        raise DataError("--mirror: CelebA cannot be downloaded by a script", hint="pass the official release with --source DIR")
    result = prepare_celeba(
        data_dir=request.data_dir,
        source=Path(request.sources[0]) if request.sources else None,
        size=request.size if request.size is not None else spec.default_size,
        force=request.force,
        workers=request.workers,
        console=request.console,
    )
    return Prepared(result.path, result.built, result.meta)


CELEBA = DatasetSpec(
    name="celeba",
    description="CelebA aligned faces, 40 binary attributes (Liu et al. 2015; Sener & Koltun 2018)",
    tasks=tuple(TaskSpec(a, 2, "cross_entropy", ("error",)) for a in CELEBA_ATTRIBUTES),
    channels=3,
    default_size=64,
    min_size=32,
    max_size=256,
    # fallback only: `mtl prepare celeba` measures the training split's mean/std into meta.json
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    default_encoder="resnet18-cifar",
    prepare=_prepare_celeba,
    how_to_get=(
        "the official release (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html: img_align_celeba, "
        "list_attr_celeba.txt, list_eval_partition.txt), then `mtl prepare celeba --source DIR`"
    ),
    uses_seed=False,
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _paired("multimnist", ("multi-mnist",)),
        _paired("multifashion", ("multi-fashion",)),
        _paired("multi-fashion-mnist"),
        CELEBA,
    )
}


def canonical_name(name: str) -> str:
    """A registered dataset name (or alias, any case) -> its registry name; DataError otherwise."""
    key = name.lower()
    for spec in DATASETS.values():
        if key == spec.name or key in spec.aliases:
            return spec.name
    close = difflib.get_close_matches(key, list(DATASETS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise DataError(f"unknown dataset {name!r}", hint=f"{hint}choose one of: {', '.join(DATASETS)}")


def get(name: str) -> DatasetSpec:
    return DATASETS[canonical_name(name)]
