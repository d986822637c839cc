"""A tiny CelebA release in the official on-disk format: real JPEGs and both annotation files.

`make_celeba_source` writes the layouts `mtl prepare celeba --source DIR` accepts (image folder, unopened
zip, torchvision's `DIR/celeba/`) and returns what a correct prepare must produce from them.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.io import encode_jpeg

from mtlcli.data.registry import CELEBA_ATTRIBUTES

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FakeCelebA:
    """A written source: the --source dir, the directory with the text files, and the expected content."""

    path: Path  # pass this as --source
    root: Path  # where list_attr_celeba.txt, list_eval_partition.txt and the images are
    names: list[str]  # image names in file order
    labels: np.ndarray  # uint8 [n, 40] in {0, 1}, CELEBA_ATTRIBUTES order (file value -1 -> 0)
    partitions: np.ndarray  # int [n]: 0 train, 1 val, 2 test

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def attr_path(self) -> Path:
        return self.root / ATTR_FILE

    @property
    def partition_path(self) -> Path:
        return self.root / PARTITION_FILE

    def split(self, split: str) -> tuple[list[str], np.ndarray]:
        """The names and labels a prepared split must hold, in file order."""
        rows = np.flatnonzero(self.partitions == SPLITS.index(split))
        return [self.names[i] for i in rows], self.labels[rows]


def smooth_image(rng: np.random.Generator, hw: tuple[int, int]) -> torch.Tensor:
    """A uint8 [3, H, W] image: random colours on a coarse grid, bilinearly blown up (JPEG-friendly)."""
    coarse = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32)) * 255
    full = torch.nn.functional.interpolate(coarse, size=hw, mode="bilinear", align_corners=True)
    return full[0].round().clamp(0, 255).to(torch.uint8)


def _partitions(n: int, counts: tuple[int, int, int] | None, rng: np.random.Generator) -> np.ndarray:
    """Partition values in shuffled order (the real file is sorted; shuffling tests that order is followed)."""
    if counts is None:
        small = max(1, n // 6)
        counts = (n - 2 * small, small, small)
    if sum(counts) != n:
        raise ValueError(f"counts {counts} do not add up to n={n}")
    return rng.permutation(np.repeat(np.arange(3), counts))


def attr_text(names: list[str], signs: np.ndarray, header: tuple[str, ...] = CELEBA_ATTRIBUTES) -> str:
    """list_attr_celeba.txt as released: count line, names line, rows of right-aligned ±1 values."""
    rows = [name + "".join(f" {int(v):2d}" for v in row) for name, row in zip(names, signs, strict=True)]
    return f"{len(names)}\n" + " ".join(header) + " \n" + "\n".join(rows) + "\n"


def partition_text(names: list[str], partitions: np.ndarray) -> str:
    return "".join(f"{name} {int(p)}\n" for name, p in zip(names, partitions, strict=True))


def make_celeba_source(
    directory: Path,
    n: int = 12,
    *,
    layout: str = "folder",
    seed: int = 0,
    image_hw: tuple[int, int] = (40, 32),
    counts: tuple[int, int, int] | None = None,
) -> FakeCelebA:
    """Write n images (`000001.jpg`, ...) and both text files; layout "folder", "zip" or "torchvision"."""
    if layout not in ("folder", "zip", "torchvision"):
        raise ValueError(f"unknown layout {layout!r}")
    rng = np.random.default_rng(seed)
    names = [f"{i:06d}.jpg" for i in range(1, n + 1)]
    signs = np.where(rng.random((n, len(CELEBA_ATTRIBUTES))) < 0.4, 1, -1)
    partitions = _partitions(n, counts, rng)
    jpegs = [encode_jpeg(smooth_image(rng, image_hw), quality=90).numpy().tobytes() for _ in names]
    root = directory / "celeba" if layout == "torchvision" else directory
    root.mkdir(parents=True, exist_ok=True)
    if layout == "zip":
        with zipfile.ZipFile(root / f"{IMAGE_DIR}.zip", "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(f"{IMAGE_DIR}/", b"")
            for name, data in zip(names, jpegs, strict=True):
                archive.writestr(f"{IMAGE_DIR}/{name}", data)
    else:
        (root / IMAGE_DIR).mkdir(exist_ok=True)
        for name, data in zip(names, jpegs, strict=True):
            (root / IMAGE_DIR / name).write_bytes(data)
    (root / ATTR_FILE).write_text(attr_text(names, signs))
    (root / PARTITION_FILE).write_text(partition_text(names, partitions))
    labels = (signs == 1).astype(np.uint8)
    return FakeCelebA(path=directory, root=root, names=names, labels=labels, partitions=partitions)


def replace_line(path: Path | os.PathLike[str], number: int, text: str | None) -> None:
    """Replace (or with None delete) the 1-based line `number` of a text file."""
    lines = Path(path).read_text().split("\n")
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    Path(path).write_text("\n".join(lines))
