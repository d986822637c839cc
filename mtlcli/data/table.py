"""`mtl prepare table`: the user's own table (CSV or parquet) -> a prepared dataset like the others.

One row per sample: an id column (with `--images DIR`, the image file relative to DIR), one column per task and
optionally a split column (train / val / test). A task column is classification (text or integer values: its classes,
sorted, are listed in meta.json) or regression (numbers with a fractional part, or `--task COL:regression`); an empty
cell means the sample has no label for that task (stored as -1 or NaN: the masked losses and the metrics skip it).
Regression targets stay in the table's units: training standardises them by the training split's mean and std
(meta.json) and the metrics bring predictions back to the table's units.

The input: the images, decoded (PNG, JPEG, ...: whatever torchvision decodes), converted to RGB and resized whole (no
crop) to SxS, bilinear with antialiasing, as CelebA; or, without `--images`, the table's other numeric columns,
standardised by the training split's mean and std, stored as float32 [N, 1, 1, F].

Everything is read and validated before anything is written (each problem names the file, the line or row and the
column, with a hint); the arrays then go into a temp directory renamed to DATA_DIR/NAME in one step (`write_prepared`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision
from rich.console import Console
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from mtlcli import __version__
from mtlcli.data.chunked import channel_stats
from mtlcli.data.feedback import note, progress
from mtlcli.data.registry import DATASETS, DatasetSpec, Prepared, PrepareRequest, TableRequest
from mtlcli.data.store import MISSING_LABEL, SPLITS, exclusive_prepare, read_meta, remove_stale_temps, write_prepared
from mtlcli.errors import DataError
from mtlcli.io import sha256_file

KINDS = ("classification", "regression")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FRACTIONS = {"val": 0.1, "test": 0.1}  # the seeded split without a split column: 80 / 10 / 10
RESIZE = "bilinear, antialias, torchvision.transforms.v2.functional.resize (the whole image, no crop)"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED_NAMES = ("raw",)  # DATA_DIR/raw holds downloads


# ----------------------------------------------------------------------------- reading the table
@dataclass(frozen=True)
class Table:
    """The table as text cells (CSV) or typed columns (parquet), and how an error names its rows."""

    path: Path
    frame: pd.DataFrame
    text: bool  # CSV: every cell a string (or NaN when empty); parquet: pandas' nullable dtypes

    def row(self, i: int) -> str:
        """Row i (0-based, in file order) as an error names it: the CSV line (header on line 1) or the parquet row."""
        return f"{self.path}:{i + 2}" if self.text else f"{self.path} row {i + 1}"


def read_table(path: Path) -> Table:
    """Read a CSV (every cell as text, empty = missing) or a parquet file (pyarrow) with pandas."""
    if not path.is_file():
        raise DataError(f"--labels {path}: no such file", hint="pass the CSV or parquet file of the table")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
            text = False
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True, encoding="utf-8-sig")
            text = True
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow", hint="pip install 'mtlcli[parquet]' (or pyarrow)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable table ({first})", hint="a CSV with a header line, or a parquet file") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise DataError(f"{path}: the table has no rows", hint="one row per sample, under a header line")
    return Table(path=path, frame=frame.reset_index(drop=True), text=text)


def _column(table: Table, name: str, what: str, flag: str) -> pd.Series:
    if name not in table.frame.columns:
        shown = ", ".join(map(repr, list(table.frame.columns)[:12]))
        raise DataError(f"{table.path}: no {what} column {name!r} (its columns: {shown})", hint=f"name it with {flag} COLUMN")
    return table.frame[name]


def _is_int(token: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", token) is not None


def _is_number(token: str) -> bool:
    try:
        return math.isfinite(float(token))
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class TaskColumn:
    """A task read from its column: labels int64 [N] (-1: none) or values float32 [N] (NaN: none)."""

    name: str
    kind: str
    values: np.ndarray
    classes: list[Any]


def _task_arg(value: str) -> tuple[str, str | None]:
    """`COL` or `COL:classification` / `COL:regression`."""
    name, sep, kind = value.rpartition(":")
    if sep and kind in KINDS:
        return name, kind
    return value, None


def _labelled(series: pd.Series) -> np.ndarray:
    return series.notna().to_numpy()


def _regression(table: Table, series: pd.Series) -> np.ndarray:
    values = np.full(len(series), np.nan, dtype=np.float64)
    for i in np.flatnonzero(_labelled(series)):
        cell = series.iloc[i]
        ok = (
            _is_number(cell.strip())
            if isinstance(cell, str)
            else isinstance(cell, (int, float, np.number))
            and not isinstance(cell, (bool, np.bool_))
            and math.isfinite(float(cell))
        )
        if not ok:
            raise DataError(
                f"{table.row(i)}: column {series.name!r} holds {cell!r}, not a number, but {series.name!r} is a regression "
                "task (its other values are numbers)",
                hint="fix the cell (an empty cell means no label), or make the column a classification task with "
                f"--task {series.name}:classification",
            )
        values[i] = float(cell)
    return values


def _kind_of(table: Table, series: pd.Series) -> str:
    """Classification for text, integer and boolean columns; regression for numbers with a fraction (floats)."""
    cells = series[series.notna()]
    if not table.text:
        return "regression" if pd.api.types.is_float_dtype(series.dtype) else "classification"
    tokens = [c.strip() for c in cells]
    if all(_is_int(t) for t in tokens):
        return "classification"
    if any(_is_number(t) and not _is_int(t) for t in tokens):  # real numbers, perhaps with text mixed in (an error)
        return "regression"
    return "classification"


def _classes(table: Table, series: pd.Series) -> tuple[np.ndarray, list[Any]]:
    labelled = _labelled(series)
    cells = series[labelled]
    if table.text:
        tokens = [c.strip() for c in cells]
        numeric = all(_is_int(t) for t in tokens)
        keys: list[Any] = [int(t) for t in tokens] if numeric else tokens
    else:
        keys = [c.item() if hasattr(c, "item") else c for c in cells]
        keys = [int(k) if isinstance(k, (bool, np.bool_)) else k for k in keys]
    try:
        classes = sorted(set(keys))
    except TypeError:  # mixed types in a parquet object column
        classes = sorted(set(keys), key=str)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.full(len(series), MISSING_LABEL, dtype=np.int64)
    labels[labelled] = [index[k] for k in keys]
    return labels, classes


def read_task(table: Table, name: str, kind: str | None) -> TaskColumn:
    series = _column(table, name, "task", "--task")
    if not series.notna().any():
        raise DataError(
            f"{table.path}: task column {name!r} is empty (no row has a label for it)",
            hint="fill in some labels, or leave the column out of the tasks (--task COLUMN for each task)",
        )
    kind = kind or _kind_of(table, series)
    if kind == "regression":
        return TaskColumn(name, kind, _regression(table, series), [])
    labels, classes = _classes(table, series)
    if len(classes) < 2:
        raise DataError(
            f"{table.path}: class column {name!r} has one class ({classes[0]!r}) among its labels: nothing to learn",
            hint="leave the column out of the tasks (--task COLUMN for each task), or check its values",
        )
    return TaskColumn(name, kind, labels, classes)


# ----------------------------------------------------------------------------- the split
def assign_splits(table: Table, split_column: str | None, seed: int) -> tuple[np.ndarray, str]:
    """The split of each row (0 train, 1 val, 2 test) and how it was made."""
    n = len(table.frame)
    named = split_column is not None
    column = split_column or "split"
    if column in table.frame.columns:
        series = table.frame[column]
        out = np.empty(n, dtype=np.int64)
        for i, cell in enumerate(series):
            key = str(cell).strip().lower() if pd.notna(cell) else ""
            if key not in SPLIT_VALUES:
                raise DataError(
                    f"{table.row(i)}: split column {column!r} holds {cell if pd.notna(cell) else 'nothing'!r}",
                    hint="each row's split is train, val (or validation) or test",
                )
            out[i] = SPLITS.index(SPLIT_VALUES[key])
        return out, f"the table's column {column!r}"
    if named:
        _column(table, column, "split", "--split")
    if n < 3:
        raise DataError(f"{table.path}: {n} row(s); a seeded split needs at least 3 (train, val, test)",
                        hint="add rows, or give a split column (train / val / test)")  # fmt: skip
    order = np.random.default_rng(seed).permutation(n)
    sizes = [max(1, round(FRACTIONS[s] * n)) for s in ("val", "test")]
    out = np.zeros(n, dtype=np.int64)
    out[order[: sizes[0]]] = 1
    out[order[sizes[0] : sum(sizes)]] = 2
    return out, f"seeded (seed {seed}): {FRACTIONS['val']:.0%} val, {FRACTIONS['test']:.0%} test, the rest train"


def check_labelled(table: Table, tasks: list[TaskColumn], split_of: np.ndarray) -> None:
    """Every task has labels in every split (its metrics are measured on val and test), and something to learn."""
    for task in tasks:
        labelled = task.values >= 0 if task.kind == "classification" else np.isfinite(task.values)
        for k, split in enumerate(SPLITS):
            if not labelled[split_of == k].any():
                raise DataError(
                    f"{table.path}: task {task.name!r} has no label in the {split} split",
                    hint="label more samples of that split (or assign rows with a split column: train / val / test)",
                )
        if task.kind == "regression":
            train = task.values[(split_of == 0) & labelled]
            if float(np.std(train)) == 0.0:
                raise DataError(f"{table.path}: regression column {task.name!r} has one value ({train[0]:g}) in the train "
                                "split: nothing to learn", hint="leave it out of the tasks, or check its values")  # fmt: skip


# ----------------------------------------------------------------------------- the input
def image_files(table: Table, ids: pd.Series, images: Path) -> list[Path]:
    """The image of each row (the id relative to DIR), checked to exist before anything is decoded."""
    if not images.is_dir():
        raise DataError(f"--images {images}: not a directory", hint="pass the directory holding the table's images")
    present = {str(p.relative_to(images)) for p in images.rglob("*") if p.is_file()}
    files = []
    for i, cell in enumerate(ids):
        relative = PurePosixPath(str(cell).strip())
        if relative.is_absolute() or ".." in relative.parts:
            raise DataError(f"{table.row(i)}: image {cell!r} is not a path inside --images",
                            hint="the id column holds image paths relative to --images DIR")  # fmt: skip
        if str(relative) not in present:
            raise DataError(f"{table.row(i)}: image {str(relative)!r} is not in {images}",
                            hint="add the image, fix its name in the id column, or drop the row")  # fmt: skip
        files.append(images / relative)
    return files


def decode_images(table: Table, files: list[Path], size: int, console: Console | None) -> np.ndarray:
    """uint8 [N, size, size, 3]: each image decoded as RGB and resized whole."""
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    with progress(console, "decode images", len(files)) as advance:
        for i, path in enumerate(files):
            try:
                data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
                image = decode_image(data, mode=ImageReadMode.RGB)
            except (RuntimeError, ValueError, OSError) as exc:
                reason = re.sub(r"^.*\.cpp:\d+,\s*", "", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
                raise DataError(f"{path}: not a readable image ({reason}; {table.row(i)} lists it)",
                                hint="replace the file, or drop its row") from None  # fmt: skip
            resized = tvf.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
            out[i] = resized.permute(1, 2, 0).numpy()
            advance(1)
    return out


def feature_columns(table: Table, used: set[str], console: Console | None) -> list[str]:
    """The numeric columns that are neither the id, the split nor a task: the input features."""
    names, skipped = [], []
    for name in table.frame.columns:
        if name in used:
            continue
        series = table.frame[name]
        cells = series[series.notna()]
        numeric = all(_is_number(c.strip()) for c in cells) if table.text else pd.api.types.is_numeric_dtype(series.dtype)
        (names if numeric and len(cells) else skipped).append(name)
    if skipped:
        note(console, f"columns that are not numbers are not input features: {', '.join(map(repr, skipped))}")
    if not names:
        raise DataError(f"{table.path}: no numeric column is left for the input features",
                        hint="pass --images DIR with the samples' images, or add numeric feature columns")  # fmt: skip
    return names


def read_features(table: Table, names: list[str]) -> np.ndarray:
    """float64 [N, F]; an empty cell is an error (no imputation)."""
    out = np.empty((len(table.frame), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        series = table.frame[name]
        missing = np.flatnonzero(~_labelled(series))
        if len(missing):
            raise DataError(f"{table.row(int(missing[0]))}: feature column {name!r} has no value",
                            hint="fill it in (features are not imputed), or drop the column or the row")  # fmt: skip
        out[:, j] = [float(c) for c in series]
    return out


# ----------------------------------------------------------------------------- the entry point
def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name) or name in RESERVED_NAMES:
        raise DataError(f"--name {name!r}: not a usable name", hint="letters, digits, '.', '_' and '-', not starting with '.'")
    taken = {n for spec in DATASETS.values() if not spec.from_table for n in (spec.name, *spec.aliases)}
    if name.lower() in taken:
        raise DataError(f"--name {name}: the name of a registered dataset", hint="choose another name for your table")


def _fingerprint(t: TableRequest, size: int | None, seed: int) -> dict[str, Any]:
    return {
        "labels_sha256": sha256_file(t.labels),
        "images": str(t.images) if t.images else None,
        "size": size,
        "seed": seed,
        "id": t.id_column,
        "tasks": list(t.tasks) if t.tasks is not None else None,
        "split": t.split_column,
    }


def _already(target: Path, fingerprint: dict[str, Any], force: bool) -> Prepared | None:
    existing = read_meta(target) if target.is_dir() else None
    if target.exists() and (existing is None or existing.get("dataset") != "table"):
        what = f"dataset {existing.get('dataset')!r}" if existing else "something that is not a prepared table"
        raise DataError(f"{target} holds {what}", hint="choose another --name")
    if existing is None or force:
        return None
    if existing.get("fingerprint") == fingerprint:
        return Prepared(path=target, built=False, meta=existing)
    raise DataError(f"{target} was prepared from another table or with other options",
                    hint="pass --force to rebuild it, or choose another --name")  # fmt: skip


def _task_meta(task: TaskColumn, key: str, split_of: np.ndarray) -> dict[str, Any]:
    labelled = task.values >= 0 if task.kind == "classification" else np.isfinite(task.values)
    counts = {split: int(labelled[split_of == k].sum()) for k, split in enumerate(SPLITS)}
    entry: dict[str, Any] = {"name": task.name, "kind": task.kind, "target": key, "labelled": counts}
    if task.kind == "classification":
        return {**entry, "num_classes": len(task.classes), "classes": task.classes}
    train = task.values[(split_of == 0) & labelled]
    return {**entry, "num_classes": 1, "mean": float(train.mean()), "std": float(train.std())}


def prepare_table(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """Build DATA_DIR/<name> from the table (and its images), unless it is already there from the same inputs."""
    t = request.table
    if t is None:
        raise DataError("`mtl prepare table` reads your table", hint="pass --labels FILE.csv (or FILE.parquet) [--images DIR]")
    if request.sources or request.mirror:
        raise DataError("--source/--mirror: a table is read from --labels (and --images)", hint="leave them out")
    if request.workers is not None:
        raise DataError("--workers: a table's images are decoded in one process", hint="leave --workers out")
    check_name(t.name)
    if t.images is None and request.size is not None:
        raise DataError("--size: a table without --images has no images to resize", hint="leave --size out")
    size = (request.size or spec.default_size) if t.images is not None else None
    target = request.data_dir / t.name
    if not t.labels.is_file():
        raise DataError(f"--labels {t.labels}: no such file", hint="pass the CSV or parquet file of the table")
    fingerprint = _fingerprint(t, size, request.seed)
    if (done := _already(target, fingerprint, request.force)) is not None:
        return done

    table = read_table(t.labels)
    ids = _column(table, t.id_column, "id", "--id")
    missing = np.flatnonzero(~_labelled(ids))
    if len(missing):
        raise DataError(f"{table.row(int(missing[0]))}: no id in column {t.id_column!r}", hint="every row needs an id")
    seen: dict[str, int] = {}
    for i, cell in enumerate(ids):
        key = str(cell).strip()
        if key in seen:
            raise DataError(f"{table.row(i)}: id {key!r} appears twice (first at {table.row(seen[key])})",
                            hint="one row per sample")  # fmt: skip
        seen[key] = i
    files = image_files(table, ids, t.images) if t.images is not None else []
    split_used = t.split_column or ("split" if "split" in table.frame.columns else None)
    excluded = {t.id_column, *([split_used] if split_used else [])}
    if t.tasks is not None:
        wanted = [_task_arg(v) for v in t.tasks]
    elif t.images is not None:
        wanted = [(c, None) for c in table.frame.columns if c not in excluded]
    else:
        raise DataError("without --images, the table's columns are tasks or input features",
                        hint="name each task column with --task COLUMN (the other numeric columns are the features)")  # fmt: skip
    if not wanted:
        raise DataError(f"{table.path}: no task column (only {', '.join(map(repr, excluded))})",
                        hint="add a column per task")  # fmt: skip
    for name, _ in wanted:
        if name in excluded:
            raise DataError(f"--task {name}: that is the id or split column", hint="choose another task column")
    if len({n for n, _ in wanted}) != len(wanted):
        raise DataError("--task: a column is named twice", hint="name each task once")
    tasks = [read_task(table, name, kind) for name, kind in wanted]
    split_of, split_how = assign_splits(table, t.split_column, request.seed)
    check_labelled(table, tasks, split_of)
    features: list[str] = []
    if t.images is None:
        features = feature_columns(table, excluded | {n for n, _ in wanted}, request.console)
        values = read_features(table, features)

    # everything is valid: build the arrays, then write them in one step
    if t.images is not None:
        assert size is not None
        pixels = decode_images(table, files, size, request.console)
        mean, std = channel_stats(pixels[split_of == 0])
        std = [max(s, 1.0 / 255.0) for s in std]  # a constant channel: no division by zero
        inputs, channels, side = pixels, 3, size
        input_meta: dict[str, Any] = {"input": "images", "resize": RESIZE, "mean": mean, "std": std}
    else:
        train = values[split_of == 0]
        f_mean, f_std = train.mean(axis=0), train.std(axis=0)
        f_std = np.where(f_std > 0, f_std, 1.0)
        inputs = ((values - f_mean) / f_std).astype(np.float32)[:, None, None, :]
        channels, side = len(features), 1
        input_meta = {
            "input": "features",
            "features": {"names": features, "mean": f_mean.tolist(), "std": f_std.tolist()},
            "mean": [0.0] * channels,
            "std": [1.0] * channels,
        }
    keys = [f"task{i}" for i in range(len(tasks))]
    splits = {}
    for k, split in enumerate(SPLITS):
        rows = np.flatnonzero(split_of == k)
        arrays = {"images": np.ascontiguousarray(inputs[rows])}
        arrays["ids"] = np.array([str(ids.iloc[i]).strip() for i in rows], dtype=str)
        for task, key in zip(tasks, keys, strict=True):
            arrays[key] = task.values[rows] if task.kind == "classification" else task.values[rows].astype(np.float32)
        splits[split] = arrays
    meta = {
        "dataset": spec.name,
        "name": t.name,
        "description": f"{spec.description}: {t.labels.name}",
        "tasks": [_task_meta(task, key, split_of) for task, key in zip(tasks, keys, strict=True)],
        "targets": {
            key: {"kind": "label" if task.kind == "classification" else "value"} for task, key in zip(tasks, keys, strict=True)
        },
        "missing": "a class label -1 or a value NaN: that sample has no label for the task (losses and metrics skip it)",
        **input_meta,
        "channels": channels,
        "size": side,
        "width": side,
        "seed": request.seed,
        "splits": split_how,
        "counts": {split: int((split_of == k).sum()) for k, split in enumerate(SPLITS)},
        "ids": "<split>_ids.npy: each row's id, in the order of the split's arrays",
        "fingerprint": fingerprint,
        "source": {"labels": str(t.labels), "images": str(t.images) if t.images else None},
        "created_by": f"mtlcli {__version__}, pandas {pd.__version__}, torchvision {torchvision.__version__}",
    }
    request.data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(request.data_dir, t.name):
        remove_stale_temps(request.data_dir, t.name)
        path = write_prepared(request.data_dir, t.name, splits, meta)
    return Prepared(path=path, built=True, meta=read_meta(path) or meta)
