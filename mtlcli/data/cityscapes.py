"""`mtl prepare cityscapes`: the official Cityscapes release -> a verified, memory-mappable prepared dataset.

Cityscapes (Cordts et al. 2016, "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR) holds
2048x1024 street scenes with fine annotations: 2,975 train and 500 val frames with public labels. Sener & Koltun
(2018, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS) learn three tasks on it: semantic
segmentation, instance segmentation as per-pixel regression of the offset to the instance's centroid, and
disparity. What is built, per split, at H x W = size x 2*size:

- images     uint8 [N, H, W, 3]      bilinear, antialiased resize of leftImg8bit
- semantic   uint8 [N, H, W]         the 19 official train ids of gtFine labelIds, 255 = ignored
- category   uint8 [N, H, W]         the 7 categories (flat ... vehicle, as MTAN / Nash-MTL), 255 = void
- instance   float32 [N, 2, H, W]    (dy, dx) from each pixel of a thing instance to its centroid, in output
                                     pixels, computed on the nearest-resized instanceIds; NaN elsewhere
- disparity  float32 [N, H, W]       (p - 1) / 256 of the disparity PNG (release units), NaN where p == 0

Label maps and disparity are resized by nearest neighbour (pixel centres), never blended. The release's val is
our test split; our val is a seeded 275 of the release's 2,975 train frames (as in the paper). The release's
test split (no public labels) is ignored.

The steps: locate the three packages (folders or the unopened official zips, in any mix); list the frames and
check that each has its four files; check every PNG header (mode, bit depth, sizes) before decoding anything;
decode (Pillow) and resize in parallel chunks, each worker process writing its rows straight into the memory-mapped
.npy files of `DATA_DIR/.cityscapes.partial-<size>-<seed>/` (done.json records finished chunks: an interrupted
prepare resumes there); measure the train images' mean/std; checksum, write meta.json and rename the directory to
`DATA_DIR/cityscapes` in one step.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import math
import os
import struct
import time
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import torchvision
from numpy.lib.format import open_memmap
from PIL import Image
from rich.console import Console
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from mtlcli import __version__
from mtlcli.data.chunked import DONE, ChunkedBuild, channel_stats, fork_server, init_worker, take
from mtlcli.data.feedback import note, progress
from mtlcli.data.registry import CITYSCAPES_CATEGORIES, CITYSCAPES_CLASSES, DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import SPLITS, exclusive_prepare, existing_meta, install_prepared, read_meta
from mtlcli.errors import DataError

NAME = "cityscapes"
OFFICIAL_URL = "https://www.cityscapes-dataset.com/downloads/"
PACKAGES = ("leftImg8bit", "gtFine", "disparity")
RELEASE_SPLITS = ("train", "val")  # the release's test split has no public labels
OFFICIAL_COUNTS = {"train": 2975, "val": 500}
OFFICIAL_SIZE = (1024, 2048)
VALIDATION_FRACTION = 275 / 2975  # Sener & Koltun (2018), appendix C.3: 275 of the 2,975 training images
OUTPUT_STRIDE = 8  # the dilated ResNet-50's: the height (and width) must be a multiple of it
IGNORE = 255
ARRAYS = ("images", "semantic", "category", "instance", "disparity")  # `<split>_<array>.npy`
CHUNK_FRAMES = 8  # frames one worker decodes per task (fewer for big sizes: see chunk_frames)
CHUNK_BYTES = 64 << 20  # at most this much output per chunk
STATS_BYTES = 64 << 20  # image bytes read at a time while measuring mean/std
NEAREST = "nearest: output pixel (i, j) <- source pixel (floor((i + 1/2) * H_src / H), floor((j + 1/2) * W_src / W))"
RESIZE = {
    "images": "bilinear, antialias, torchvision.transforms.v2.functional.resize",
    "semantic": NEAREST,
    "category": NEAREST,
    "instance": f"offsets computed at the output size from the instanceIds resized by {NEAREST}",
    "disparity": f"{NEAREST} (invalid pixels are never blended)",
}

# labelId -> (name, trainId, category) after cityscapesScripts' helpers/labels.py; trainId 255 and category
# None: ignored. License plate (id -1) never appears in the labelIds PNGs.
LABELS: dict[int, tuple[str, int, str | None]] = {
    0: ("unlabeled", IGNORE, None),
    1: ("ego vehicle", IGNORE, None),
    2: ("rectification border", IGNORE, None),
    3: ("out of roi", IGNORE, None),
    4: ("static", IGNORE, None),
    5: ("dynamic", IGNORE, None),
    6: ("ground", IGNORE, None),
    7: ("road", 0, "flat"),
    8: ("sidewalk", 1, "flat"),
    9: ("parking", IGNORE, "flat"),
    10: ("rail track", IGNORE, "flat"),
    11: ("building", 2, "construction"),
    12: ("wall", 3, "construction"),
    13: ("fence", 4, "construction"),
    14: ("guard rail", IGNORE, "construction"),
    15: ("bridge", IGNORE, "construction"),
    16: ("tunnel", IGNORE, "construction"),
    17: ("pole", 5, "object"),
    18: ("polegroup", IGNORE, "object"),
    19: ("traffic light", 6, "object"),
    20: ("traffic sign", 7, "object"),
    21: ("vegetation", 8, "nature"),
    22: ("terrain", 9, "nature"),
    23: ("sky", 10, "sky"),
    24: ("person", 11, "human"),
    25: ("rider", 12, "human"),
    26: ("car", 13, "vehicle"),
    27: ("truck", 14, "vehicle"),
    28: ("bus", 15, "vehicle"),
    29: ("caravan", IGNORE, "vehicle"),
    30: ("trailer", IGNORE, "vehicle"),
    31: ("train", 16, "vehicle"),
    32: ("motorcycle", 17, "vehicle"),
    33: ("bicycle", 18, "vehicle"),
}
NUM_LABEL_IDS = len(LABELS)  # label ids 0..33
THINGS = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")  # train classes with instances
INSTANCE_BASE = 1000  # instanceIds: labelId * 1000 + k for an individual instance, labelId otherwise


def _lookup_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train id, category, is-thing) per label id; checked against the registry's class and category names."""
    train = np.full(256, IGNORE, dtype=np.uint8)
    category = np.full(256, IGNORE, dtype=np.uint8)
    thing = np.zeros(65536 // INSTANCE_BASE + 1, dtype=bool)
    for label, (name, train_id, cat) in LABELS.items():
        if train_id != IGNORE:
            if CITYSCAPES_CLASSES[train_id] != name:
                raise AssertionError(f"train id {train_id} is {name!r} here, {CITYSCAPES_CLASSES[train_id]!r} in the registry")
            train[label] = train_id
            thing[label] = name in THINGS
        if cat is not None:
            category[label] = CITYSCAPES_CATEGORIES.index(cat)
    return train, category, thing


TRAIN_IDS, CATEGORY_IDS, IS_THING = _lookup_tables()


# ----------------------------------------------------------------------------- the four files of a frame
@dataclass(frozen=True)
class Part:
    """One of a frame's four files: its package, file-name suffix and PNG format."""

    key: str
    package: str
    suffix: str
    depth: int  # bits per sample
    color: int  # PNG colour type: 0 grayscale, 2 RGB

    @property
    def format(self) -> str:
        return f"{self.depth}-bit {_COLOR_TYPES[self.color]}"


PARTS = (
    Part("image", "leftImg8bit", "_leftImg8bit.png", 8, 2),
    Part("label", "gtFine", "_gtFine_labelIds.png", 8, 0),
    Part("instance", "gtFine", "_gtFine_instanceIds.png", 16, 0),
    Part("disparity", "disparity", "_disparity.png", 16, 0),
)
PART = {part.key: part for part in PARTS}
_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, order=True)
class Frame:
    """A frame of the release: `<package>/<split>/<city>/<stem><suffix>` for each of its four files."""

    stem: str  # e.g. aachen_000000_000019 (sorting frames sorts their file names)
    city: str
    split: str  # the release's split: train or val

    def member(self, part: Part) -> str:
        return f"{part.package}/{self.split}/{self.city}/{self.stem}{part.suffix}"


Job = tuple[str, int, list[Frame]]  # (our split, chunk index, frames)


# ----------------------------------------------------------------------------- where the files are
@dataclass(frozen=True)
class Package:
    """leftImg8bit, gtFine or disparity: a folder holding `<name>/`, or the unopened `<name>_trainvaltest.zip`."""

    name: str
    path: Path  # the folder that holds `<name>/`, or the zip
    kind: str  # "folder" or "zip"

    @property
    def zip_name(self) -> str:
        return f"{self.name}_trainvaltest.zip"

    def describe(self, member: str) -> str:
        """How an error names one file."""
        return str(self.path / member) if self.kind == "folder" else f"{member} in {self.path}"

    def listing(self) -> list[str]:
        """The PNG members `<name>/<split>/<city>/<file>` of the train and val splits."""
        if self.kind == "zip":
            with contextlib.closing(_zip_file(self.path, self.zip_name)) as archive:
                names = archive.namelist()
            return [m for m in names if _is_frame_file(m, self.name)]
        found = []
        for split in RELEASE_SPLITS:
            folder = self.path / self.name / split
            if not folder.is_dir():
                continue
            for city in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
                found += [f"{self.name}/{split}/{city}/{e.name}" for e in os.scandir(folder / city) if e.name.endswith(".png")]
        return found

    def read(self, member: str, limit: int = -1) -> bytes:
        """A member's bytes (the first `limit` of them when limit >= 0); DataError naming it if unreadable."""
        try:
            if self.kind == "folder":
                with open(self.path / member, "rb") as handle:
                    return handle.read(limit)
            with _open_zip(self.path, self.zip_name).open(member) as handle:
                return handle.read(limit)
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DataError(f"{self.describe(member)}: cannot be read ({exc})", hint=self._again()) from None

    def _again(self) -> str:
        return f"extract or download {self.zip_name} again"


def _is_frame_file(member: str, package: str) -> bool:
    parts = member.split("/")
    return len(parts) == 4 and parts[0] == package and parts[1] in RELEASE_SPLITS and parts[3].endswith(".png")


_ZIPS: dict[Path, zipfile.ZipFile] = {}  # one open handle per zip and process (its directory is read once)


def _zip_file(path: Path, official: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc})", hint=f"download {official} again") from None


def _open_zip(path: Path, official: str) -> zipfile.ZipFile:
    """This process's cached handle on a zip."""
    if path not in _ZIPS:
        _ZIPS[path] = _zip_file(path, official)
    return _ZIPS[path]


def _close_zips() -> None:
    while _ZIPS:
        _ZIPS.popitem()[1].close()


@dataclass(frozen=True)
class CityscapesSource:
    """A located release: the --source directory and its three packages."""

    root: Path
    packages: dict[str, Package]

    def describe(self, frame: Frame, part: Part) -> str:
        return self.packages[part.package].describe(frame.member(part))

    def read(self, frame: Frame, part: Part, limit: int = -1) -> bytes:
        return self.packages[part.package].read(frame.member(part), limit)


def _package_in(base: Path, name: str) -> Package | None:
    """`base/<name>/`, `base/<name>_trainvaltest/<name>/` (a zip extracted into its own folder) or the zip."""
    for root in (base, base / f"{name}_trainvaltest"):
        if (root / name).is_dir():
            return Package(name, root, "folder")
    archive = base / f"{name}_trainvaltest.zip"
    return Package(name, archive, "zip") if archive.is_file() else None


def _needed() -> str:
    return ", ".join(f"{p}/ (or {p}_trainvaltest.zip)" for p in PACKAGES)


def _how_to_get() -> str:
    return (
        f"the official release is at {OFFICIAL_URL} (free registration): download "
        f"{', '.join(f'{p}_trainvaltest.zip' for p in PACKAGES)} into one directory (no need to unzip them), "
        "then run `mtl prepare cityscapes --source DIR`"
    )


def locate_source(source: Path | None, data_dir: Path) -> CityscapesSource:
    """The three packages in `source` (`data_dir/raw/cityscapes` when None), each a folder or the official zip."""
    base = Path(source) if source is not None else data_dir / "raw" / NAME
    if source is not None and not base.is_dir():
        raise DataError(f"--source {base}: not a directory", hint=_how_to_get())
    packages = {name: _package_in(base, name) for name in PACKAGES}
    missing = [name for name, package in packages.items() if package is None]
    if len(missing) == len(PACKAGES):
        where = f"--source {base}: no Cityscapes release there" if source is not None else f"Cityscapes is not in {base}"
        raise DataError(f"{where}; `mtl prepare cityscapes` needs {_needed()}", hint=_how_to_get())
    if missing:
        names = ", ".join(f"{p}/ (or {p}_trainvaltest.zip)" for p in missing)
        found = ", ".join(p for p in PACKAGES if p not in missing)
        raise DataError(f"{base}: missing {names} (found {found})", hint=_how_to_get())
    return CityscapesSource(root=base, packages={k: v for k, v in packages.items() if v is not None})


# ----------------------------------------------------------------------------- the frames and splits
def find_frames(source: CityscapesSource) -> dict[str, list[Frame]]:
    """The release's train and val frames, sorted by file name; each must have all four files."""
    found: dict[Frame, set[str]] = defaultdict(set)
    for name, package in source.packages.items():
        parts = [p for p in PARTS if p.package == name]
        for member in package.listing():
            _, split, city, file = member.split("/")
            for part in parts:
                if file.endswith(part.suffix):
                    found[Frame(file[: -len(part.suffix)], city, split)].add(part.key)
    frames: dict[str, list[Frame]] = {split: [] for split in RELEASE_SPLITS}
    for frame in sorted(found):
        have = found[frame]
        missing = next((p for p in PARTS if p.key not in have), None)
        if missing is not None:
            present = next(p for p in PARTS if p.key in have)
            raise DataError(
                f"{source.describe(frame, missing)} is missing (the companion of {source.describe(frame, present)})",
                hint=f"every frame needs its {', '.join(p.suffix.lstrip('_') for p in PARTS)}; "
                f"extract or download {source.packages[missing.package].zip_name} again",
            )
        if frames[frame.split] and frames[frame.split][-1].stem == frame.stem:
            other = frames[frame.split][-1]
            raise DataError(
                f"{source.describe(frame, PART['image'])}: frame {frame.stem} is also in {other.city}/",
                hint="each frame must be in one city folder",
            )
        frames[frame.split].append(frame)
    for split, listed in frames.items():
        if not listed:
            where = " and ".join(source.packages[p].describe(f"{p}/{split}/") for p in PACKAGES)
            raise DataError(
                f"the release's {split} split has no frames (looked in {where})",
                hint=f"`mtl prepare cityscapes` needs the train and val splits of the release; {_how_to_get()}",
            )
    return frames


def validation_count(n: int) -> int:
    """The frames held out of the release's train: 275 of the full release's 2,975 (the paper's), the same fraction
    of a smaller copy rounded half up, at least 1."""
    return max(1, math.floor(n * VALIDATION_FRACTION + 0.5))


@dataclass(frozen=True)
class Plan:
    """What to build: the frames of our train, val (held out of the release's train) and test (the release's val)."""

    frames: dict[str, list[Frame]]

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(self.frames[split]) for split in SPLITS}


def plan_splits(release: dict[str, list[Frame]], seed: int, source: CityscapesSource) -> Plan:
    """train / val from the release's train by a seeded permutation; test = the release's val. Sorted by name."""
    train = release["train"]
    if len(train) < 2:
        where = source.packages["leftImg8bit"].describe("leftImg8bit/train/")
        raise DataError(f"{where}: 1 frame; at least 2 are needed to hold out a validation set", hint=_how_to_get())
    chosen = np.random.default_rng(seed).permutation(len(train))[: validation_count(len(train))]
    held = np.zeros(len(train), dtype=bool)
    held[chosen] = True
    return Plan(
        frames={
            "train": [f for f, h in zip(train, held, strict=True) if not h],
            "val": [f for f, h in zip(train, held, strict=True) if h],
            "test": list(release["val"]),
        }
    )


# ----------------------------------------------------------------------------- PNG headers (before any decoding)
def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk, or None when it is not a PNG."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, color


def _describe_format(depth: int, color: int) -> str:
    return f"{depth}-bit {_COLOR_TYPES.get(color, f'colour type {color}')}"


def check_headers(source: CityscapesSource, plan: Plan, console: Console | None) -> None:
    """Every file is a PNG of its official mode and bit depth, and a frame's four files have one size."""
    odd = 0
    for split in SPLITS:
        for frame in plan.frames[split]:
            sizes = {}
            for part in PARTS:
                header = png_header(source.read(frame, part, 33))
                what = source.describe(frame, part)
                if header is None:
                    raise DataError(f"{what}: not a PNG file", hint=_replace(source, part))
                width, height, depth, color = header
                if (depth, color) != (part.depth, part.color):
                    raise DataError(
                        f"{what}: {_describe_format(depth, color)} PNG, expected {part.format} (the official format)",
                        hint=_replace(source, part),
                    )
                if width == 0 or height == 0:
                    raise DataError(f"{what}: an empty {width}x{height} image", hint=_replace(source, part))
                sizes[part.key] = (height, width)
                image = sizes["image"]
                if sizes[part.key] != image:
                    raise DataError(
                        f"{what} is {width}x{height}, but {source.describe(frame, PART['image'])} is {image[1]}x{image[0]}",
                        hint="a frame's image, labelIds, instanceIds and disparity must have one size: " + _replace(source, part),
                    )
            odd += sizes["image"][1] != 2 * sizes["image"][0]
    if odd:
        official = f"{OFFICIAL_SIZE[1]}x{OFFICIAL_SIZE[0]}"
        note(console, f"{odd} frame(s) are not 2:1 (the release's are {official}): they are stretched to {NAME}'s 2:1")


def _replace(source: CityscapesSource, part: Part) -> str:
    return f"replace it: extract or download {source.packages[part.package].zip_name} again"


# ----------------------------------------------------------------------------- decoding one frame
def decode_png(data: bytes, what: str, part: Part) -> np.ndarray:
    """A PNG's pixels: uint8 [H, W, 3] (RGB), uint8 [H, W] (8-bit gray) or uint16 [H, W] (16-bit gray).

    Decoded with Pillow: torchvision's decode_png (deprecated since 0.29) crashes the process on a bad CRC.
    """
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            pixels = np.array(image)
            mode = image.mode
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError) as exc:
        raise DataError(f"{what}: not a readable PNG ({exc})") from None
    dtype = np.uint16 if part.depth == 16 else np.uint8
    shape_ok = pixels.ndim == 3 and pixels.shape[2] == 3 if part.color == 2 else pixels.ndim == 2
    if not shape_ok or pixels.dtype.kind not in "ui":
        raise DataError(f"{what}: decoded as mode {mode}, expected {part.format}")
    return pixels.astype(dtype, copy=False)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """The source index of each output index under nearest-neighbour resampling by pixel centres."""
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def _first_bad(pixels: np.ndarray, bad: np.ndarray) -> tuple[int, int, int]:
    y, x = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
    return int(pixels[y, x]), int(y), int(x)


def check_label_ids(labels: np.ndarray, what: str) -> None:
    """Every labelId is in 0..33."""
    bad = labels >= NUM_LABEL_IDS
    if bad.any():
        value, y, x = _first_bad(labels, bad)
        raise DataError(
            f"{what}: label id {value} at pixel (y={y}, x={x}) is outside 0..{NUM_LABEL_IDS - 1} ({int(bad.sum())} such pixels)",
            hint="the gtFine labelIds PNGs hold the label ids of cityscapesScripts' labels.py: extract or download "
            "gtFine_trainvaltest.zip again",
        )


def check_instance_ids(ids: np.ndarray, what: str) -> None:
    """Every instanceId is a label id in 0..33 or labelId * 1000 + k with such a label id."""
    bad = ((ids >= NUM_LABEL_IDS) & (ids < INSTANCE_BASE)) | (ids >= NUM_LABEL_IDS * INSTANCE_BASE)
    if bad.any():
        value, y, x = _first_bad(ids, bad)
        label = value // INSTANCE_BASE if value >= INSTANCE_BASE else value
        raise DataError(
            f"{what}: instance id {value} at pixel (y={y}, x={x}) has label id {label}, outside 0..{NUM_LABEL_IDS - 1} "
            f"({int(bad.sum())} such pixels)",
            hint="instanceIds hold labelId * 1000 + k for an instance, the label id otherwise: extract or download "
            "gtFine_trainvaltest.zip again",
        )


def instance_offsets(ids: np.ndarray) -> np.ndarray:
    """float32 [2, H, W]: (dy, dx) = centroid - position for each pixel of an individual thing instance, NaN elsewhere.

    `ids` is an instanceIds map at the output size; an instance is an id >= 1000 whose label (id // 1000) is one of
    the 8 train classes with instances. No loop over pixels or instances.
    """
    out = np.full((2, *ids.shape), np.nan, dtype=np.float32)
    ids = ids.astype(np.int64, copy=False)
    ys, xs = np.nonzero((ids >= INSTANCE_BASE) & IS_THING[ids // INSTANCE_BASE])
    if not len(ys):
        return out
    members = ids[ys, xs]  # per pixel, its instance id: histograms over the id values, no sort
    counts = np.bincount(members)[members]
    out[0, ys, xs] = np.bincount(members, weights=ys)[members] / counts - ys
    out[1, ys, xs] = np.bincount(members, weights=xs)[members] / counts - xs
    return out


def disparity_values(raw: np.ndarray) -> np.ndarray:
    """float32 disparity (p - 1) / 256 of the release's uint16 PNG values p, NaN where p == 0 (invalid)."""
    values = (raw.astype(np.float32) - 1) / 256
    values[raw == 0] = np.nan
    return values


def decode_frame(source: CityscapesSource, frame: Frame, height: int, width: int) -> dict[str, np.ndarray]:
    """A frame's arrays at height x width (see the module docstring), validated as they are decoded."""
    pixels = {}
    for part in PARTS:
        what = source.describe(frame, part)
        pixels[part.key] = decode_png(source.read(frame, part), what, part)
        if part.key == "label":
            check_label_ids(pixels["label"], what)
        elif part.key == "instance":
            check_instance_ids(pixels["instance"], what)
    image = torch.from_numpy(pixels["image"]).permute(2, 0, 1)
    resized = tvf.resize(image, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
    rows, cols = np.ix_(nearest_index(image.shape[1], height), nearest_index(image.shape[2], width))
    labels = pixels["label"][rows, cols]
    return {
        "images": resized.permute(1, 2, 0).numpy(),
        "semantic": TRAIN_IDS[labels],
        "category": CATEGORY_IDS[labels],
        "instance": instance_offsets(pixels["instance"][rows, cols]),
        "disparity": disparity_values(pixels["disparity"][rows, cols]),
    }


def array_shapes(n: int, height: int, width: int) -> dict[str, tuple[tuple[int, ...], type[np.generic]]]:
    """Shape and dtype of each array of a split of n frames."""
    return {
        "images": ((n, height, width, 3), np.uint8),
        "semantic": ((n, height, width), np.uint8),
        "category": ((n, height, width), np.uint8),
        "instance": ((n, 2, height, width), np.float32),
        "disparity": ((n, height, width), np.float32),
    }


def decode_chunk(source: CityscapesSource, job: Job, start: int, height: int, width: int, directory: Path) -> int:
    """Decode a chunk of frames straight into rows start.. of the split's memory-mapped arrays in `directory`
    (the decoding process writes them: nothing large goes through a pipe) and flush them; returns the frames."""
    split, _, frames = job
    arrays = {key: open_memmap(directory / f"{split}_{key}.npy", mode="r+") for key in ARRAYS}
    for i, frame in enumerate(frames):
        for key, value in decode_frame(source, frame, height, width).items():
            arrays[key][start + i] = value
    for array in arrays.values():
        array.flush()
    return len(frames)


def chunk_frames(height: int, width: int) -> int:
    """Frames per chunk: CHUNK_FRAMES, fewer when that would exceed CHUNK_BYTES of output."""
    per_frame = height * width * (3 + 1 + 1 + 8 + 4)
    return max(1, min(CHUNK_FRAMES, CHUNK_BYTES // per_frame))


# ----------------------------------------------------------------------------- parallel decoding
def _decoded(build: PartialBuild, source: CityscapesSource, workers: int) -> Iterator[Job]:
    """The jobs still to do, each yielded once its frames are written and flushed: decoded in this process
    when workers == 1, else in a process pool."""
    jobs = build.jobs()
    workers = max(1, min(workers, len(jobs)))
    args = (build.height, build.width, build.path)
    if workers == 1:
        try:
            for job in jobs:
                decode_chunk(source, job, build.start(job), *args)
                yield job
        finally:
            _close_zips()
        return
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=fork_server(__name__), initializer=init_worker)
    try:
        queue, pending = iter(jobs), {}
        for job in take(queue, 2 * workers):
            pending[pool.submit(decode_chunk, source, job, build.start(job), *args)] = job
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                future.result()
                yield job
                for nxt in take(queue, 1):
                    pending[pool.submit(decode_chunk, source, nxt, build.start(nxt), *args)] = nxt
    except BrokenProcessPool:
        raise DataError("a decoding process died (out of memory?)", hint="rerun with fewer --workers: it resumes") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _close_zips()


# ----------------------------------------------------------------------------- the resumable partial build
class PartialBuild(ChunkedBuild):
    """`DATA_DIR/.cityscapes.partial-<size>-<seed>/`: the .npy arrays being filled (memory-mapped by the decoding
    processes, which write their rows themselves) and done.json."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], plan: Plan, height: int, width: int) -> None:
        self.plan, self.height, self.width = plan, height, width
        arrays = {split: array_shapes(len(plan.frames[split]), height, width) for split in SPLITS}
        super().__init__(path, fingerprint, plan.frames, int(fingerprint["chunk_frames"]), arrays)

    def record(self, job: Job) -> None:
        """Mark a chunk done (its rows are written and flushed)."""
        self.mark_done(job)

    def train_images(self) -> np.ndarray:
        return open_memmap(self.path / "train_images.npy", mode="r")

    def finish(self) -> None:
        """Drop done.json: the directory then holds only the dataset's arrays."""
        (self.path / DONE).unlink(missing_ok=True)


def _decode_into(build: PartialBuild, source: CityscapesSource, workers: int, console: Console | None) -> int:
    """Decode every chunk not yet done into the partial build; returns the frames taken from an earlier run."""
    resumed = build.decoded
    if resumed:
        note(console, f"resuming: {resumed:,} frames were already decoded in {build.path}")
    with progress(console, "decode Cityscapes", sum(build.plan.counts.values()), resumed) as advance:
        try:
            chunks = _decoded(build, source, workers)
            with contextlib.closing(chunks):  # stops the pool at once if recording fails
                for job in chunks:
                    build.record(job)
                    advance(len(job[2]))
        except DataError as exc:
            hint = "replace it (extract or download the package again)"
            hint = f"{exc.hint or hint}; decoded chunks stay in {build.path}: a rerun resumes"
            raise DataError(exc.message, hint=hint) from None
    return resumed


# ----------------------------------------------------------------------------- the entry point
def _check_args(spec: DatasetSpec, size: int, workers: int | None) -> tuple[int, int]:
    """(width, workers): the size's bounds and stride, the worker count (default: the usable cores)."""
    if not spec.min_size <= size <= spec.max_size:
        raise DataError(f"--size {size}: {NAME} images are {spec.min_size}..{spec.max_size} pixels high")
    width = spec.width_of(size)
    if size % OUTPUT_STRIDE or width is None:
        raise DataError(
            f"--size {size}: must be a multiple of {OUTPUT_STRIDE} (the output stride of the dilated ResNet)",
            hint=f"e.g. --size {max(spec.min_size, size // OUTPUT_STRIDE * OUTPUT_STRIDE)}",
        )
    if workers is not None and workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return width, workers


def _already(target: Path, size: int, seed: int, force: bool) -> Prepared | None:
    """The existing prepared dataset when it is what was asked for (and not --force)."""
    existing = existing_meta(target, size=size, seed=seed, force=force)
    return None if existing is None else Prepared(path=target, built=False, meta=existing)


def _provenance(source: CityscapesSource) -> dict[str, Any]:
    packages = {}
    for name, package in source.packages.items():
        entry: dict[str, Any] = {"kind": package.kind, "path": str(package.path)}
        if package.kind == "zip":
            stat = package.path.stat()
            entry |= {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        packages[name] = entry
    return {"dir": str(source.root), "layout": {n: p["kind"] for n, p in packages.items()}, "packages": packages}


def _fingerprint(provenance: dict[str, Any], plan: Plan, height: int, width: int, seed: int) -> dict[str, Any]:
    """What a partial build must match to be resumed."""
    frames = {
        split: hashlib.sha256("\n".join(f.member(PART["image"]) for f in plan.frames[split]).encode()).hexdigest()
        for split in SPLITS
    }
    return {
        "size": height,
        "width": width,
        "seed": seed,
        "chunk_frames": chunk_frames(height, width),
        "frames": frames,
        "packages": provenance["packages"],
        "code": _created_by(),
    }


def _created_by() -> str:
    return f"mtlcli {__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}"


def _base_meta(spec: DatasetSpec, plan: Plan, height: int, width: int, seed: int, provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": NAME,
        "description": spec.description,
        **spec.meta_schema(),
        "size": height,
        "width": width,
        "seed": seed,
        "resize": RESIZE,
        "counts": plan.counts,
        "classes": list(CITYSCAPES_CLASSES),
        "categories": list(CITYSCAPES_CATEGORIES),
        "labels": "semantic: labelId -> the 19 official trainIds; category: labelId -> categoryId - 1 "
        "(cityscapesScripts labels.py); 255: ignored (void, and classes without a trainId in semantic)",
        "instance": "(dy, dx) = instance centroid - pixel position in output pixels, for pixels whose instanceId is "
        f">= 1000 with a label among {', '.join(THINGS)}; NaN elsewhere",
        "disparity": "(p - 1) / 256 of the 16-bit disparity PNG value p (the release's units, not rescaled), NaN where p == 0",
        "splits": "test = the release's val; train and val = the release's train less / only the held-out frames; "
        "each sorted by file name",
        "validation": {
            "from": "train",
            "seed": seed,
            "fraction": VALIDATION_FRACTION,
            "frames": sorted(f.stem for f in plan.frames["val"]),
        },
        "normalization": "mean/std: per RGB channel, population statistics of the train images' pixels in [0, 1]",
        "source": provenance,
        "created_by": _created_by(),
    }


def prepare_cityscapes(spec: DatasetSpec, request: PrepareRequest, source: Path | None) -> Prepared:
    """Build `data_dir/cityscapes` from the official release unless it is already there with this size and seed."""
    started = time.monotonic()
    height = request.size if request.size is not None else spec.default_size
    width, workers = _check_args(spec, height, request.workers)
    data_dir, console, seed = request.data_dir, request.console, request.seed
    target = data_dir / NAME
    if (existing := _already(target, height, seed, request.force)) is not None:
        return existing
    located = locate_source(source, data_dir)
    release = find_frames(located)
    release_counts = {split: len(frames) for split, frames in release.items()}
    if release_counts != OFFICIAL_COUNTS:
        ours, official = (" / ".join(f"{n:,}" for n in c.values()) for c in (release_counts, OFFICIAL_COUNTS))
        note(console, f"the release's train / val hold {ours} frames, the official {official}")
    plan = plan_splits(release, seed, located)
    try:
        check_headers(located, plan, console)
    finally:
        _close_zips()
    provenance = _provenance(located)
    data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(data_dir, NAME):
        fingerprint = _fingerprint(provenance, plan, height, width, seed)
        build = PartialBuild(data_dir / f".{NAME}.partial-{height}-{seed}", fingerprint, plan, height, width)
        resumed = _decode_into(build, located, workers, console)
        mean, std = channel_stats(build.train_images(), block=max(1, STATS_BYTES // (height * width * 3)))
        build.finish()
        meta = {
            **_base_meta(spec, plan, height, width, seed, provenance),
            "mean": mean,
            "std": std,
            "release_counts": release_counts,
            "resumed_frames": resumed,
            "prepare_seconds": round(time.monotonic() - started, 3),
        }
        install_prepared(build.path, target, meta)
    return Prepared(path=target, built=True, meta=read_meta(target) or meta)


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of Cityscapes (`mtl prepare cityscapes`)."""
    return prepare_cityscapes(spec, request, one_source(spec, request))
