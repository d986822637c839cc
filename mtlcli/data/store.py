"""Prepared datasets on disk: written atomically as one directory, verified when loaded."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtlcli.errors import DataError
from mtlcli.io import fsync_dir, sha256_file, write_json_atomic

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
META = "meta.json"


def resolve_data_dir(data_dir: Path | str | None) -> Path:
    """`--data-dir`, else `$MTL_DATA_DIR`, else `./data`."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("MTL_DATA_DIR")
    return Path(env) if env else Path("data")


@dataclass
class PreparedDataset:
    """A prepared dataset: uint8 images [N, H, W] or [N, H, W, C] and labels [N, T] per split, and its meta.json.

    Arrays loaded from disk are memory-mapped: a dataset larger than RAM trains from the page cache.
    """

    path: Path
    meta: dict[str, Any]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.meta["tasks"]]

    @property
    def num_classes(self) -> dict[str, int]:
        return {t["name"]: int(t["num_classes"]) for t in self.meta["tasks"]}


def write_prepared(
    data_dir: Path, name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict[str, Any]
) -> Path:
    """Write splits + meta.json into a temp dir, then rename it to `data_dir/name` (replacing any)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    final = data_dir / name
    tmp = data_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {}
        for split, (images, labels) in splits.items():
            for kind, array in (("images", images), ("labels", labels)):
                fname = f"{split}_{kind}.npy"
                with open(tmp / fname, "wb") as handle:
                    np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                files[fname] = sha256_file(tmp / fname)
        write_json_atomic(tmp / META, {**meta, "format": FORMAT_VERSION, "files": files})
        fsync_dir(tmp)
        old = None
        if final.exists():
            old = data_dir / f".{name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(data_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


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


def load_prepared(data_dir: Path, name: str, *, verify: bool = True) -> PreparedDataset:
    """Load a prepared dataset, checking every file against the sha256 in meta.json."""
    path = data_dir / name
    prepare_hint = f"run `mtl prepare {name}` first" + (
        f" (with --data-dir {data_dir})" if str(data_dir) != "data" else ""
    )
    if not path.is_dir():
        raise DataError(f"dataset {name} is not prepared in {data_dir}/", hint=prepare_hint)
    meta = read_meta(path)
    if meta is None or meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{path} has no valid {META} (missing, corrupt or another format)", hint=f"{prepare_hint}, with --force")
    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in SPLITS:
        for kind, store in (("images", images), ("labels", labels)):
            fname = f"{split}_{kind}.npy"
            fpath = path / fname
            expected = meta["files"].get(fname)
            if expected is None or not fpath.is_file():
                raise DataError(f"{fpath} is missing", hint=f"{prepare_hint}, with --force")
            if verify and sha256_file(fpath) != expected:
                raise DataError(f"{fpath} is corrupt (sha256 differs from meta.json)", hint=f"{prepare_hint}, with --force")
            try:  # memory-mapped (copy-on-write, so torch can wrap it): pages are read when a batch needs them
                store[split] = np.load(fpath, mmap_mode="c", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"cannot read {fpath}: {exc}", hint=f"{prepare_hint}, with --force") from None
        ntasks = len(meta["tasks"])
        if images[split].ndim not in (3, 4) or labels[split].ndim != 2 or labels[split].shape[1] != ntasks:
            raise DataError(
                f"{path}: {split} arrays have shapes {images[split].shape} and {labels[split].shape}, "
                f"expected [N, H, W] or [N, H, W, C] images and [N, {ntasks}] labels",
                hint=f"{prepare_hint}, with --force",
            )
        if len(images[split]) != len(labels[split]):
            raise DataError(f"{path}: {split} has {len(images[split])} images but {len(labels[split])} labels")
    return PreparedDataset(path=path, meta=meta, images=images, labels=labels)
