"""Office-31 and Office-Home (`mtl prepare office-31|office-home --source DIR`): multi-input datasets, each
domain a task with its own images (LibMTL, examples/office).

Layouts read: Office-31 `<domain>/images/<class>/*.jpg` (amazon, dslr, webcam), Office-Home `<domain>/<class>/*.jpg`
(Art, Clipart, Product, Real_World). Every domain must hold the same class folders, none of them empty; every
image must decode. Split: LibMTL's own 60/20/20 train/val/test lists (examples/office/data_txt, shipped here as
`office_splits/<dataset>.tsv.gz`: path and split) when the release holds exactly the files they name; otherwise
(another copy of the release) each domain's images 60/20/20 per class by a permutation seeded by `--seed`, said
in a note and in meta.json's `split`. Images are resized to SxS (224: LibMTL's `transforms.Resize((224, 224))`),
bilinear with antialias, and normalised with the ImageNet mean/std.

Stored as one prepared dataset: images [N, S, S, 3] and labels [N, T] (int16) where row i holds its class in its
domain's column and `MISSING_LABEL` (-1) in the others: the rows of task t are its domain's images
(`mtlcli.training.multi_input` draws each task's batches from them; the masked losses and metrics see only them).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from mtlcli import __version__
from mtlcli.data.feedback import note
from mtlcli.data.registry import DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import exclusive_prepare, existing_meta, write_prepared
from mtlcli.errors import DataError

LIBMTL_LISTS = "median-research-group/LibMTL, examples/office/data_txt (commit 4336804847eaa5e0b924b743d76beec7ac3fdc97)"
SPLIT_LISTS = Path(__file__).parent / "office_splits"  # package data (pyproject.toml)
SPLIT_FRACTIONS = (0.6, 0.2)  # train, val; the rest is test (LibMTL's data_txt lists)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
RESIZE = "bilinear, antialias, torchvision.transforms.v2.functional.resize to SxS (LibMTL: Resize((224, 224)))"
MISSING_LABEL = -1

# a task name -> its folder under --source; the class folders are under that folder + CLASS_DIR[dataset]
DOMAINS: dict[str, dict[str, str]] = {
    "office-31": {"amazon": "amazon", "dslr": "dslr", "webcam": "webcam"},
    "office-home": {"art": "Art", "clipart": "Clipart", "product": "Product", "real_world": "Real_World"},
}
CLASS_DIR: dict[str, str] = {"office-31": "images", "office-home": ""}


def _class_folders(root: Path, name: str, domain: str) -> tuple[Path, dict[str, Path]]:
    """The folder of `domain` and its class folders by name; DataError when it is missing."""
    folder = root / DOMAINS[name][domain]
    classes_at = folder / CLASS_DIR[name] if CLASS_DIR[name] else folder
    if not classes_at.is_dir():
        raise DataError(
            f"{classes_at}: domain folder missing", hint=f"--source must hold the {name} release: {_layout(name)}"
        )
    return classes_at, {p.name: p for p in sorted(classes_at.iterdir()) if p.is_dir()}


def _layout(name: str) -> str:
    sub = f"/{CLASS_DIR[name]}" if CLASS_DIR[name] else ""
    return ", ".join(f"{folder}{sub}/<class>/*.jpg" for folder in DOMAINS[name].values())


def scan(name: str, root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """The class names (sorted) and each domain's (image, class index) list; DataError naming the first folder
    that is missing, has a class the others lack, or is empty."""
    if not root.is_dir():
        raise DataError(f"--source {root} is not a directory", hint=f"pass the folder holding {_layout(name)}")
    found = {domain: _class_folders(root, name, domain) for domain in DOMAINS[name]}
    classes = sorted(set().union(*(set(folders) for _, folders in found.values())))
    if not classes:
        raise DataError(f"{root}: no class folders in any domain", hint=f"expected {_layout(name)}")
    images: dict[str, list[tuple[Path, int]]] = {}
    for domain, (at, folders) in found.items():
        for c in classes:
            if c not in folders:
                other = next(d for d, (_, f) in found.items() if c in f)
                raise DataError(
                    f"{at / c}: class folder missing (domain {other} has it)",
                    hint="every domain must hold the same class folders: restore the release",
                )
        rows: list[tuple[Path, int]] = []
        for index, c in enumerate(classes):
            files = sorted(p for p in folders[c].iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataError(f"{folders[c]}: empty class folder (no .jpg/.png image)", hint="restore the release")
            rows.extend((p, index) for p in files)
        images[domain] = rows
    return classes, images


def split_rows(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices of one domain's train/val/test: per class, 60/20/20 of a seeded permutation."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(SPLIT_FRACTIONS[0] * len(rows))
        n_val = round(SPLIT_FRACTIONS[1] * len(rows))
        parts["train"].append(rows[:n_train])
        parts["val"].append(rows[n_train : n_train + n_val])
        parts["test"].append(rows[n_train + n_val :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def libmtl_split(name: str) -> dict[str, str]:
    """LibMTL's split of dataset `name`: image path (relative to the release, as its lists write it) -> split."""
    packed = (SPLIT_LISTS / f"{name}.tsv.gz").read_bytes()
    lines = gzip.decompress(packed).decode("utf-8").splitlines()
    return dict(line.split("\t") for line in lines if line.strip())


def choose_split(
    name: str, root: Path, found: dict[str, list[tuple[Path, int]]], seed: int
) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Each domain's row indices per split, and how they were chosen: LibMTL's lists when the release holds exactly
    their files, else 60/20/20 per class seeded by `seed` (`split_rows`)."""
    listed = libmtl_split(name)
    paths = {domain: [p.relative_to(root).as_posix() for p, _ in rows] for domain, rows in found.items()}
    have = {p for ps in paths.values() for p in ps}
    if have == set(listed):
        names = ("train", "val", "test")
        splits = {
            domain: {s: np.array([i for i, p in enumerate(ps) if listed[p] == s], dtype=np.int64) for s in names}
            for domain, ps in paths.items()
        }
        return splits, f"LibMTL's lists ({LIBMTL_LISTS})"
    missing, extra = sorted(set(listed) - have), sorted(have - set(listed))
    differs = f"{len(missing)} listed file(s) missing" + (f" (first: {missing[0]})" if missing else "")
    differs += f", {len(extra)} not listed" + (f" (first: {extra[0]})" if extra else "")
    splits = {domain: split_rows(np.array([c for _, c in found[domain]]), seed + t) for t, domain in enumerate(found)}
    return splits, f"60/20/20 per class, seeded by --seed {seed}: the release differs from LibMTL's lists ({differs})"


def decode(path: Path, size: int) -> np.ndarray:
    """One image, RGB, resized to size x size: uint8 [size, size, 3]; DataError naming it when it does not decode."""
    try:
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        image = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable image ({first[:120]})", hint="replace or delete the file") from None
    resized = tvf.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return resized.permute(1, 2, 0).numpy()


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of Office-31 / Office-Home: decode, resize, split, write (atomically)."""
    source = one_source(spec, request)
    if source is None:
        raise DataError(f"{spec.name} cannot be downloaded by a script", hint=spec.how_to_get)
    size = request.size if request.size is not None else spec.default_size
    if not spec.min_size <= size <= spec.max_size:
        raise DataError(f"--size {size}: {spec.name} is prepared at {spec.min_size}..{spec.max_size} pixels a side")
    target = request.data_dir / spec.name
    request.data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(request.data_dir, spec.name):
        existing = existing_meta(target, size=size, seed=request.seed, force=request.force)
        if existing is not None:
            return Prepared(path=target, built=False, meta=existing)
        classes, found = scan(spec.name, source)  # every folder checked before any image is decoded
        tasks = list(DOMAINS[spec.name])
        chosen, how = choose_split(spec.name, source, found, request.seed)
        note(request.console, f"split: {how}")
        splits: dict[str, dict[str, list[np.ndarray]]] = {s: {"images": [], "labels": []} for s in ("train", "val", "test")}
        counts: dict[str, dict[str, int]] = {}
        for t, domain in enumerate(tasks):
            classes_of = np.array([c for _, c in found[domain]], dtype=np.int64)
            for split, rows in chosen[domain].items():
                labels = np.full((len(rows), len(tasks)), MISSING_LABEL, dtype=np.int16)
                labels[:, t] = classes_of[rows]
                images = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
                for j, i in enumerate(rows):
                    images[j] = decode(found[domain][i][0], size)
                splits[split]["images"].append(images)
                splits[split]["labels"].append(labels)
                counts.setdefault(domain, {})[split] = len(rows)
        arrays = {s: {k: np.concatenate(v) for k, v in parts.items()} for s, parts in splits.items()}
        for split, parts in arrays.items():
            if not len(parts["images"]):
                raise DataError(f"{source}: too few images for a {split} split", hint="pass the whole release")
        meta: dict[str, Any] = {
            "dataset": spec.name,
            "size": size,
            "seed": request.seed,
            "channels": 3,
            **spec.meta_schema(),
            "input": "multi",
            "classes": classes,
            "counts": {split: len(parts["labels"]) for split, parts in arrays.items()},
            "domain_counts": counts,  # task -> split -> images
            "split": how,
            "resize": RESIZE,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "mtl_version": __version__,
        }
        write_prepared(request.data_dir, spec.name, arrays, meta)
    return Prepared(path=target, built=True, meta=meta)
