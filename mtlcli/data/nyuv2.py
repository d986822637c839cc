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

Reading, validation, conversion and the atomic install are those of every MTAN release (`npy_release`); this
module says what the NYUv2 release holds. The release's val folder is our test split; our validation split is a
seeded 10% of its train folder.
"""

from __future__ import annotations

from pathlib import Path

from mtlcli.data import npy_release
from mtlcli.data.npy_release import Kind, Release, ReleaseFormat
from mtlcli.data.registry import NYUV2_CLASSES, DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import IGNORE_INDEX

NAME = "nyuv2"
RELEASE_URL = "https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=0"  # MTAN README, "here"
FORMAT = ReleaseFormat(
    name=NAME,
    folder=NAME,
    title="NYUv2",
    zip_names=("nyuv2.zip",),
    kinds={
        "image": Kind("image"),
        "label": Kind("label", "segmentation", NYUV2_CLASSES),
        "depth": Kind("depth", "depth"),
        "normal": Kind("normal", "normal"),
    },
    release_hw=(288, 384),
    release_counts={"train": 795, "val": 654},
    release_link=f"NYUv2 'here', {RELEASE_URL}",
    conventions={
        "segmentation": f"uint8 classes 0..{NYUV2_CLASSES - 1}; the release's -1 (not labelled) -> {IGNORE_INDEX}",
        "depth": "float32 metres as in the release; 0 (invalid) -> NaN",
        "normal": "float32 [3, H, W] (x, y, z) as in the release; all-zero (invalid) -> NaN in all three channels",
    },
    splits="test: the release's val/ (654 images); train and val: its train/ (795) less a seeded validation set",
)
KINDS = tuple(FORMAT.kinds)  # the release's folders of one split


def locate_source(source: Path | None, data_dir: Path) -> Release:
    """The release in `source` (DIR, DIR/nyuv2/ or DIR/nyuv2.zip, or a zip itself); `data_dir/raw/nyuv2` when None."""
    return npy_release.locate_source(FORMAT, source, data_dir)



def prepare_nyuv2(spec: DatasetSpec, request: PrepareRequest, source: Path | None) -> Prepared:
    """Build `data_dir/nyuv2` from the MTAN release unless it is already there with this size and seed."""
    return npy_release.prepare_release(FORMAT, spec, request, source)


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of NYUv2 (`mtl prepare nyuv2`)."""
    return prepare_nyuv2(spec, request, one_source(spec, request))
