"""Synthetic data: random images and labels with a registered dataset's shapes (no download needed).

Used by `mtl ablate --synthetic` and recipes with `data.synthetic: true`: step timings depend on
shapes only, so random tensors measure the same cost as the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlcli.data import registry
from mtlcli.data.store import PreparedDataset

COUNTS = {"train": 2048, "val": 256, "test": 256}


def synthetic_dataset(
    name: str, *, size: int | None = None, seed: int = 0, counts: dict[str, int] | None = None
) -> PreparedDataset:
    """A `PreparedDataset` of uniform random uint8 images ([N, S, S] or [N, S, S, C]) and labels [N, T], seeded."""
    spec = registry.get(name)
    size = size or spec.default_size
    counts = counts or COUNTS
    rng = np.random.default_rng(seed)
    shape = (size, size) if spec.channels == 1 else (size, size, spec.channels)
    images = {s: rng.integers(0, 256, size=(n, *shape), dtype=np.uint8) for s, n in counts.items()}
    high = np.array([t.num_classes for t in spec.tasks])
    labels = {s: (rng.random((n, len(high))) * high).astype(np.uint8) for s, n in counts.items()}
    meta = {
        "dataset": spec.name,
        "description": f"synthetic stand-in for {spec.description}: random tensors",
        "tasks": [{"name": t.name, "num_classes": t.num_classes} for t in spec.tasks],
        "seed": seed,
        "size": size,
        "synthetic": True,
        "counts": dict(counts),
    }
    return PreparedDataset(path=Path(f"<synthetic {spec.name}>"), meta=meta, images=images, labels=labels)
