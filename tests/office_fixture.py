"""A miniature Office-31 / Office-Home release in the official folder layouts, with real JPEGs.

`write_office(root, dataset)` writes every domain with the same few classes and a handful of images each
(`<domain>/images/<class>/*.jpg` for Office-31, `<Domain>/<class>/*.jpg` for Office-Home) and returns the root.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torchvision.io import encode_jpeg

from tests.celeba_fixture import smooth_image

LAYOUT = {
    "office-31": (("amazon", "dslr", "webcam"), "images"),
    "office-home": (("Art", "Clipart", "Product", "Real_World"), ""),
}
CLASSES = ("back_pack", "bike", "calculator")


def class_dir(root: Path, dataset: str, domain: str, name: str) -> Path:
    sub = LAYOUT[dataset][1]
    return root / domain / sub / name if sub else root / domain / name


def write_office(root: Path, dataset: str = "office-31", per_class: int = 10, seed: int = 0) -> Path:
    """Every domain of `dataset` with CLASSES, `per_class` JPEGs each (sizes vary, as in the release)."""
    rng = np.random.default_rng(seed)
    for d, domain in enumerate(LAYOUT[dataset][0]):
        for c, name in enumerate(CLASSES):
            folder = class_dir(root, dataset, domain, name)
            folder.mkdir(parents=True)
            for i in range(per_class + d):  # the domains differ in size
                image = smooth_image(rng, (40 + 4 * c, 48 + 2 * i))
                (folder / f"frame_{i:04d}.jpg").write_bytes(encode_jpeg(image, quality=90).numpy().tobytes())
    return root
