"""`mtl prepare`: raw IDX files -> a verified, reproducible prepared dataset directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from mtlcli import __version__
from mtlcli.data import multimnist, paired, sources
from mtlcli.data.idx import read_idx
from mtlcli.data.registry import DatasetSpec, Prepared, PrepareRequest
from mtlcli.data.store import read_meta, remove_stale_temps, write_prepared
from mtlcli.errors import DataError
from mtlcli.io import sha256_file

NUM_CLASSES = 10


def load_raw(located: sources.LocatedFiles) -> dict[str, np.ndarray]:
    """Read and validate the four IDX files of one source."""
    arrays = {}
    for role, path in located.paths.items():
        arrays[role] = read_idx(path, ndim=3 if role.endswith("images") else 1)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (multimnist.ITEM, multimnist.ITEM):
            raise DataError(
                f"{located.paths[f'{split}_images']}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{located.source.title} {split}: {len(images)} images but {len(labels)} labels "
                f"({located.paths[f'{split}_images'].name} vs {located.paths[f'{split}_labels'].name})"
            )
        if len(labels) and int(labels.max()) >= NUM_CLASSES:
            raise DataError(f"{located.paths[f'{split}_labels']}: label {int(labels.max())} is not in 0..9")
    return arrays


def prepare(
    name: str,
    *,
    data_dir: Path,
    source_dirs: dict[str, Path],
    mirror: str | None = None,
    seed: int = 0,
    size: int = 28,
    force: bool = False,
    console: Console | None = None,
) -> Prepared:
    """Build `data_dir/name` unless it is already there with the same seed and size."""
    console = console or Console(stderr=True)
    if name not in paired.SPECS:
        raise DataError(f"{name!r} is not a MultiMNIST-style dataset", hint=f"choose one of: {', '.join(paired.SPECS)}")
    spec = paired.SPECS[name]
    if size < 1 or size > paired.CANVAS:
        raise DataError(f"--size {size}: must be between 1 and {paired.CANVAS}")
    unknown = set(source_dirs) - set(spec.sources)
    if unknown:
        raise DataError(
            f"--source names {', '.join(sorted(unknown))}, but {spec.name} is built from {', '.join(spec.sources)}"
        )
    target = data_dir / spec.name
    existing = read_meta(target) if target.is_dir() else None
    if existing is not None and not force:
        if existing.get("seed") == seed and existing.get("size") == size:
            return Prepared(path=target, built=False, meta=existing)
        raise DataError(
            f"{target} was prepared with seed {existing.get('seed')}, size {existing.get('size')}; "
            f"pass --force to rebuild it with seed {seed}, size {size}",
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(data_dir, spec.name)

    raw: dict[str, dict[str, np.ndarray]] = {}
    provenance = {}
    for source_name in spec.sources:
        src = sources.SOURCES[source_name]
        located = sources.locate(
            src,
            source_dir=source_dirs.get(source_name),
            cache_dir=data_dir / "raw" / source_name,
            mirror=mirror,
            console=console,
        )
        raw[source_name] = load_raw(located)
        provenance[source_name] = {
            "origin": located.origin,
            "files": {
                role: {"name": p.name, "sha256": sha256_file(p), "official_md5": located.verified[role]}
                for role, p in located.paths.items()
            },
        }
        if not all(located.verified.values()):
            console.print(
                f"[yellow]note:[/] {src.title} files in {located.origin} are not the official release "
                "(MD5 differs); their structure was validated"
            )

    splits = multimnist.build(spec, raw, seed=seed, size=size)
    meta = {
        "dataset": spec.name,
        "description": spec.description,
        "tasks": [
            {"name": "left", "num_classes": NUM_CLASSES, "source": spec.left},
            {"name": "right", "num_classes": NUM_CLASSES, "source": spec.right},
        ],
        "seed": seed,
        "size": size,
        "construction": {
            "canvas": paired.CANVAS,
            "left_at": [0, 0],
            "right_at": [multimnist.OFFSET, multimnist.OFFSET],
            "combine": "max",
            "resize": "nearest (pixel centres)",
            "partner": "a different image of the same split" if spec.left == spec.right else "same split",
            "val_fraction": multimnist.VAL_FRACTION,
        },
        "counts": {split: len(images) for split, (images, _) in splits.items()},
        "sources": provenance,
        "created_by": f"mtlcli {__version__}, numpy {np.__version__}",
    }
    path = write_prepared(data_dir, spec.name, splits, meta)
    return Prepared(path=path, built=True, meta=read_meta(path) or meta)


def paired_sources(spec: DatasetSpec, values: list[str]) -> dict[str, Path]:
    """`--source DIR` (one raw source) or `--source NAME=DIR` (each of two)."""
    needed = paired.SPECS[spec.name].sources
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


def prepare_paired(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of the MultiMNIST family (`mtl prepare multimnist`)."""
    if request.workers is not None:
        raise DataError(f"--workers applies to datasets decoded from images (celeba), not to {spec.name}")
    return prepare(
        spec.name,
        data_dir=request.data_dir,
        source_dirs=paired_sources(spec, request.sources),
        mirror=request.mirror,
        seed=request.seed,
        size=request.size if request.size is not None else spec.default_size,
        force=request.force,
        console=request.console,
    )
