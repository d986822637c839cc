"""Synthetic data: random images and labels with a registered dataset's shapes (no download needed).

Used by `mtl ablate --synthetic` and recipes with `data.synthetic: true`: step timings depend on
shapes only, so random tensors measure the same cost as the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlcli.data import registry
from mtlcli.data.store import IGNORE_INDEX, PreparedDataset

COUNTS = {"train": 2048, "val": 256, "test": 256}
BUDGET_BYTES = 256 * 2**20  # dense datasets get fewer samples: at most this much per split


def _target(kind: str, classes: int, n: int, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random array of a target kind (store.TARGET_KINDS): labels, maps with some invalid pixels, unit normals."""
    if kind == "segmentation":
        labels = rng.integers(0, classes, size=(n, *hw), dtype=np.uint8)
        labels[rng.random((n, *hw)) < 0.1] = IGNORE_INDEX
        return labels
    if kind == "normal":
        normals = rng.standard_normal((n, 3, *hw)).astype(np.float32)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        normals[..., rng.random(hw) < 0.2] = np.nan
        return normals
    channels = (2,) if kind == "offset" else ()
    values = (rng.standard_normal((n, *channels, *hw)) * 10 if kind == "offset" else rng.uniform(0.5, 10, (n, *hw))).astype(
        np.float32
    )
    values[..., rng.random(hw) < 0.2] = np.nan
    return values


def synthetic_dataset(
    name: str, *, size: int | None = None, seed: int = 0, counts: dict[str, int] | None = None
) -> PreparedDataset:
    """A `PreparedDataset` of uniform random uint8 images ([N, H, W] or [N, H, W, C]) and targets, seeded."""
    spec = registry.get(name)
    size = size or spec.default_size
    width = spec.width_of(size) or size
    rng = np.random.default_rng(seed)
    shape = (size, width) if spec.channels == 1 else (size, width, spec.channels)
    if counts is None:
        per_sample = size * width * (spec.channels + 16 * len(spec.target_kinds))
        counts = {s: max(4, min(n, BUDGET_BYTES // per_sample)) for s, n in COUNTS.items()}
    images = {s: rng.integers(0, 256, size=(n, *shape), dtype=np.uint8) for s, n in counts.items()}
    label_tasks = [t for t in spec.tasks if t.target is None]
    targets: dict[str, dict[str, np.ndarray]] = {s: {} for s in counts}
    if label_tasks:
        high = np.array([t.num_classes for t in label_tasks])
        for s, n in counts.items():
            targets[s]["labels"] = (rng.random((n, len(high))) * high).astype(np.uint8)
    classes = {t.target: t.num_classes for t in spec.tasks if t.target is not None}
    for target, kind in spec.target_kinds.items():
        for s, n in counts.items():
            targets[s][target] = _target(kind, classes[target], n, (size, width), rng)
    meta = {
        "dataset": spec.name,
        "description": f"synthetic stand-in for {spec.description}: random tensors",
        **spec.meta_schema(),
        "seed": seed,
        "size": size,
        "width": width,
        "synthetic": True,
        "counts": dict(counts),
    }
    return PreparedDataset(path=Path(f"<synthetic {spec.name}>"), meta=meta, images=images, targets=targets)
