"""A miniature NYUv2 release in MTAN's on-disk format: one real .npy file per sample and kind.

`make_nyuv2_source` writes `train/{image,label,depth,normal}/<i>.npy` and `val/...` (as a folder or inside
an unopened nyuv2.zip) with the release's conventions: images float64 [H, W, 3] in [0, 1] (multiples of
1/255), labels float64 [H, W] in 0..12 with -1 = not labelled, depth float64 [H, W, 1] with 0 = invalid,
normals float64 [H, W, 3] of unit length with all-zero = invalid. `FakeNYUv2.expected` says what a correct
prepare must produce from them, computed here independently of `mtlcli.data.nyuv2`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.npy_release_fixture import (
    FakeRelease,
    Sample,
    npy_bytes,
    prepared_depth,
    prepared_image,
    prepared_label,
    resized,
    write_release,
)

__all__ = ["FakeNYUv2", "convert", "make_nyuv2_source", "make_sample", "npy_bytes"]

KINDS = ("image", "label", "depth", "normal")
CLASSES = 13
FakeNYUv2 = FakeRelease


def convert(sample: Sample, hw: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """One sample as prepared: uint8 image, uint8 classes (-1 -> 255), depth 0 -> NaN, normals [3, H, W], 0 -> NaN."""
    normal = resized(sample["normal"], hw).transpose(2, 0, 1)
    invalid = (normal == 0).all(axis=0)
    return {
        "images": prepared_image(sample["image"], hw),
        "segmentation": prepared_label(sample["label"], hw),
        "depth": prepared_depth(sample["depth"], hw),
        "normal": np.where(invalid[None], np.nan, normal).astype(np.float32),
    }


def make_sample(rng: np.random.Generator, hw: tuple[int, int], dtype: type = np.float64) -> Sample:
    """Random arrays with the release's conventions; each holds some -1 labels, zero depths and zero normals."""
    h, w = hw
    image = rng.integers(0, 256, size=(h, w, 3)) / 255.0
    label = rng.integers(0, CLASSES, size=(h, w)).astype(np.float64)
    label[rng.random((h, w)) < 0.1] = -1
    label[0, 0], label[0, 1], label[0, 2] = -1, 0, CLASSES - 1
    depth = rng.uniform(0.5, 10.0, size=(h, w, 1))
    depth[rng.random((h, w)) < 0.1] = 0
    depth[1, 1] = 0
    normal = rng.normal(size=(h, w, 3))
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[rng.random((h, w)) < 0.1] = 0
    normal[2, 2] = 0
    return {kind: value.astype(dtype) for kind, value in zip(KINDS, (image, label, depth, normal), strict=True)}


def make_nyuv2_source(
    root: Path,
    *,
    n_train: int = 10,
    n_val: int = 4,
    hw: tuple[int, int] = (48, 64),
    seed: int = 0,
    zipped: bool = False,
    subfolder: bool = False,
    dtype: type = np.float64,
) -> FakeNYUv2:
    """Write a release with samples 0..n-1 of each split into `root` (or `root/nyuv2/`, or `root/nyuv2.zip`)."""
    rng = np.random.default_rng(seed)
    samples = {
        split: {str(i): make_sample(rng, hw, dtype) for i in range(n)} for split, n in (("train", n_train), ("val", n_val))
    }
    return write_release(root, samples, convert, folder="nyuv2", zip_name="nyuv2.zip", zipped=zipped, subfolder=subfolder)
