"""`mtl prepare celeba`: the official CelebA release -> a verified, memory-mappable prepared dataset.

CelebA (Liu et al. 2015, "Deep Learning Face Attributes in the Wild") holds 202,599 aligned 178x218 face
images with 40 binary attributes and an official train/val/test partition. As in Sener & Koltun (2018),
each whole aligned image is resized to SxS (no crop) and every attribute is one binary task.

The steps: locate the source (official or torchvision layout, image folder or unopened zip); validate
both text files completely and check that every listed image exists; decode and resize the JPEGs in
parallel chunks, streamed into memory-mapped .npy files in `DATA_DIR/.celeba.partial-<size>/`, whose
finished chunks are recorded in done.json after each one (an interrupted prepare resumes there); measure
the training split's per-channel mean/std; checksum everything, write meta.json, and rename the partial
directory to `DATA_DIR/celeba` in one step.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import re
import time
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from numpy.lib.format import open_memmap
from rich.console import Console
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as tvf

from mtlcli import __version__
from mtlcli.data.chunked import DONE, ChunkedBuild, channel_stats, fork_server, init_worker, take
from mtlcli.data.feedback import note, progress
from mtlcli.data.registry import CELEBA, CELEBA_ATTRIBUTES, DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import FORMAT_VERSION, META, SPLITS, exclusive_prepare, existing_meta, replace_directory
from mtlcli.errors import DataError
from mtlcli.io import atomic_open, fsync_dir, md5_file, sha256_file, write_json_atomic

NAME = "celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"
OFFICIAL_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
OFFICIAL_COUNTS = {"train": 162_770, "val": 19_867, "test": 19_962}
OFFICIAL_MD5 = {ATTR_FILE: "75e246fa4810816ffd6ee81facbd244c", PARTITION_FILE: "d32c9cbf5e040fd4025c592c306e6668"}
PARTITIONS = {"0": "train", "1": "val", "2": "test"}
RESIZE = "bilinear, antialias, torchvision.transforms.v2.functional.resize"
CROP = "none: the whole aligned 178x218 image is resized to SxS (Sener & Koltun 2018)"
CHUNK_IMAGES = 512  # images one worker decodes per task (fewer for big sizes: see chunk_size)
CHUNK_BYTES = 16 << 20  # at most this much decoded data per chunk


# ----------------------------------------------------------------------------- where the files are
@dataclass(frozen=True)
class ImageSource:
    """The JPEGs: a folder of files, or the unopened zip with members under `img_align_celeba/`."""

    path: Path
    kind: str  # "folder" or "zip"

    def member(self, name: str) -> str:
        return f"{IMAGE_DIR}/{name}"

    def describe(self, name: str) -> str:
        """How an error names one image."""
        return str(self.path / name) if self.kind == "folder" else f"{self.member(name)} in {self.path}"

    def listing(self) -> set[str]:
        """The image file names present (one directory listing or the zip's central directory)."""
        if self.kind == "folder":
            return set(os.listdir(self.path))
        prefix = f"{IMAGE_DIR}/"
        with contextlib.closing(_zip_file(self.path)) as archive:
            return {m[len(prefix) :] for m in archive.namelist() if m.startswith(prefix)}

    def read(self, name: str) -> bytes:
        if self.kind == "folder":
            return (self.path / name).read_bytes()
        return _open_zip(self.path).read(self.member(name))


@dataclass(frozen=True)
class CelebaSource:
    """A located release: the directory with both text files, its layout and the images."""

    root: Path
    layout: str  # "official" (files in --source) or "torchvision" (files in --source/celeba)
    images: ImageSource

    @property
    def attr_path(self) -> Path:
        return self.root / ATTR_FILE

    @property
    def partition_path(self) -> Path:
        return self.root / PARTITION_FILE


_ZIPS: dict[Path, zipfile.ZipFile] = {}  # one open handle per zip and process (its directory is read once)


def _zip_file(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable zip file ({exc})", hint=f"download {IMAGE_ZIP} again") from None


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The decoding process's cached handle on a zip."""
    if path not in _ZIPS:
        _ZIPS[path] = _zip_file(path)
    return _ZIPS[path]


def _close_zips() -> None:
    while _ZIPS:
        _ZIPS.popitem()[1].close()


def _images_in(root: Path) -> ImageSource | None:
    folder, archive = root / IMAGE_DIR, root / IMAGE_ZIP
    if folder.is_dir():
        nested = folder / IMAGE_DIR  # an archive extracted into a folder of its own name
        return ImageSource(nested if nested.is_dir() and not any(folder.glob("*.jpg")) else folder, "folder")
    return ImageSource(archive, "zip") if archive.is_file() else None


def _missing_in(root: Path) -> list[str]:
    missing = [f for f in (ATTR_FILE, PARTITION_FILE) if not (root / f).is_file()]
    return missing + ([] if _images_in(root) else [f"{IMAGE_DIR}/ (or {IMAGE_ZIP})"])


def _how_to_get() -> str:
    return (
        f"the official release is at {OFFICIAL_URL} (its Google Drive folder: Img/{IMAGE_ZIP}, Anno/{ATTR_FILE}, "
        f"Eval/{PARTITION_FILE}); CelebA cannot be fetched by a script (manual download, Google Drive quota)"
    )


def locate_source(source: Path | None, data_dir: Path) -> CelebaSource:
    """The release in `source` (or `source/celeba`, torchvision's layout); `data_dir/raw/celeba` when None."""
    base = Path(source) if source is not None else data_dir / "raw" / NAME
    if source is not None and not base.is_dir():
        raise DataError(f"--source {base}: not a directory", hint=f"pass the directory holding {ATTR_FILE}")
    candidates = [(base, "official"), (base / NAME, "torchvision")]
    for root, layout in candidates:
        images = _images_in(root)
        if images is not None and not _missing_in(root):
            return CelebaSource(root=root, layout=layout, images=images)
    missing = min((_missing_in(root) for root, _ in candidates), key=len)
    if source is None:
        raise DataError(
            f"CelebA is not in {base}: `mtl prepare celeba` needs {IMAGE_DIR}/ (or {IMAGE_ZIP}), {ATTR_FILE} and "
            f"{PARTITION_FILE}; {_how_to_get()}",
            hint=f"download them into one directory and run `mtl prepare celeba --source DIR` (or put them in {base})",
        )
    raise DataError(
        f"--source {base}: missing {', '.join(missing)} (looked in {base} and {base / NAME})",
        hint=f"pass the directory holding {IMAGE_DIR}/ or {IMAGE_ZIP}, {ATTR_FILE} and {PARTITION_FILE}; {_how_to_get()}",
    )


# ----------------------------------------------------------------------------- the text files
@dataclass(frozen=True)
class Annotations:
    """list_attr_celeba.txt: image names in file order, their line numbers, labels uint8 [N, 40] in {0, 1}."""

    names: list[str]
    lines: list[int]
    labels: np.ndarray


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every line of a text file; DataError naming the line if not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None
    return enumerate(text.split("\n"), start=1)


def _header_order(path: Path, header: list[str]) -> list[int]:
    """Column of each registry attribute in the header (which must name the 40 attributes, once each)."""
    expected = set(CELEBA_ATTRIBUTES)
    for i, name in enumerate(header):
        if name not in expected or name in header[:i]:
            problem = "appears twice" if name in expected else "is not a CelebA attribute"
            raise DataError(f"{path}:2: attribute name {name!r} {problem} (expected the 40 names of the official release)")
    if len(header) != len(CELEBA_ATTRIBUTES):
        absent = next(a for a in CELEBA_ATTRIBUTES if a not in header)
        raise DataError(f"{path}:2: {len(header)} attribute names, expected 40 (first missing: {absent!r})")
    return [header.index(a) for a in CELEBA_ATTRIBUTES]


def _row(path: Path, number: int, tokens: list[str], header: list[str]) -> list[str]:
    """The 40 values of one row, checked to be 1 or -1."""
    name, values = tokens[0], tokens[1:]
    if len(values) != len(header):
        raise DataError(f"{path}:{number}: {len(values)} values for {name}, expected {len(header)}")
    if not _SIGNS.issuperset(values):
        column, value = next((i, v) for i, v in enumerate(values) if v not in _SIGNS)
        raise DataError(f"{path}:{number}: {header[column]} of {name} is {value!r}, expected 1 or -1")
    return values


_SIGNS = frozenset(("1", "-1"))


def _check_name(path: Path, number: int, name: str, seen: dict[str, int]) -> None:
    if "/" in name or "\\" in name or name in (".", ".."):
        raise DataError(f"{path}:{number}: {name!r} is not an image file name")
    if name in seen:
        raise DataError(f"{path}:{number}: {name} is listed twice (first on line {seen[name]})")
    seen[name] = number


def read_attributes(path: Path) -> Annotations:
    """Parse list_attr_celeba.txt (count line, header line, `NAME  v1 ... v40` rows of ±1); -1 -> 0."""
    lines = _lines(path)
    number, first = next(lines)
    if not (first.strip().isascii() and first.strip().isdigit()):
        raise DataError(f"{path}:1: expected the number of images, got {first.strip()[:40]!r}")
    count = int(first)
    number, header_line = next(lines, (2, ""))
    header = header_line.split()
    order = _header_order(path, header)
    seen: dict[str, int] = {}
    rows: list[list[str]] = []
    for number, line in lines:
        tokens = line.split()
        if tokens:
            _check_name(path, number, tokens[0], seen)
            rows.append(_row(path, number, tokens, header))
    if count != len(rows):
        raise DataError(f"{path}:1: says {count} images, but the file lists {len(rows)}")
    labels = (np.array(rows, dtype="<U2").reshape(len(rows), len(header)) == "1").astype(np.uint8)
    return Annotations(names=list(seen), lines=list(seen.values()), labels=labels[:, order])


def read_partition(path: Path) -> dict[str, tuple[str, int]]:
    """Parse list_eval_partition.txt (`NAME P`, P 0 train, 1 val, 2 test): name -> (split, line number)."""
    seen: dict[str, int] = {}
    result: dict[str, tuple[str, int]] = {}
    for number, line in _lines(path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise DataError(f"{path}:{number}: expected 'IMAGE PARTITION', got {line.strip()[:60]!r}")
        name, value = tokens
        _check_name(path, number, name, seen)
        if value not in PARTITIONS:
            raise DataError(f"{path}:{number}: partition of {name} is {value!r}, expected 0 (train), 1 (val) or 2 (test)")
        result[name] = (PARTITIONS[value], number)
    return result


@dataclass(frozen=True)
class Plan:
    """What to build: per split, the image names (in list_attr_celeba.txt order) and labels uint8 [n, 40]."""

    names: dict[str, list[str]]
    labels: dict[str, np.ndarray]
    lines: dict[str, int]  # image name -> its line in list_attr_celeba.txt

    @property
    def counts(self) -> dict[str, int]:
        return {split: len(names) for split, names in self.names.items()}


def plan_splits(source: CelebaSource) -> Plan:
    """Validate both text files against each other and split the annotations by the official partition."""
    attrs = read_attributes(source.attr_path)
    partition = read_partition(source.partition_path)
    for name, number in zip(attrs.names, attrs.lines, strict=True):
        if name not in partition:
            raise DataError(f"{source.attr_path}:{number}: {name} is not in {PARTITION_FILE}")
    if len(partition) != len(attrs.names):
        known = set(attrs.names)
        name, (_, number) = next((n, v) for n, v in partition.items() if n not in known)
        raise DataError(f"{source.partition_path}:{number}: {name} has no row in {ATTR_FILE}")
    split_of = np.array([partition[name][0] for name in attrs.names])
    names, labels = {}, {}
    for value, split in PARTITIONS.items():
        rows = np.flatnonzero(split_of == split)
        if not len(rows):
            raise DataError(f"{source.partition_path}: no image is in the {split} split (partition {value})")
        names[split] = [attrs.names[i] for i in rows]
        labels[split] = np.ascontiguousarray(attrs.labels[rows])
    return Plan(names=names, labels=labels, lines=dict(zip(attrs.names, attrs.lines, strict=True)))


def check_images(source: CelebaSource, plan: Plan) -> None:
    """Every listed image is in the folder or zip (named with its list_attr_celeba.txt line otherwise)."""
    present = source.images.listing()
    missing = next((name for name in plan.lines if name not in present), None)
    if missing is not None:
        raise DataError(
            f"{source.images.describe(missing)} is missing ({source.attr_path}:{plan.lines[missing]} lists it)",
            hint=f"the folder or zip must hold every image of {ATTR_FILE}: extract or download {IMAGE_ZIP} again",
        )


# ----------------------------------------------------------------------------- decoding
def decode_chunk(images: ImageSource, names: list[str], size: int) -> np.ndarray:
    """Decode JPEGs (RGB) and resize each whole image to size x size: uint8 [n, size, size, 3]."""
    out = np.empty((len(names), size, size, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        try:
            data = torch.frombuffer(bytearray(images.read(name)), dtype=torch.uint8)
            image = decode_jpeg(data, mode=ImageReadMode.RGB)
        except (RuntimeError, ValueError, OSError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataError(f"{images.describe(name)}: not a readable JPEG ({_reason(exc)})") from None
        resized = tvf.resize(image, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        out[i] = resized.permute(1, 2, 0).numpy()
    return out


def _reason(exc: Exception) -> str:
    """An exception's first line, without torchvision's `decode_jpeg, FILE.cpp:LINE, ` prefix."""
    lines = str(exc).strip().splitlines()
    return re.sub(r"^.*\.cpp:\d+,\s*", "", lines[0]) if lines else type(exc).__name__


def chunk_size(size: int) -> int:
    """Images per chunk: CHUNK_IMAGES, fewer when that would exceed CHUNK_BYTES of decoded pixels."""
    return max(1, min(CHUNK_IMAGES, CHUNK_BYTES // (size * size * 3)))


Job = tuple[str, int, list[str]]  # (split, chunk index, image names)


def _decoded(jobs: list[Job], images: ImageSource, size: int, workers: int) -> Iterator[tuple[Job, np.ndarray]]:
    """(job, images) as chunks finish: in this process when workers == 1, else in a process pool."""
    if workers == 1:
        try:
            for job in jobs:
                yield job, decode_chunk(images, job[2], size)
        finally:
            _close_zips()
        return
    context = fork_server(__name__)
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker)
    try:
        queue, pending = iter(jobs), {}
        for job in take(queue, 2 * workers):
            pending[pool.submit(decode_chunk, images, job[2], size)] = job
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                yield job, future.result()
                for nxt in take(queue, 1):
                    pending[pool.submit(decode_chunk, images, nxt[2], size)] = nxt
    except BrokenProcessPool:
        raise DataError("a decoding process died (out of memory?)", hint="rerun with fewer --workers: it resumes") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- the resumable partial build
class PartialBuild(ChunkedBuild):
    """`DATA_DIR/.celeba.partial-<size>/`: the image arrays being filled (memory-mapped .npy) and done.json."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], plan: Plan, size: int) -> None:
        self.plan, self.size = plan, size
        arrays = {split: {"images": ((len(plan.names[split]), size, size, 3), np.dtype(np.uint8))} for split in SPLITS}
        super().__init__(path, fingerprint, plan.names, fingerprint["chunk_images"], arrays)
        self.images: dict[str, np.ndarray] = {split: open_memmap(self.file(split, "images"), mode="r+") for split in SPLITS}

    def record(self, job: Job, pixels: np.ndarray) -> None:
        """Store one decoded chunk, flush it, then mark it done."""
        split, k, _ = job
        self.images[split][k * self.chunk : k * self.chunk + len(pixels)] = pixels
        self.images[split].flush()
        self.mark_done(job)

    def close(self) -> None:
        for array in self.images.values():
            array.flush()
        self.images.clear()


# ----------------------------------------------------------------------------- statistics and the final directory
def _write_labels(path: Path, labels: np.ndarray) -> None:
    with atomic_open(path, "wb") as handle:
        np.save(handle, labels, allow_pickle=False)


def _finish(build: PartialBuild, meta: dict[str, Any]) -> dict[str, Any]:
    """Labels, checksums and meta.json into the partial directory (which is then complete)."""
    train = build.images["train"]
    mean, std = channel_stats(train)
    build.close()
    for split in SPLITS:
        _write_labels(build.path / f"{split}_labels.npy", build.plan.labels[split])
        with open(build.path / f"{split}_images.npy", "rb") as handle:
            os.fsync(handle.fileno())
    (build.path / DONE).unlink()
    files = {f"{s}_{kind}.npy": sha256_file(build.path / f"{s}_{kind}.npy") for s in SPLITS for kind in ("images", "labels")}
    meta = {**meta, "mean": mean, "std": std, "format": FORMAT_VERSION, "files": files}
    write_json_atomic(build.path / META, meta)
    fsync_dir(build.path)
    return meta


# ----------------------------------------------------------------------------- the entry point
def _check_args(size: int, workers: int | None) -> int:
    """The size's bounds and the worker count (default: the usable cores)."""
    if not CELEBA.min_size <= size <= CELEBA.max_size:
        raise DataError(f"--size {size}: celeba images are {CELEBA.min_size}..{CELEBA.max_size} pixels a side")
    if workers is not None and workers < 1:
        raise DataError(f"--workers {workers}: must be at least 1")
    if workers is not None:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _already(target: Path, size: int, force: bool) -> Prepared | None:
    """The existing prepared dataset when it is what was asked for (and not --force)."""
    existing = existing_meta(target, size=size, seed=None, force=force)  # CelebA's splits are official: no seed
    return None if existing is None else Prepared(path=target, built=False, meta=existing)


def _provenance(source: CelebaSource) -> dict[str, Any]:
    files = {}
    for path in (source.attr_path, source.partition_path):
        files[path.name] = {"sha256": sha256_file(path), "official_md5": md5_file(path) == OFFICIAL_MD5[path.name]}
    return {"dir": str(source.root), "images": str(source.images.path), "files": files}


def _base_meta(source: CelebaSource, plan: Plan, size: int, provenance: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": NAME,
        "description": CELEBA.description,
        **CELEBA.meta_schema(),
        "seed": None,
        "size": size,
        "resize": RESIZE,
        "crop": CROP,
        "labels": "list_attr_celeba.txt value 1 -> 1, -1 -> 0; columns in the registry's attribute order",
        "splits": "list_eval_partition.txt: 0 train, 1 val, 2 test (rows in list_attr_celeba.txt order)",
        "normalization": "mean/std: per RGB channel, population statistics of the train images' pixels in [0, 1]",
        "counts": plan.counts,
        "source_layout": {"layout": source.layout, "images": source.images.kind},
        "source": provenance,
        "created_by": f"mtlcli {__version__}, torch {torch.__version__}, torchvision {torchvision.__version__}",
    }


def _decode_into(build: PartialBuild, source: CelebaSource, workers: int, console: Console | None) -> int:
    """Decode every chunk not yet done into the partial build; returns the images taken from an earlier run."""
    resumed = build.decoded
    if resumed:
        note(console, f"resuming: {resumed:,} images were already decoded in {build.path}")
    jobs = build.jobs()
    total = sum(build.plan.counts.values())
    with progress(console, "decode CelebA", total, resumed) as advance:
        try:
            chunks = _decoded(jobs, source.images, build.size, max(1, min(workers, len(jobs))))
            with contextlib.closing(chunks):  # stops the pool at once if recording fails
                for job, pixels in chunks:
                    build.record(job, pixels)
                    advance(len(pixels))
        except DataError as exc:
            hint = f"replace it (extract or download {IMAGE_ZIP} again); decoded chunks stay in {build.path}: a rerun resumes"
            raise DataError(exc.message, hint=exc.hint or hint) from None
    return resumed


def _fingerprint(provenance: dict[str, Any], plan: Plan, size: int) -> dict[str, Any]:
    """What a partial build must match to be resumed."""
    texts = {name: info["sha256"] for name, info in provenance["files"].items()}
    version = f"{torch.__version__}/{torchvision.__version__}"
    return {"size": size, "chunk_images": chunk_size(size), "texts": texts, "counts": plan.counts, "decoder": version}


def prepare_celeba(
    *,
    data_dir: Path,
    source: Path | None,
    size: int,
    force: bool = False,
    workers: int | None = None,
    console: Console | None = None,
) -> Prepared:
    """Build `data_dir/celeba` from the official release unless it is already there with this size."""
    started = time.monotonic()
    workers = _check_args(size, workers)
    target = data_dir / NAME
    if (result := _already(target, size, force)) is not None:
        return result
    located = locate_source(source, data_dir)
    plan = plan_splits(located)
    check_images(located, plan)
    if plan.counts != OFFICIAL_COUNTS:
        ours, official = (" / ".join(f"{n:,}" for n in c.values()) for c in (plan.counts, OFFICIAL_COUNTS))
        note(console, f"train / val / test hold {ours} images, the official release {official}")
    provenance = _provenance(located)
    data_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_prepare(data_dir, NAME):
        build = PartialBuild(data_dir / f".{NAME}.partial-{size}", _fingerprint(provenance, plan, size), plan, size)
        resumed = _decode_into(build, located, workers, console)
        seconds = round(time.monotonic() - started, 3)
        meta = {**_base_meta(located, plan, size, provenance), "prepare_seconds": seconds, "resumed_images": resumed}
        meta = _finish(build, meta)
        replace_directory(build.path, target)
    return Prepared(path=target, built=True, meta=meta)


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of CelebA (`mtl prepare celeba`)."""
    return prepare_celeba(
        data_dir=request.data_dir,
        source=one_source(spec, request),
        size=request.size if request.size is not None else spec.default_size,
        force=request.force,
        workers=request.workers,
        console=request.console,
    )
