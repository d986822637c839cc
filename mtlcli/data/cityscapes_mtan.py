"""`mtl prepare cityscapes-mtan`: the preprocessed Cityscapes of MTAN -> a verified, memory-mappable prepared dataset.

Cityscapes (Cordts et al. 2016) in the form MTAN released it (Liu et al. 2019, https://github.com/lorenmt/mtan
README, "Update - Jun 2019": 2, 7 and 19-class labels and inverse depth, at 128x256 or 256x512) and Nash-MTL,
CAGrad, FAMO and LibMTL train on: 2,975 training and 500 test samples, one .npy file per sample and kind, read by
Cranial-XIX/FAMO experiments/cityscapes/data.py (`Cityscapes`, commit 0a6ad06):

    DIR/train/image/<i>.npy     float [128, 256, 3] in [0, 1]
    DIR/train/label_7/<i>.npy   float [128, 256], classes 0..6, -1 = not labelled (the loss's ignore_index)
    DIR/train/label_19/<i>.npy  float [128, 256], classes 0..18, -1 = not labelled
    DIR/train/depth/<i>.npy     float [128, 256, 1], MTAN's inverse depth, 0 = invalid (masked in loss and errors)
    DIR/val/...                 the same for the 500 test samples

Other folders of the release (label_2/) are not read. Tasks: `segmentation` (label_7, what the references
train), `depth`, and `segmentation_19` (label_19) on request. Reading, validation, conversion and the atomic
install are those of every MTAN release (`npy_release`); the release's val folder is our test split, our
validation split a seeded 10% of its train folder. Unlike `mtl prepare cityscapes` (the official release, the
MGDA-UB setting), nothing here is derived from the raw Cityscapes files: the arrays are MTAN's.
"""

from __future__ import annotations

from pathlib import Path

from mtlcli.data import npy_release
from mtlcli.data.npy_release import Kind, ReleaseFormat
from mtlcli.data.registry import CITYSCAPES_CATEGORIES, CITYSCAPES_CLASSES, DatasetSpec, Prepared, PrepareRequest, one_source
from mtlcli.data.store import IGNORE_INDEX

NAME = "cityscapes-mtan"
RELEASE_URL = "https://www.dropbox.com/sh/gaw6vh6qusoyms6/AADwWi0Tp3E3M4B2xzeGlsEna?dl=0"  # MTAN README, 128x256 "here"
FORMAT = ReleaseFormat(
    name=NAME,
    folder="cityscapes",
    title="Cityscapes (MTAN)",
    zip_names=("cityscapes.zip",),
    kinds={
        "image": Kind("image"),
        "label_7": Kind("label", "segmentation", len(CITYSCAPES_CATEGORIES)),
        "label_19": Kind("label", "segmentation_19", len(CITYSCAPES_CLASSES)),
        "depth": Kind("depth", "depth"),
    },
    release_hw=(128, 256),
    release_counts={"train": 2975, "val": 500},
    release_link=f"Cityscapes [128x256, 651MB] 'here', {RELEASE_URL}",
    conventions={
        "segmentation": f"uint8 classes 0..{len(CITYSCAPES_CATEGORIES) - 1} of label_7; -1 (not labelled) -> {IGNORE_INDEX}",
        "segmentation_19": f"uint8 classes 0..{len(CITYSCAPES_CLASSES) - 1} of label_19; -1 (not labelled) -> {IGNORE_INDEX}",
        "depth": "float32 as in the release (MTAN's inverse depth); 0 (invalid) -> NaN",
    },
    splits="test: the release's val/ (500 samples); train and val: its train/ (2,975) less a seeded validation set",
)



def prepare_cityscapes_mtan(spec: DatasetSpec, request: PrepareRequest, source: Path | None) -> Prepared:
    """Build `data_dir/cityscapes-mtan` from the MTAN release unless it is already there with this size and seed."""
    return npy_release.prepare_release(FORMAT, spec, request, source)


def prepare(spec: DatasetSpec, request: PrepareRequest) -> Prepared:
    """The registry's prepare of MTAN's Cityscapes (`mtl prepare cityscapes-mtan`)."""
    return prepare_cityscapes_mtan(spec, request, one_source(spec, request))
