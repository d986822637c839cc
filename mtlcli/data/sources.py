"""Raw MNIST-style sources: where their IDX files are found, downloaded and verified."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from mtlcli.errors import DataError
from mtlcli.io import md5_file

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
_BASENAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class RawSource:
    """One MNIST-format dataset: its files, official checksums and where to get them."""

    name: str
    title: str
    mirrors: tuple[str, ...]
    gz_md5: dict[str, str]
    # MD5 of the decompressed IDX payload, where known (lets re-compressed copies verify too).
    raw_md5: dict[str, str] = field(default_factory=dict)
    system_dirs: tuple[str, ...] = ()

    @staticmethod
    def filename(role: str) -> str:
        return _BASENAMES[role] + ".gz"


SOURCES: dict[str, RawSource] = {
    "mnist": RawSource(
        name="mnist",
        title="MNIST",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        gz_md5={
            "train_images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train_labels": "d53e105ee54ea40749a09fcbcd1e9432",
            "test_images": "9fb629c4189551a2d022fa330f9573f3",
            "test_labels": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": RawSource(
        name="fashion-mnist",
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        gz_md5={
            "train_images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train_labels": "25c81989df183df01b3e8a0aad5dffbe",
            "test_images": "bef4ecab320f06d8554ea6380940ec79",
            "test_labels": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        raw_md5={
            "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
            "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
            "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


@dataclass(frozen=True)
class LocatedFiles:
    """The four files of a source, where they came from, and whether their checksums are official."""

    source: RawSource
    paths: dict[str, Path]
    origin: str
    verified: dict[str, bool]


def _candidates(directory: Path, role: str) -> list[Path]:
    base = _BASENAMES[role]
    dotted = base.replace("-idx", ".idx")  # the MNIST site's uncompressed names
    return [directory / f"{base}.gz", directory / base, directory / f"{dotted}.gz", directory / dotted]


def _find_in(directory: Path, source: RawSource) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for role in ROLES:
        hit = next((p for p in _candidates(directory, role) if p.is_file()), None)
        if hit is None:
            return None
        found[role] = hit
    return found


def is_official(source: RawSource, role: str, path: Path) -> bool:
    """True when `path` matches the official MD5 (of the gzip file, or of its payload where known)."""
    if md5_file(path) == source.gz_md5[role]:
        return True
    known = source.raw_md5.get(role)
    if known is None:
        return False
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    try:
        opener = gzip.open if compressed else open
        digest = hashlib.md5(usedforsecurity=False)
        with opener(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except (OSError, EOFError):
        return False
    return digest.hexdigest() == known


def needed_files_text(source: RawSource) -> str:
    return ", ".join(RawSource.filename(r) for r in ROLES)


def locate(
    source: RawSource,
    *,
    source_dir: Path | None,
    cache_dir: Path,
    mirror: str | None,
    console: Console,
) -> LocatedFiles:
    """Find the four files: `--source` dir, then the download cache, then system dirs, then download."""
    if source_dir is not None:
        if not source_dir.is_dir():
            raise DataError(f"--source {source_dir}: no such directory")
        paths = _find_in(source_dir, source)
        if paths is None:
            missing = [
                RawSource.filename(r) for r in ROLES if not any(p.is_file() for p in _candidates(source_dir, r))
            ]
            raise DataError(
                f"--source {source_dir} lacks {source.title} file(s): {', '.join(missing)}",
                hint=f"the directory must hold {needed_files_text(source)} (gzipped or not)",
            )
        origin = str(source_dir)
    elif (paths := _find_in(cache_dir, source)) is not None:
        origin = str(cache_dir)
    else:
        system = next((d for d in source.system_dirs if _find_in(Path(d), source) is not None), None)
        if system is not None:
            paths = _find_in(Path(system), source)
            assert paths is not None
            origin = system
        else:
            paths = download(source, cache_dir, mirror=mirror, console=console)
            origin = mirror or source.mirrors[0]
    verified = {role: is_official(source, role, path) for role, path in paths.items()}
    return LocatedFiles(source=source, paths=paths, origin=origin, verified=verified)


def download(source: RawSource, cache_dir: Path, *, mirror: str | None, console: Console) -> dict[str, Path]:
    """Download the four gzip files into `cache_dir`, checking each against its official MD5."""
    mirrors = (mirror,) if mirror else source.mirrors
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for role in ROLES:
        name = RawSource.filename(role)
        target = cache_dir / name
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                _fetch(url, target, expected_md5=source.gz_md5[role], console=console)
                break
            except (urllib.error.URLError, OSError, DataError) as exc:
                reason = getattr(exc, "reason", None) or getattr(exc, "message", None) or exc
                failures.append(f"{url}: {reason}")
        else:
            raise DataError(
                f"could not download {source.title} {name} ({'; '.join(failures)})",
                hint=(
                    f"offline? put {needed_files_text(source)} in a directory and pass --source DIR, "
                    "or pass --mirror URL"
                ),
            )
        paths[role] = target
    return paths


def _fetch(url: str, target: Path, *, expected_md5: str, console: Console) -> None:
    part = target.with_name(target.name + ".part")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=console,
                transient=True,
            ) as progress:
                task = progress.add_task(f"download {target.name}", total=total)
                while block := response.read(1 << 16):
                    out.write(block)
                    digest.update(block)
                    progress.advance(task, len(block))
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_md5:
            raise DataError(f"MD5 mismatch: got {digest.hexdigest()}, expected {expected_md5}")
        os.replace(part, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
