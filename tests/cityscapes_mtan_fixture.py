"""A miniature of MTAN's preprocessed Cityscapes in its on-disk format: one real .npy file per sample and kind.

`make_cityscapes_mtan_source` writes `train/{image,label_2,label_7,label_19,depth}/<i>.npy` and `val/...` (as a
folder, in `cityscapes/` or inside an unopened cityscapes.zip) with the conventions of the release as FAMO's
experiments/cityscapes/data.py reads it: images [H, W, 3] in [0, 1] (multiples of 1/255), labels [H, W] with
classes 0..1, 0..6 and 0..18 and -1 = not labelled, inverse depth [H, W, 1] with 0 = invalid; float32 unless
`dtype` says otherwise. label_2 is there as in the release, and never read. `FakeRelease.expected` says what a
correct prepare must produce, computed here independently of `mtlcli.data`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.npy_release_fixture import FakeRelease, Sample, prepared_depth, prepared_image, prepared_label, write_release

CLASSES = {"label_2": 2, "label_7": 7, "label_19": 19}


def convert(sample: Sample, hw: tuple[int, int] | None) -> dict[str, np.ndarray]:
    """One sample as prepared: uint8 image, uint8 classes of label_7 and label_19 (-1 -> 255), depth 0 -> NaN."""
    return {
        "images": prepared_image(sample["image"], hw),
        "segmentation": prepared_label(sample["label_7"], hw),
        "segmentation_19": prepared_label(sample["label_19"], hw),
        "depth": prepared_depth(sample["depth"], hw),
    }


def make_sample(rng: np.random.Generator, hw: tuple[int, int], dtype: type = np.float32) -> Sample:
    """Random arrays with the release's conventions; each holds some -1 labels and zero depths."""
    h, w = hw
    sample = {"image": rng.integers(0, 256, size=(h, w, 3)) / 255.0}
    for kind, classes in CLASSES.items():
        label = rng.integers(0, classes, size=(h, w)).astype(np.float64)
        label[rng.random((h, w)) < 0.1] = -1
        label[0, 0], label[0, 1], label[0, 2] = -1, 0, classes - 1
        sample[kind] = label
    depth = rng.uniform(0.001, 0.1, size=(h, w, 1))
    depth[rng.random((h, w)) < 0.1] = 0
    depth[1, 1] = 0
    sample["depth"] = depth
    return {kind: value.astype(dtype) for kind, value in sample.items()}


def make_cityscapes_mtan_source(
    root: Path,
    *,
    n_train: int = 10,
    n_val: int = 4,
    hw: tuple[int, int] = (32, 64),
    seed: int = 0,
    zipped: bool = False,
    subfolder: bool = False,
    dtype: type = np.float32,
) -> FakeRelease:
    """Write a release with samples 0..n-1 of each split into `root` (or `root/cityscapes/`, or `root/cityscapes.zip`)."""
    rng = np.random.default_rng(seed)
    samples = {
        split: {str(i): make_sample(rng, hw, dtype) for i in range(n)} for split, n in (("train", n_train), ("val", n_val))
    }
    return write_release(
        root, samples, convert, folder="cityscapes", zip_name="cityscapes.zip", zipped=zipped, subfolder=subfolder
    )
