"""Synthetic data: random images and labels with a prepared dataset's shapes (no download needed).

Used by `mtl ablate --synthetic` and recipes with `data.synthetic: true`: step timings depend on
shapes only, so random tensors measure the same cost as the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlcli.data.multimnist import SPECS, TASKS
from mtlcli.data.store import PreparedDataset

NUM_CLASSES = 10
COUNTS = {"train": 2048, "val": 256, "test": 256}


def synthetic_dataset(name: str, *, size: int = 28, seed: int = 0, counts: dict[str, int] | None = None) -> PreparedDataset:
    """A `PreparedDataset` of uniform random uint8 images [N, size, size] and labels [N, T], seeded."""
    spec = SPECS[name]
    counts = counts or COUNTS
    rng = np.random.default_rng(seed)
    images = {s: rng.integers(0, 256, size=(n, size, size), dtype=np.uint8) for s, n in counts.items()}
    labels = {s: rng.integers(0, NUM_CLASSES, size=(n, len(TASKS)), dtype=np.uint8) for s, n in counts.items()}
    meta = {
        "dataset": name,
        "description": f"synthetic stand-in for {spec.description}: random tensors",
        "tasks": [{"name": task, "num_classes": NUM_CLASSES} for task in TASKS],
        "seed": seed,
        "size": size,
        "synthetic": True,
        "counts": dict(counts),
    }
    return PreparedDataset(path=Path(f"<synthetic {name}>"), meta=meta, images=images, labels=labels)
