"""Prepared datasets on disk: written atomically as one directory, verified when loaded."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.data.registry import resolve_data_dir as resolve_data_dir  # its home is the registry (tables need it torch-free)
from mtlcli.errors import DataError
from mtlcli.io import fsync_dir, sha256_file, write_json_atomic

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
META = "meta.json"


# The kinds of target array a prepared dataset can hold (meta.json "targets": {name: {"kind": ...}}):
#   class         uint8 [N, T]: one class label per sample and task (task i reads column i); the default
#   segmentation  uint8 [N, H, W]: a class per pixel, IGNORE_INDEX where unlabelled
#   offset        float32 [N, 2, H, W]: per-pixel (dy, dx) in pixels, NaN where undefined
#   disparity, depth  float32 [N, H, W], NaN where invalid
#   normal        float32 [N, 3, H, W]: unit surface normals (x, y, z), NaN where invalid
#   label         int64 [N]: one task's class per sample, MISSING_LABEL (-1) where the sample has none (tables)
#   value         float32 [N]: one task's regression target per sample in the table's units, NaN where missing (tables)
TARGET_KINDS = ("class", "segmentation", "offset", "disparity", "depth", "normal", "label", "value")
MISSING_LABEL = -1
# A graph dataset (meta.json "input": "graph") holds molecules instead of images, per split: node features uint8 [V, F],
# positions float32 [V, 3], atoms per molecule int64 [N], bonds uint8 [E, 3] (source, target, bond type; indices
# local to their molecule, both directions) and bonds per molecule int64 [N]; molecule i's nodes follow molecule
# i - 1's. Its targets are per molecule (kind "value", [N]).
GRAPH_ARRAYS = ("nodes", "positions", "atoms", "bonds", "bond_counts")
IGNORE_INDEX = 255
LEGACY_TARGETS = {"labels": {"kind": "class"}}


def target_specs(meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """meta.json's target arrays {name: {"kind": ...}}; datasets of class labels only may omit it."""
    targets = meta.get("targets")
    return targets if isinstance(targets, dict) else LEGACY_TARGETS


def task_target(meta: dict[str, Any], task: str) -> tuple[str, int | None]:
    """(target array, column or None) that a task of a prepared dataset reads."""
    names = [t["name"] for t in meta["tasks"]]
    entry = meta["tasks"][names.index(task)]
    if "target" in entry:
        return entry["target"], None
    return "labels", names.index(task)


@dataclass
class PreparedDataset:
    """A prepared dataset: uint8 images [N, H, W] or [N, H, W, C] and target arrays per split, and its meta.json.

    `targets[split]` maps each target name of meta.json (`labels` for class-label datasets) to its array.
    Arrays loaded from disk are memory-mapped: a dataset larger than RAM trains from the page cache.
    """

    path: Path
    meta: dict[str, Any]
    images: dict[str, np.ndarray]
    targets: dict[str, dict[str, np.ndarray]]
    graphs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # a graph dataset's arrays (GRAPH_ARRAYS)

    @property
    def is_graph(self) -> bool:
        return bool(self.graphs)

    def count(self, split: str) -> int:
        """Samples (images or molecules) of a split."""
        return len(self.graphs[split]["atoms"]) if self.graphs else len(self.images[split])

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """The class-label array [N, T] of each split (class-label datasets)."""
        return {split: arrays["labels"] for split, arrays in self.targets.items()}

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.meta["tasks"]]

    @property
    def num_classes(self) -> dict[str, int]:
        return {t["name"]: int(t["num_classes"]) for t in self.meta["tasks"]}

    @property
    def target_kinds(self) -> dict[str, str]:
        return {name: spec["kind"] for name, spec in target_specs(self.meta).items()}


def write_prepared(
    data_dir: Path,
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]] | dict[str, dict[str, np.ndarray]],
    meta: dict[str, Any],
) -> Path:
    """Write splits + meta.json into a temp dir, then rename it to `data_dir/name` (replacing any).

    `splits[split]` is (images, labels) or {"images": ..., target: ...}; each array goes to `<split>_<key>.npy`.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with building(data_dir, name) as tmp:
        for split, arrays in splits.items():
            named = arrays if isinstance(arrays, dict) else dict(zip(("images", "labels"), arrays, strict=True))
            for key, array in named.items():
                with open(tmp / f"{split}_{key}.npy", "wb") as handle:
                    np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        return install_prepared(tmp, data_dir / name, meta)


@contextlib.contextmanager
def building(data_dir: Path, name: str) -> Iterator[Path]:
    """A fresh temporary directory `data_dir/.NAME.tmp-...` to build a prepared dataset in (then renamed into
    place by `install_prepared`), removed if the block raises: nothing half-written is left that `train` reads."""
    partial = data_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def install_prepared(partial: Path, final: Path, meta: dict[str, Any]) -> Path:
    """Finish a prepared dataset built in `partial` (every `*.npy` in it) and rename it to `final` in one step.

    Each array is fsynced and checksummed into meta.json (with the format version), then the directory
    replaces `final`; an old `final` is removed only after the rename, so a crash leaves one or the other.
    """
    files = {}
    for path in sorted(partial.glob("*.npy")):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
        files[path.name] = sha256_file(path)
    write_json_atomic(partial / META, {**meta, "format": FORMAT_VERSION, "files": files})
    fsync_dir(partial)
    replace_directory(partial, final)
    return final


def replace_directory(complete: Path, final: Path) -> None:
    """Rename the complete directory to `final` in one step; an old `final` is removed only after that."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(complete, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def existing_meta(target: Path, *, size: int, seed: int | None, force: bool) -> dict[str, Any] | None:
    """meta.json of `target` when it was prepared with this size and seed (and not --force); None when it is
    absent, unreadable or forced; a DataError saying to pass --force when it was prepared otherwise."""
    existing = read_meta(target) if target.is_dir() else None
    if existing is None or force:
        return None
    if existing.get("size") == size and existing.get("seed") == seed:
        return existing
    with_seed = seed is not None
    was = f"size {existing.get('size')}" + (f" and seed {existing.get('seed')}" if with_seed else "")
    wanted = f"size {size}" + (f" and seed {seed}" if with_seed else "")
    raise DataError(f"{target} was prepared with {was}; pass --force to rebuild it with {wanted}")


@contextlib.contextmanager
def exclusive_prepare(data_dir: Path, name: str) -> Iterator[None]:
    """One `mtl prepare NAME` at a time per data dir: an flock on `.NAME.lock`, released when its process dies."""
    with open(data_dir / f".{name}.lock", "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another `mtl prepare {name}` is writing in {data_dir}", hint="wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_stale_temps(data_dir: Path, name: str) -> None:
    """Remove temp dirs left by interrupted prepares whose process is gone."""
    for stale in data_dir.glob(f".{name}.tmp-*"):
        try:
            pid = int(stale.name.split("tmp-")[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_meta(path: Path) -> dict[str, Any] | None:
    """meta.json of a prepared dataset dir, or None when there is none (or it is unreadable or malformed)."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return meta if isinstance(meta, dict) and _meta_shape_ok(meta) else None


def _meta_shape_ok(meta: dict[str, Any]) -> bool:
    """The keys training relies on: format, files {name: sha256}, size, tasks [{name, num_classes}]."""
    if meta.get("format") != FORMAT_VERSION:
        return True  # another format: load_prepared says so
    files, tasks, size = meta.get("files"), meta.get("tasks"), meta.get("size")
    return (
        isinstance(files, dict)
        and all(isinstance(v, str) for v in files.values())
        and isinstance(size, int)
        and isinstance(tasks, list)
        and all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("num_classes"), int) for t in tasks)
    )


def load_prepared(data_dir: Path, name: str, *, verify: bool = True, hint: str | None = None) -> PreparedDataset:
    """Load a prepared dataset, checking every file against the sha256 in meta.json; `hint`: how to prepare it."""
    path = data_dir / name
    where = f" (with --data-dir {data_dir})" if str(data_dir) != "data" else ""
    prepare_hint = (hint or f"run `mtl prepare {name}` first") + where
    if not path.is_dir():
        raise DataError(f"dataset {name} is not prepared in {data_dir}/", hint=prepare_hint)
    meta = read_meta(path)
    if meta is None or meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{path} has no valid {META} (missing, corrupt or another format)", hint=f"{prepare_hint}, with --force")
    specs = target_specs(meta)
    images: dict[str, np.ndarray] = {}
    targets: dict[str, dict[str, np.ndarray]] = {}
    if meta.get("input") == "graph":
        graphs: dict[str, dict[str, np.ndarray]] = {}
        for split in SPLITS:
            graphs[split] = {key: _load_array(path, meta, f"{split}_{key}.npy", verify, prepare_hint) for key in GRAPH_ARRAYS}
            targets[split] = {key: _load_array(path, meta, f"{split}_{key}.npy", verify, prepare_hint) for key in specs}
            _check_graph_shapes(path, meta, split, graphs[split], targets[split], f"{prepare_hint}, with --force")
        return PreparedDataset(path=path, meta=meta, images=images, targets=targets, graphs=graphs)
    for split in SPLITS:
        images[split] = _load_array(path, meta, f"{split}_images.npy", verify, prepare_hint)
        targets[split] = {key: _load_array(path, meta, f"{split}_{key}.npy", verify, prepare_hint) for key in specs}
        _check_shapes(path, meta, split, images[split], targets[split], prepare_hint)
    return PreparedDataset(path=path, meta=meta, images=images, targets=targets)


def _load_array(path: Path, meta: dict[str, Any], fname: str, verify: bool, prepare_hint: str) -> np.ndarray:
    fpath = path / fname
    expected = meta["files"].get(fname)
    if expected is None or not fpath.is_file():
        raise DataError(f"{fpath} is missing", hint=f"{prepare_hint}, with --force")
    if verify and sha256_file(fpath) != expected:
        raise DataError(f"{fpath} is corrupt (sha256 differs from meta.json)", hint=f"{prepare_hint}, with --force")
    try:  # memory-mapped (copy-on-write, so torch can wrap it): pages are read when a batch needs them
        return np.load(fpath, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {fpath}: {exc}", hint=f"{prepare_hint}, with --force") from None


def _expected_shape(kind: str, n: int, ntasks: int, hw: tuple[int, ...]) -> tuple[int, ...] | None:
    return {
        "class": (n, ntasks),
        "segmentation": (n, *hw),
        "offset": (n, 2, *hw),
        "disparity": (n, *hw),
        "depth": (n, *hw),
        "normal": (n, 3, *hw),
        "label": (n,),
        "value": (n,),
    }.get(kind)


def _check_shapes(
    path: Path, meta: dict[str, Any], split: str, images: np.ndarray, targets: dict[str, np.ndarray], prepare_hint: str
) -> None:
    """Images [N, H, W(, C)] and each target array of the shape its kind implies."""
    hint = f"{prepare_hint}, with --force"
    if images.ndim not in (3, 4):
        raise DataError(f"{path}: {split} images have shape {images.shape}, expected [N, H, W] or [N, H, W, C]", hint=hint)
    if images.dtype != np.uint8 and not (images.dtype == np.float32 and images.shape[1:3] == (1, 1)):
        raise DataError(f"{path}: {split} images are {images.dtype} {images.shape}, expected uint8 images or float32 "
                        "features [N, 1, 1, F]", hint=hint)  # fmt: skip
    n, hw = len(images), tuple(images.shape[1:3])
    ntasks = sum(1 for t in meta["tasks"] if "target" not in t)
    for key, array in targets.items():
        kind = target_specs(meta)[key].get("kind")
        expected = _expected_shape(kind, n, ntasks, hw)
        if expected is None:
            raise DataError(f"{path}: target {key!r} has an unknown kind {kind!r} in {META}", hint=hint)
        if array.shape != expected:
            if kind == "class" and array.ndim == 2 and len(array) != n:
                raise DataError(f"{path}: {split} has {n} images but {len(array)} labels", hint=hint)
            raise DataError(
                f"{path}: {split} {key} has shape {array.shape}, expected {list(expected)} "
                f"({kind} targets for {n} images of {hw[0]}x{hw[1]})",
                hint=hint,
            )


def _check_graph_shapes(
    path: Path, meta: dict[str, Any], split: str, graph: dict[str, np.ndarray], targets: dict[str, np.ndarray], hint: str
) -> None:
    """A graph split's arrays agree: as many nodes as atoms counted, bonds as counted, a target value per molecule."""
    nodes, positions, atoms, bonds, bond_counts = (graph[key] for key in GRAPH_ARRAYS)
    features = meta.get("node_features")
    n = len(atoms)
    problems = [
        (nodes.ndim != 2 or nodes.shape[1] != features, f"nodes have shape {nodes.shape}, expected [V, {features}]"),
        (positions.shape != (len(nodes), 3), f"positions have shape {positions.shape}, expected [{len(nodes)}, 3]"),
        (atoms.ndim != 1 or int(atoms.sum()) != len(nodes) or (n and int(atoms.min()) < 1),
         f"atoms per molecule do not add up to the {len(nodes)} nodes (or a molecule has none)"),
        (bonds.ndim != 2 or bonds.shape[1] != 3, f"bonds have shape {bonds.shape}, expected [E, 3]"),
        (bond_counts.shape != (n,) or int(bond_counts.sum()) != len(bonds), f"bonds per molecule do not add up to {len(bonds)}"),
        *((array.shape != (n,), f"target {key} has shape {array.shape}, expected [{n}]") for key, array in targets.items()),
    ]  # fmt: skip
    for bad, what in problems:
        if bad:
            raise DataError(f"{path}: {split} {what}", hint=hint)
