"""MTAN's preprocessed releases (one .npy file per sample and kind) -> a verified, memory-mappable prepared dataset.

MTAN (Liu et al. 2019, "End-to-End Multi-Task Learning with Attention", https://github.com/lorenmt/mtan,
im2im_pred/create_dataset.py) published NYUv2 and Cityscapes in one form, read as is by Nash-MTL, CAGrad and
FAMO (Cranial-XIX/FAMO experiments/{nyuv2,cityscapes}/data.py):

    DIR/train/<kind>/<i>.npy   one file per sample and kind (image, label..., depth, normal)
    DIR/val/<kind>/<i>.npy     the same for the test images

A `ReleaseFormat` names a release's folders and what each holds; the rest is shared: locate the release (DIR,
DIR/<name>/ or the unopened zip); check that the folders of each split hold the same sample names; read every
file once (never unpickling), validate it and convert it, streamed into memory-mapped .npy files in a temp
directory; measure the training images' mean/std; checksum, write meta.json and rename the directory to
`DATA_DIR/<name>` in one step (`store.install_prepared`). The release's val folder is our test split; our
validation split is a seeded 10% of its train folder. A prepare that stops half-way leaves only its temp
directory, which the next prepare removes before starting clean.

The kinds' roles and their conventions (checked per file; each problem is one error naming the file and pixel):

    image   float [H, W, 3] in [0, 1]                      -> uint8 [H, W, 3], round(255 x)
    label   float or int [H, W], classes 0..C-1, -1 = none -> uint8 [H, W], -1 -> IGNORE_INDEX
    depth   float [H, W, 1], >= 0, 0 = invalid              -> float32 [H, W], 0 -> NaN
    normal  float [H, W, 3], unit length or all-zero        -> float32 [3, H, W], all-zero -> NaN
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import zipfile
import zlib
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
from mtlcli.data.registry import DatasetSpec, Prepared, PrepareRequest
from mtlcli.data.store import (
    IGNORE_INDEX,
    SPLITS,
    building,
    exclusive_prepare,
    existing_meta,
    install_prepared,
    read_meta,
    remove_stale_temps,
)
from mtlcli.errors import DataError

IMAGE = "image"  # the kind every release has: the input image
RELEASE_SPLITS = {"train": "train", "val": "test"}  # release folder -> the prepared split it feeds
MTAN_URL = "https://github.com/lorenmt/mtan"
VALIDATION_FRACTION = 0.1
NORMAL_TOLERANCE = 1e-2  # a valid normal's length is within this of 1
CHANNELS = {"image": 3, "depth": 1, "normal": 3}  # trailing channel axis of each role (label has none)
RESIZE = (
    "none at the release's size; otherwise images: bilinear, antialias (torchvision.transforms.v2.functional.resize) "
    "of the float image, then quantised; segmentation, depth, normal: nearest neighbour at pixel centres "
    "(source index floor((i + 0.5) * in / out)), so invalid values are never blended"
)
ORDER = "numeric by file stem (then non-numeric stems by name)"
QUANTISATION = "images are stored as uint8 round(image * 255) of the release's floats in [0, 1]: at most 1/510 a pixel"


@dataclass(frozen=True)
class Kind:
    """One folder of the release: its role (image, label, depth, normal), the prepared target it feeds, its classes."""

    role: str
    target: str | None = None  # None for the image
    classes: int = 0  # label only


@dataclass(frozen=True)
class ReleaseFormat:
    """What one MTAN release holds and how its errors and meta.json speak of it."""

    name: str  # the prepared dataset's (registry) name; the default source is DATA_DIR/raw/<name>
    folder: str  # the subfolder DIR/<folder>/ looked in (the release's own name)
    title: str  # how messages name the data ("NYUv2")
    zip_names: tuple[str, ...]  # the unopened release's names looked for in DIR
    kinds: dict[str, Kind]  # folder -> what it holds, in the release's order; "image" among them
    release_hw: tuple[int, int]
    release_counts: dict[str, int]  # release split -> samples
    release_link: str  # how to get it: where MTAN's README links it
    conventions: dict[str, str]  # meta.json: target -> how it was converted
    splits: str  # meta.json: where the splits come from

    @property
    def shapes(self) -> dict[str, str]:
        return {kind: "[H, W]" if k.role == "label" else f"[H, W, {CHANNELS[k.role]}]" for kind, k in self.kinds.items()}

    def folders(self) -> str:
        """The folders of one split as a sentence: `image/, label/, depth/ and normal/`."""
        names = [f"{kind}/" for kind in self.kinds]
        return f"{', '.join(names[:-1])} and {names[-1]}"

    def layout_text(self) -> str:
        return (
            f"train/ and val/, each with {self.folders()} folders of <i>.npy files "
            f"(in DIR, in DIR/{self.folder}/ or in the unopened {self.zip_names[0]}; a zip of another name as --source FILE)"
        )

    def how_to_get(self) -> str:
        return f"the preprocessed {self.title} is linked from the MTAN repository's README ({MTAN_URL}: {self.release_link})"

    def redownload(self) -> str:
        return f"replace it from the release (extract or download {self.zip_names[0]} again)"


# ----------------------------------------------------------------------------- where the files are
def sample_key(stem: str) -> tuple[int, int, str]:
    """The order of samples: numeric stems by value, then the others by name."""
    return (0, int(stem), stem) if stem.isascii() and stem.isdigit() else (1, 0, stem)


def sample_id(stem: str) -> int | str:
    """How meta.json names a sample: its number when the stem is a plain number, else the stem."""
    return int(stem) if stem.isascii() and stem.isdigit() and str(int(stem)) == stem else stem


@dataclass
class Release:
    """A located release: a folder holding train/ and val/, or a zip holding them under `prefix`."""

    fmt: ReleaseFormat
    path: Path
    layout: str  # "folder" (--source DIR), "subfolder" (DIR/<folder>/) or "zip"
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
        hint = self.fmt.redownload()
        try:
            if self.layout == "zip":
                if self._zip is None:
                    self._zip = _zip_file(self.path, self.fmt)
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
            raise DataError(f"{where}: not a readable .npy file ({_first_line(exc)})", hint=hint) from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{where}: not a readable .npy file ({_first_line(exc)})", hint=hint) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _zip_file(path: Path, fmt: ReleaseFormat) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        hint = f"download {fmt.zip_names[0]} again"
        raise DataError(f"{path}: not a readable zip file ({_first_line(exc)})", hint=hint) from None


def _folder_stems(fmt: ReleaseFormat, root: Path) -> dict[tuple[str, str], list[str]] | None:
    """Stems of the .npy files in each split/kind folder of `root`, or None when it has neither train/ nor val/."""
    if not any((root / split).is_dir() for split in RELEASE_SPLITS):
        return None
    found: dict[tuple[str, str], list[str]] = {}
    for split in RELEASE_SPLITS:
        for kind in fmt.kinds:
            folder = root / split / kind
            if folder.is_dir():
                with os.scandir(folder) as entries:
                    found[split, kind] = [e.name[:-4] for e in entries if e.name.endswith(".npy") and e.is_file()]
    return found


def _zip_stems(fmt: ReleaseFormat, path: Path) -> tuple[str, dict[tuple[str, str], list[str]]]:
    """(prefix, stems per split/kind folder) of the release's tree inside a zip."""
    kinds = "|".join(re.escape(kind) for kind in fmt.kinds)
    member = re.compile(rf"^(?P<prefix>(?:[^/]+/)*?)(?P<split>train|val)/(?P<kind>{kinds})/(?P<stem>[^/]+)\.npy$")
    with contextlib.closing(_zip_file(path, fmt)) as archive:
        names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
    trees: dict[str, dict[tuple[str, str], list[str]]] = {}
    for name in names:
        match = member.match(name)
        if match:
            tree = trees.setdefault(match["prefix"], {})
            tree.setdefault((match["split"], match["kind"]), []).append(match["stem"])
    if not trees:
        raise DataError(f"{path}: holds no {fmt.title} .npy files; expected {fmt.layout_text()}", hint=fmt.how_to_get())
    if len(trees) > 1:
        prefixes = ", ".join(repr(p or "/") for p in sorted(trees))
        raise DataError(f"{path}: holds more than one {fmt.title} tree (under {prefixes})", hint="pass a zip with one release")
    return next(iter(trees.items()))


def _paired(release: Release, found: dict[tuple[str, str], list[str]]) -> dict[str, list[str]]:
    """Sample stems per release split: every folder must name the same samples."""
    kinds = list(release.fmt.kinds)
    missing = [f"{split}/{kind}/" for split in RELEASE_SPLITS for kind in kinds if (split, kind) not in found]
    if missing:
        raise DataError(
            f"{release.path}: missing {', '.join(missing)}; expected {release.fmt.layout_text()}",
            hint=f"pass the directory of the whole release; {release.fmt.how_to_get()}",
        )
    stems: dict[str, list[str]] = {}
    for split in RELEASE_SPLITS:
        sets = {kind: set(found[split, kind]) for kind in kinds}
        union = sorted(set().union(*sets.values()), key=sample_key)
        if not union:
            raise DataError(f"{release.path}: {split}/ holds no samples (no .npy files)", hint=release.fmt.redownload())
        for stem in union:
            absent = [kind for kind in kinds if stem not in sets[kind]]
            if absent:
                present = next(kind for kind in kinds if stem in sets[kind])
                counts = ", ".join(f"{kind}/ {len(sets[kind])}" for kind in kinds)
                raise DataError(
                    f"{release.describe(split, absent[0], stem)} is missing "
                    f"({release.describe(split, present, stem)} exists; {split}/ holds {counts} files)",
                    hint=f"every sample needs {release.fmt.folders().replace('/', '')} files of the same name",
                )
        stems[split] = union
    return stems


def locate_source(fmt: ReleaseFormat, source: Path | None, data_dir: Path) -> Release:
    """The release in `source` (DIR, DIR/<folder>/ or DIR/<zip>, or a zip itself); `data_dir/raw/<name>` when None."""
    base = Path(source) if source is not None else data_dir / "raw" / fmt.name
    if source is not None and not base.exists():
        raise DataError(
            f"--source {base}: no such directory", hint=f"pass the directory holding train/ and val/; {fmt.how_to_get()}"
        )
    if base.is_file():
        return _zip_release(fmt, base)
    partial: tuple[Path, str, dict[tuple[str, str], list[str]]] | None = None
    for root, layout in ((base, "folder"), (base / fmt.folder, "subfolder")):
        found = _folder_stems(fmt, root)
        if found is not None and len(found) == len(RELEASE_SPLITS) * len(fmt.kinds):
            return _folder_release(fmt, root, layout, found)
        if found is not None and partial is None:
            partial = (root, layout, found)
    for zip_name in fmt.zip_names:
        if (base / zip_name).is_file():
            return _zip_release(fmt, base / zip_name)
    if partial is not None:
        _folder_release(fmt, *partial)  # says which folders are missing
    where = "" if source is None else "--source "
    hint = f"{fmt.how_to_get()}; then run `mtl prepare {fmt.name} --source DIR`" + ("" if source else f" (or put it in {base})")
    raise DataError(
        f"{where}{base}: {fmt.title} not found; `mtl prepare {fmt.name}` needs the MTAN release: {fmt.layout_text()}",
        hint=hint,
    )


def _folder_release(fmt: ReleaseFormat, root: Path, layout: str, found: dict[tuple[str, str], list[str]]) -> Release:
    release = Release(fmt=fmt, path=root, layout=layout, stems={})
    release.stems = _paired(release, found)
    return release


def _zip_release(fmt: ReleaseFormat, path: Path) -> Release:
    prefix, found = _zip_stems(fmt, path)
    release = Release(fmt=fmt, path=path, layout="zip", stems={}, prefix=prefix)
    release.stems = _paired(release, found)
    return release


# ----------------------------------------------------------------------------- validating one sample
def _pixel(index: tuple[int, ...]) -> str:
    return f"pixel (row {index[0]}, column {index[1]})"


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def check_array(fmt: ReleaseFormat, where: str, kind: str, array: np.ndarray, hw: tuple[int, int] | None) -> None:
    """Shape, dtype and value conventions of one release file; DataError naming the file and pixel otherwise."""
    role = fmt.kinds[kind].role
    floating = array.dtype.kind == "f"
    if not (floating or (role == "label" and array.dtype.kind in "iu")):
        allowed = "a float or integer" if role == "label" else "a float"
        raise DataError(f"{where}: {kind} has dtype {array.dtype}, expected {allowed} array", hint=fmt.redownload())
    rank_ok = array.ndim == (2 if role == "label" else 3) and (role == "label" or array.shape[2] == CHANNELS[role])
    if not rank_ok or (hw is not None and tuple(array.shape[:2]) != hw):
        size = f" with H, W = {hw[0]}, {hw[1]} like the first image" if hw is not None else ""
        raise DataError(
            f"{where}: {kind} has shape {list(array.shape)}, expected {fmt.shapes[kind]}{size}", hint=fmt.redownload()
        )
    if floating and not np.isfinite(array).all():
        index = _first(~np.isfinite(array))
        raise DataError(f"{where}: {kind} holds {array[index]} at {_pixel(index)} (NaN or infinite)", hint=fmt.redownload())
    problem = _value_problem(kind, fmt.kinds[kind], array)
    if problem is not None:
        raise DataError(f"{where}: {problem}", hint=fmt.redownload())


def _value_problem(name: str, kind: Kind, array: np.ndarray) -> str | None:
    if kind.role == "image":
        bad = (array < 0) | (array > 1)
        return f"image value {array[_first(bad)]} at {_pixel(_first(bad))} is outside [0, 1]" if bad.any() else None
    if kind.role == "label":
        bad = (array < -1) | (array >= kind.classes) | (array != np.round(array))
        if bad.any():
            index = _first(bad)
            return f"{name} {array[index]} at {_pixel(index)} is not a class (0..{kind.classes - 1}) or -1 (not labelled)"
        return None
    if kind.role == "depth":
        bad = array < 0
        return f"{name} {array[_first(bad)]} at {_pixel(_first(bad))} is negative (0 marks invalid)" if bad.any() else None
    vectors = array.astype(np.float64, copy=False)
    length = np.sqrt((vectors * vectors).sum(axis=-1))
    bad = (np.abs(length - 1) > NORMAL_TOLERANCE) & (vectors != 0).any(axis=-1)
    if bad.any():
        index = _first(bad)
        values = ", ".join(f"{v:.4g}" for v in vectors[index])
        return f"{name} ({values}) at {_pixel(index)} has length {length[index]:.4g}: neither unit length nor all-zero (invalid)"
    return None


# ----------------------------------------------------------------------------- converting one sample
@dataclass(frozen=True)
class Resize:
    """From the release's H x W to the prepared size."""

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


def _image(image: np.ndarray, resize: Resize) -> np.ndarray:
    if not resize.identity:
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=np.float32))
        image = tvf.resize(tensor, list(resize.target), interpolation=InterpolationMode.BILINEAR, antialias=True)
        image = image.numpy().transpose(1, 2, 0)
    return np.clip(np.round(np.asarray(image, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


def _target(role: str, array: np.ndarray) -> np.ndarray:
    """One resized target in the prepared convention of its role."""
    if role == "label":
        return np.where(array < 0, IGNORE_INDEX, array).astype(np.uint8)
    if role == "depth":
        depth = array[..., 0]
        return np.where(depth == 0, np.nan, depth).astype(np.float32)
    invalid = (array == 0).all(axis=-1)
    return np.where(invalid[..., None], np.nan, array).astype(np.float32).transpose(2, 0, 1)


def convert_sample(fmt: ReleaseFormat, arrays: dict[str, np.ndarray], resize: Resize) -> dict[str, np.ndarray]:
    """Validated release arrays -> the prepared arrays of one sample: "images" and one per target."""
    result = {"images": _image(arrays[IMAGE], resize)}
    rows, cols = resize.nearest() if not resize.identity else (None, None)
    for kind, spec in fmt.kinds.items():
        if spec.target is None:
            continue
        array = arrays[kind]
        if rows is not None:
            array = array[rows[:, None], cols[None, :]]
        result[spec.target] = _target(spec.role, array)
    return result



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
            hint=release.fmt.redownload(),
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
        raise DataError(f"--workers applies to datasets decoded from images (celeba, cityscapes), not to {spec.name}")
    return size, width


def _first_image(release: Release, spec: DatasetSpec, size: int) -> tuple[str, np.ndarray]:
    """The first training image, which fixes the release's H x W (the dataset's aspect, at least `size` high)."""
    fmt = release.fmt
    stem = release.stems["train"][0]
    where = release.describe("train", IMAGE, stem)
    image = release.read("train", IMAGE, stem)
    check_array(fmt, where, IMAGE, image, None)
    height, width = image.shape[:2]
    if height * spec.aspect[0] != width * spec.aspect[1]:
        aspect = f"{spec.aspect[0]}:{spec.aspect[1]}"
        expected = f"{fmt.release_hw[0]}x{fmt.release_hw[1]}"
        raise DataError(f"{where}: image is {height}x{width}, expected the {aspect} of the release ({expected})",
                        hint=fmt.redownload())  # fmt: skip
    if size > height:
        raise DataError(f"--size {size}: the source images are {height}x{width}; choose a size up to {height}")
    return stem, image


_SHAPES = {"label": lambda h, w: (h, w), "depth": lambda h, w: (h, w), "normal": lambda h, w: (3, h, w)}
_DTYPES = {"label": np.uint8, "depth": np.float32, "normal": np.float32}


def _build(partial: Path, release: Release, spec: DatasetSpec, size: int, width: int, seed: int,
           console: Console | None) -> dict[str, Any]:  # fmt: skip
    """Read, validate and convert every sample into memory-mapped arrays in `partial`; the meta's data part."""
    fmt = release.fmt
    plan, counts, held = plan_destinations(release, seed)
    first_stem, first_image = _first_image(release, spec, size)
    hw = (int(first_image.shape[0]), int(first_image.shape[1]))
    resize = Resize(hw, (size, width))
    found = {split: len(stems) for split, stems in release.stems.items()}
    if hw != fmt.release_hw or found != fmt.release_counts:
        ours = f"{found['train']} train / {found['val']} val images of {hw[0]}x{hw[1]}"
        theirs = f"{fmt.release_counts['train']} / {fmt.release_counts['val']} of {fmt.release_hw[0]}x{fmt.release_hw[1]}"
        note(console, f"the source holds {ours}; the MTAN release {theirs}")
    shapes: dict[str, tuple[tuple[int, ...], type]] = {"images": ((size, width, 3), np.uint8)}
    for kind in fmt.kinds.values():
        if kind.target is not None:
            shapes[kind.target] = (_SHAPES[kind.role](size, width), _DTYPES[kind.role])
    arrays = {
        (split, key): open_memmap(partial / f"{split}_{key}.npy", mode="w+", dtype=dtype, shape=(counts[split], *shape))
        for split in SPLITS
        for key, (shape, dtype) in shapes.items()
    }
    with progress(console, f"read {fmt.title}", len(plan)) as advance:
        for release_split, stem, split, row in plan:
            sample = {}
            for kind in fmt.kinds:
                if (release_split, kind, stem) == ("train", IMAGE, first_stem):
                    sample[kind] = first_image  # already read and checked
                    continue
                value = release.read(release_split, kind, stem)
                check_array(fmt, release.describe(release_split, kind, stem), kind, value, hw)
                sample[kind] = value
            for key, value in convert_sample(fmt, sample, resize).items():
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
            "samples": [sample_id(stem) for stem in held],
        },
    }


def _source_meta(release: Release) -> dict[str, Any]:
    """Where the release was read: the folder holding train/ and val/ (zip: the zip's folder, name and prefix)."""
    if release.layout == "zip":
        return {"dir": str(release.path.parent), "layout": "zip", "zip": release.path.name, "prefix": release.prefix}
    return {"dir": str(release.path), "layout": release.layout}


def _base_meta(spec: DatasetSpec, release: Release, size: int, width: int, seed: int) -> dict[str, Any]:
    fmt = release.fmt
    return {
        "dataset": spec.name,
        "description": spec.description,
        **spec.meta_schema(),
        "size": size,
        "width": width,
        "seed": seed,
        "resize": RESIZE,
        "quantisation": QUANTISATION,
        "conventions": fmt.conventions,
        "splits": fmt.splits,
        "order": ORDER,
        "normalization": "mean/std: per RGB channel, population statistics of the train images' pixels in [0, 1]",
        "source": _source_meta(release),
        "created_by": f"mtlcli {__version__}, numpy {np.__version__}, torch {torch.__version__}, torchvision {tv_version}",
    }


def prepare_release(fmt: ReleaseFormat, spec: DatasetSpec, request: PrepareRequest, source: Path | None) -> Prepared:
    """Build `data_dir/<name>` from the MTAN release unless it is already there with this size and seed."""
    started = time.monotonic()
    size, width = _check_request(spec, request)
    data_dir, seed = request.data_dir, request.seed
    target = data_dir / spec.name
    existing = existing_meta(target, size=size, seed=seed, force=request.force)
    if existing is not None:
        return Prepared(path=target, built=False, meta=existing)
    release = locate_source(fmt, source, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(data_dir, spec.name), contextlib.closing(release):
        remove_stale_temps(data_dir, spec.name)
        with building(data_dir, spec.name) as partial:
            meta = {
                **_base_meta(spec, release, size, width, seed),
                **_build(partial, release, spec, size, width, seed, request.console),
            }
            meta["prepare_seconds"] = round(time.monotonic() - started, 3)
            install_prepared(partial, target, meta)
    return Prepared(path=target, built=True, meta=read_meta(target) or meta)
