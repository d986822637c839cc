"""`mtl prepare nyuv2`: the preprocessed NYUv2 of MTAN -> a verified, memory-mappable prepared dataset.

NYUv2 (Silberman et al. 2012, "Indoor Segmentation and Support Inference from RGBD Images") as the
multi-task literature uses it since MTAN (Liu et al. 2019, "End-to-End Multi-Task Learning with Attention",
https://github.com/lorenmt/mtan; also Nash-MTL, CAGrad, FAMO): 795 training and 654 test images at 288x384,
13-class segmentation, depth and surface normals, one .npy file per sample and kind:

    DIR/train/image/<i>.npy   float [288, 384, 3] in [0, 1]
    DIR/train/label/<i>.npy   float [288, 384], classes 0..12, -1 = not labelled
    DIR/train/depth/<i>.npy   float [288, 384, 1], metres, 0 = invalid
    DIR/train/normal/<i>.npy  float [288, 384, 3] in [-1, 1], all-zero = invalid
    DIR/val/...               the same for the 654 test images

The steps: locate the release (DIR, DIR/nyuv2/ or the unopened nyuv2.zip); check that the four folders of each
split hold the same sample names; read every file once (never unpickling), validate it and convert it, streamed
into memory-mapped .npy files in a temp directory; measure the training images' mean/std; checksum, write
meta.json and rename the directory to `DATA_DIR/nyuv2` in one step (`store.install_prepared`). The release's
val folder is our test split; our validation split is a seeded 10% of its train folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap, read_array
from rich.console import Console
from torchvision import __version__ as tv_version
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from mtlcli import __version__
from mtlcli.data.chunked import channel_stats
from mtlcli.data.feedback import note, progress
from mtlcli.data.registry import NYUV2_CLASSES, DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import (
    IGNORE_INDEX,
    SPLITS,
    exclusive_prepare,
    existing_meta,
    install_prepared,
    read_meta,
    remove_stale_temps,
)
from mtlcli.errors import DataError

NAME = "nyuv2"
ZIP_NAME = "nyuv2.zip"
KINDS = ("image", "label", "depth", "normal")  # the release's folders of one split
RELEASE_SPLITS = {"train": "train", "val": "test"}  # release folder -> the prepared split it feeds
RELEASE_HW = (288, 384)
RELEASE_COUNTS = {"train": 795, "val": 654}
MTAN_URL = "https://github.com/lorenmt/mtan"
RELEASE_URL = "https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0"  # MTAN README, "here"
VALIDATION_FRACTION = 0.1
NORMAL_TOLERANCE = 1e-2  # a valid normal's length is within this of 1
CHANNELS = {"image": 3, "depth": 1, "normal": 3}  # trailing channel axis of each kind (label has none)
RESIZE = (
    "none at the release's size; otherwise images: bilinear, antialias (torchvision.transforms.v2.functional.resize) "
    "of the float image, then quantised; segmentation, depth, normal: nearest neighbour at pixel centres "
    "(source index floor((i + 0.5) * in / out)), so invalid values are never blended"
)
ORDER = "numeric by file stem (then non-numeric stems by name)"


# ----------------------------------------------------------------------------- where the files are
def sample_key(stem: str) -> tuple[int, int, str]:
    """The order of samples: numeric stems by value, then the others by name."""
    return (0, int(stem), stem) if stem.isascii() and stem.isdigit() else (1, 0, stem)


def _sample_id(stem: str) -> int | str:
    """How meta.json names a sample: its number when the stem is a plain number, else the stem."""
    return int(stem) if stem.isascii() and stem.isdigit() and str(int(stem)) == stem else stem


@dataclass
class Release:
    """A located release: a folder holding train/ and val/, or a zip holding them under `prefix`."""

    path: Path
    layout: str  # "folder" (--source DIR), "subfolder" (DIR/nyuv2/) or "zip" (DIR/nyuv2.zip)
    stems: dict[str, list[str]]  # release split -> sample stems in order
    prefix: str = ""  # zip only: the members' path up to train/ and val/
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)

    def member(self, split: str, kind: str, stem: str) -> str:
        return f"{self.prefix}{split}/{kind}/{stem}.npy"

    def describe(self, split: str, kind: str, stem: str) -> str:
        """How an error names one file."""
        if self.layout == "zip":
            return f"{self.member(split, kind, stem)} in {self.path}"
        return str(self.path / split / kind / f"{stem}.npy")

    def read(self, split: str, kind: str, stem: str) -> np.ndarray:
        """One .npy file, read once and never unpickled; DataError naming it when unreadable."""
        where = self.describe(split, kind, stem)
        try:
            if self.layout == "zip":
                if self._zip is None:
                    self._zip = _zip_file(self.path)
                with io.BytesIO(self._zip.read(self.member(split, kind, stem))) as handle:
                    return read_array(handle, allow_pickle=False)
            with open(self.path / split / kind / f"{stem}.npy", "rb") as handle:
                return read_array(handle, allow_pickle=False)
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise DataError(
                    f"{where}: holds a pickled object array, not numbers (never unpickled)",
                    hint="the release stores plain float arrays: download it again",
                ) from None
            raise DataError(f"{where}: not a readable .npy file ({_first_line(exc)})", hint=_REDOWNLOAD) from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{where}: not a readable .npy file ({_first_line(exc)})", hint=_REDOWNLOAD) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


_REDOWNLOAD = "replace it from the release (extract or download nyuv2.zip again)"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _zip_file(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({_first_line(exc)})", hint=f"download {ZIP_NAME} again") from None


def _layout_text() -> str:
    return (
        "train/ and val/, each with image/, label/, depth/ and normal/ folders of <i>.npy files "
        f"(in DIR, in DIR/{NAME}/ or in the unopened {ZIP_NAME})"
    )


def _how_to_get() -> str:
    return f"the preprocessed NYUv2 is linked from the MTAN repository's README ({MTAN_URL}: NYUv2 'here', {RELEASE_URL})"


def _folder_stems(root: Path) -> dict[tuple[str, str], list[str]] | None:
    """Stems of the .npy files in each split/kind folder of `root`, or None when it has neither train/ nor val/."""
    if not any((root / split).is_dir() for split in RELEASE_SPLITS):
        return None
    found: dict[tuple[str, str], list[str]] = {}
    for split in RELEASE_SPLITS:
        for kind in KINDS:
            folder = root / split / kind
            if folder.is_dir():
                with os.scandir(folder) as entries:
                    found[split, kind] = [e.name[:-4] for e in entries if e.name.endswith(".npy") and e.is_file()]
    return found


_MEMBER = re.compile(r"^(?P<prefix>(?:[^/]+/)*?)(?P<split>train|val)/(?P<kind>image|label|depth|normal)/(?P<stem>[^/]+)\.npy$")


def _zip_stems(path: Path) -> tuple[str, dict[tuple[str, str], list[str]]]:
    """(prefix, stems per split/kind folder) of the NYUv2 tree inside a zip."""
    with contextlib.closing(_zip_file(path)) as archive:
        names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
    trees: dict[str, dict[tuple[str, str], list[str]]] = {}
    for name in names:
        match = _MEMBER.match(name)
        if match:
            tree = trees.setdefault(match["prefix"], {})
            tree.setdefault((match["split"], match["kind"]), []).append(match["stem"])
    if not trees:
        raise DataError(f"{path}: holds no NYUv2 .npy files; expected {_layout_text()}", hint=_how_to_get())
    if len(trees) > 1:
        prefixes = ", ".join(repr(p or "/") for p in sorted(trees))
        raise DataError(f"{path}: holds more than one NYUv2 tree (under {prefixes})", hint="pass a zip with one release")
    return next(iter(trees.items()))


def _paired(release_path: Path, found: dict[tuple[str, str], list[str]], describe: Callable[..., str]) -> dict[str, list[str]]:
    """Sample stems per release split: the four folders must name the same samples."""
    missing = [f"{split}/{kind}/" for split in RELEASE_SPLITS for kind in KINDS if (split, kind) not in found]
    if missing:
        raise DataError(
            f"{release_path}: missing {', '.join(missing)}; expected {_layout_text()}",
            hint=f"pass the directory of the whole release; {_how_to_get()}",
        )
    stems: dict[str, list[str]] = {}
    for split in RELEASE_SPLITS:
        sets = {kind: set(found[split, kind]) for kind in KINDS}
        union = sorted(set().union(*sets.values()), key=sample_key)
        if not union:
            raise DataError(f"{release_path}: {split}/ holds no samples (no .npy files)", hint=_REDOWNLOAD)
        for stem in union:
            absent = [kind for kind in KINDS if stem not in sets[kind]]
            if absent:
                present = next(kind for kind in KINDS if stem in sets[kind])
                raise DataError(
                    f"{describe(split, absent[0], stem)} is missing ({describe(split, present, stem)} exists)",
                    hint="every sample needs image, label, depth and normal files of the same name",
                )
        stems[split] = union
    return stems


def locate_source(source: Path | None, data_dir: Path) -> Release:
    """The release in `source` (DIR, DIR/nyuv2/ or DIR/nyuv2.zip, or a zip itself); `data_dir/raw/nyuv2` when None."""
    base = Path(source) if source is not None else data_dir / "raw" / NAME
    if source is not None and not base.exists():
        raise DataError(
            f"--source {base}: no such directory", hint=f"pass the directory holding train/ and val/; {_how_to_get()}"
        )
    if base.is_file():
        return _zip_release(base, "zip")
    partial: tuple[Path, str, dict[tuple[str, str], list[str]]] | None = None
    for root, layout in ((base, "folder"), (base / NAME, "subfolder")):
        found = _folder_stems(root)
        if found is not None and len(found) == len(RELEASE_SPLITS) * len(KINDS):
            return _folder_release(root, layout, found)
        if found is not None and partial is None:
            partial = (root, layout, found)
    if (base / ZIP_NAME).is_file():
        return _zip_release(base / ZIP_NAME, "zip")
    if partial is not None:
        _folder_release(*partial)  # says which folders are missing
    where = "" if source is None else "--source "
    hint = f"{_how_to_get()}; then run `mtl prepare nyuv2 --source DIR`" + ("" if source else f" (or put it in {base})")
    raise DataError(f"{where}{base}: NYUv2 not found; `mtl prepare nyuv2` needs the MTAN release: {_layout_text()}", hint=hint)


def _folder_release(root: Path, layout: str, found: dict[tuple[str, str], list[str]]) -> Release:
    release = Release(path=root, layout=layout, stems={})
    release.stems = _paired(root, found, release.describe)
    return release


def _zip_release(path: Path, layout: str) -> Release:
    prefix, found = _zip_stems(path)
    release = Release(path=path, layout=layout, stems={}, prefix=prefix)
    release.stems = _paired(path, found, release.describe)
    return release


# ----------------------------------------------------------------------------- validating one sample
def _pixel(index: tuple[int, ...]) -> str:
    return f"pixel (row {index[0]}, column {index[1]})"


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_array(where: str, kind: str, array: np.ndarray, hw: tuple[int, int] | None) -> None:
    """Shape, dtype and value conventions of one release file; DataError naming the file and pixel otherwise."""
    floating = array.dtype.kind == "f"
    if not (floating or (kind == "label" and array.dtype.kind in "iu")):
        allowed = "a float or integer" if kind == "label" else "a float"
        raise DataError(f"{where}: {kind} has dtype {array.dtype}, expected {allowed} array", hint=_REDOWNLOAD)
    expected = "[H, W]" if kind == "label" else f"[H, W, {CHANNELS[kind]}]"
    rank_ok = array.ndim == (2 if kind == "label" else 3) and (kind == "label" or array.shape[2] == CHANNELS[kind])
    if not rank_ok or (hw is not None and tuple(array.shape[:2]) != hw):
        size = f" with H, W = {hw[0]}, {hw[1]} like the first image" if hw is not None else ""
        raise DataError(f"{where}: {kind} has shape {list(array.shape)}, expected {expected}{size}", hint=_REDOWNLOAD)
    if floating and not np.isfinite(array).all():
        index = _first(~np.isfinite(array))
        raise DataError(f"{where}: {kind} holds {array[index]} at {_pixel(index)} (NaN or infinite)", hint=_REDOWNLOAD)
    problem = _value_problem(kind, array)
    if problem is not None:
        raise DataError(f"{where}: {problem}", hint=_REDOWNLOAD)


def _value_problem(kind: str, array: np.ndarray) -> str | None:
    if kind == "image":
        bad = (array < 0) | (array > 1)
        return f"image value {array[_first(bad)]} at {_pixel(_first(bad))} is outside [0, 1]" if bad.any() else None
    if kind == "label":
        bad = (array < -1) | (array >= NYUV2_CLASSES) | (array != np.round(array))
        if bad.any():
            index = _first(bad)
            return f"label {array[index]} at {_pixel(index)} is not a class (0..{NYUV2_CLASSES - 1}) or -1 (not labelled)"
        return None
    if kind == "depth":
        bad = array < 0
        return f"depth {array[_first(bad)]} at {_pixel(_first(bad))} is negative (0 marks invalid)" if bad.any() else None
    vectors = array.astype(np.float64, copy=False)
    length = np.sqrt((vectors * vectors).sum(axis=-1))
    bad = (np.abs(length - 1) > NORMAL_TOLERANCE) & (vectors != 0).any(axis=-1)
    if bad.any():
        index = _first(bad)
        values = ", ".join(f"{v:.4g}" for v in vectors[index])
        return f"normal ({values}) at {_pixel(index)} has length {length[index]:.4g}: neither unit length nor all-zero (invalid)"
    return None


# ----------------------------------------------------------------------------- converting one sample
@dataclass(frozen=True)
class Resize:
    """From the release's H x W to the prepared size: None indices when the size is unchanged."""

    source: tuple[int, int]
    target: tuple[int, int]

    @property
    def identity(self) -> bool:
        return self.source == self.target

    def nearest(self) -> tuple[np.ndarray, np.ndarray]:
        """Source rows and columns of each target pixel: the pixel whose centre is nearest (ties go down-right)."""
        rows, cols = (
            np.minimum(((np.arange(out) + 0.5) * src / out).astype(np.int64), src - 1)
            for src, out in zip(self.source, self.target, strict=True)
        )
        return rows, cols


def convert_sample(arrays: dict[str, np.ndarray], resize: Resize) -> dict[str, np.ndarray]:
    """Validated release arrays -> the prepared arrays of one sample (see `store.TARGET_KINDS`)."""
    image = arrays["image"]
    if not resize.identity:
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))
        image = tvf.resize(tensor, list(resize.target), interpolation=InterpolationMode.BILINEAR, antialias=True)
        image = image.numpy().transpose(1, 2, 0)
    label, depth, normal = arrays["label"], arrays["depth"][..., 0], arrays["normal"]
    if not resize.identity:
        rows, cols = resize.nearest()
        label, depth, normal = (a[rows[:, None], cols[None, :]] for a in (label, depth, normal))
    segmentation = np.where(label < 0, IGNORE_INDEX, label).astype(np.uint8)
    invalid = (normal == 0).all(axis=-1)
    return {
        "images": np.clip(np.round(np.asarray(image, dtype=np.float64) * 255), 0, 255).astype(np.uint8),
        "segmentation": segmentation,
        "depth": np.where(depth == 0, np.nan, depth).astype(np.float32),
        "normal": np.where(invalid[..., None], np.nan, normal).astype(np.float32).transpose(2, 0, 1),
    }


# ----------------------------------------------------------------------------- the split
def validation_rows(n: int, seed: int) -> np.ndarray:
    """Sorted positions (in sample order) of the release's train samples held out for validation."""
    count = max(1, round(VALIDATION_FRACTION * n))
    return np.sort(np.random.default_rng(seed).permutation(n)[:count])


def plan_destinations(release: Release, seed: int) -> tuple[list[tuple[str, str, str, int]], dict[str, int], list[str]]:
    """(release split, stem, prepared split, row) for every sample, the counts, and the held-out stems."""
    train = release.stems["train"]
    if len(train) < 2:
        raise DataError(
            f"{release.path}: train/ holds {len(train)} sample(s); at least 2 are needed to hold out a validation set",
            hint=_REDOWNLOAD,
        )
    held = set(validation_rows(len(train), seed).tolist())
    rows = dict.fromkeys(SPLITS, 0)
    plan = []
    for release_split, stems in release.stems.items():
        for i, stem in enumerate(stems):
            split = "val" if release_split == "train" and i in held else RELEASE_SPLITS[release_split]
            plan.append((release_split, stem, split, rows[split]))
            rows[split] += 1
    return plan, rows, [train[i] for i in sorted(held)]


# ----------------------------------------------------------------------------- the entry point
def _check_request(spec: DatasetSpec, request: PrepareRequest) -> tuple[int, int]:
    size = request.size if request.size is not None else spec.default_size
    width = spec.width_of(size)
    if not spec.min_size <= size <= spec.max_size or width is None:
        raise DataError(
            f"--size {size}: {spec.name} images are {spec.min_size}..{spec.max_size} pixels high, "
            f"with a whole width at {spec.aspect[0]}:{spec.aspect[1]} (a multiple of {spec.aspect[1]})",
        )
    if request.workers is not None:
        raise DataError(f"--workers applies to datasets decoded from images (celeba), not to {spec.name}")
    return size, width


def _already(target: Path, size: int, seed: int, force: bool) -> Prepared | None:
    """The existing prepared dataset when it is what was asked for (and not --force)."""
    existing = existing_meta(target, size=size, seed=seed, force=force)
    return None if existing is None else Prepared(path=target, built=False, meta=existing)


def _first_image(release: Release, size: int) -> tuple[str, np.ndarray]:
    """The first training image, which fixes the release's H x W (4:3, at least `size` high)."""
    stem = release.stems["train"][0]
    where = release.describe("train", "image", stem)
    image = release.read("train", "image", stem)
    check_array(where, "image", image, None)
    height, width = image.shape[:2]
    if height * 4 != width * 3:
        raise DataError(f"{where}: image is {height}x{width}, expected the 4:3 of the release (288x384)", hint=_REDOWNLOAD)
    if size > height:
        raise DataError(f"--size {size}: the source images are {height}x{width}; choose a size up to {height}")
    return stem, image


def _build(partial: Path, release: Release, size: int, width: int, seed: int, console: Console | None) -> dict[str, Any]:
    """Read, validate and convert every sample into memory-mapped arrays in `partial`; the meta's data part."""
    plan, counts, held = plan_destinations(release, seed)
    first_stem, first_image = _first_image(release, size)
    hw = (int(first_image.shape[0]), int(first_image.shape[1]))
    resize = Resize(hw, (size, width))
    found = {split: len(stems) for split, stems in release.stems.items()}
    if hw != RELEASE_HW or found != RELEASE_COUNTS:
        ours = f"{found['train']} train / {found['val']} val images of {hw[0]}x{hw[1]}"
        note(console, f"the source holds {ours}; the MTAN release 795 / 654 of 288x384")
    shapes = {"images": (size, width, 3), "segmentation": (size, width), "depth": (size, width), "normal": (3, size, width)}
    dtypes = {"images": np.uint8, "segmentation": np.uint8, "depth": np.float32, "normal": np.float32}
    arrays = {
        (split, key): open_memmap(partial / f"{split}_{key}.npy", mode="w+", dtype=dtypes[key], shape=(counts[split], *shape))
        for split in SPLITS
        for key, shape in shapes.items()
    }
    with progress(console, "read NYUv2", len(plan)) as advance:
        for release_split, stem, split, row in plan:
            sample = {}
            for kind in KINDS:
                if (release_split, kind, stem) == ("train", "image", first_stem):
                    sample[kind] = first_image  # already read and checked
                    continue
                value = release.read(release_split, kind, stem)
                check_array(release.describe(release_split, kind, stem), kind, value, hw)
                sample[kind] = value
            for key, value in convert_sample(sample, resize).items():
                arrays[split, key][row] = value
            advance(1)
    mean, std = channel_stats(arrays["train", "images"])
    for array in arrays.values():
        array.flush()
    arrays.clear()
    return {
        "counts": counts,
        "mean": mean,
        "std": std,
        "source_size": list(hw),
        "validation": {
            "from": "train",
            "seed": seed,
            "fraction": VALIDATION_FRACTION,
            "samples": [_sample_id(stem) for stem in held],
        },
    }


def _source_meta(release: Release) -> dict[str, Any]:
    """Where the release was read: the folder holding train/ and val/ (zip: the zip's folder, name and prefix)."""
    if release.layout == "zip":
        return {"dir": str(release.path.parent), "layout": "zip", "zip": release.path.name, "prefix": release.prefix}
    return {"dir": str(release.path), "layout": release.layout}


def _base_meta(spec: DatasetSpec, release: Release, size: int, width: int, seed: int) -> dict[str, Any]:
    return {
        "dataset": NAME,
        "description": spec.description,
        **spec.meta_schema(),
        "size": size,
        "width": width,
        "seed": seed,
        "resize": RESIZE,
        "quantisation": "images are stored as uint8 round(image * 255) of the release's floats in [0, 1]: at most 1/510 a pixel",
        "conventions": {
            "segmentation": f"uint8 classes 0..{NYUV2_CLASSES - 1}; the release's -1 (not labelled) -> {IGNORE_INDEX}",
            "depth": "float32 metres as in the release; 0 (invalid) -> NaN",
            "normal": "float32 [3, H, W] (x, y, z) as in the release; all-zero (invalid) -> NaN in all three channels",
        },
        "splits": "test: the release's val/ (654 images); train and val: its train/ (795) less a seeded validation set",
        "order": ORDER,
        "normalization": "mean/std: per RGB channel, population statistics of the train images' pixels in [0, 1]",
        "source": _source_meta(release),
        "created_by": f"mtlcli {__version__}, numpy {np.__version__}, torch {torch.__version__}, torchvision {tv_version}",
    }


def prepare_nyuv2(spec: DatasetSpec, request: PrepareRequest, source: Path | None) -> Prepared:
    """Build `data_dir/nyuv2` from the MTAN release unless it is already there with this size and seed."""
    started = time.monotonic()
    size, width = _check_request(spec, request)
    data_dir, seed = request.data_dir, request.seed
    target = data_dir / NAME
    if (result := _already(target, size, seed, request.force)) is not None:
        return result
    release = locate_source(source, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(data_dir, NAME), contextlib.closing(release):
        remove_stale_temps(data_dir, NAME)
        partial = data_dir / f".{NAME}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        partial.mkdir()
        try:
            meta = {
                **_base_meta(spec, release, size, width, seed),
                **_build(partial, release, size, width, seed, request.console),
            }
            meta["prepare_seconds"] = round(time.monotonic() - started, 3)
            install_prepared(partial, target, meta)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return Prepared(path=target, built=True, meta=read_meta(target) or meta)


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of NYUv2 (`mtl prepare nyuv2`)."""
    return prepare_nyuv2(spec, request, one_source(spec, request))
