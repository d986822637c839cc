"""Synthetic data: random images and labels with a registered dataset's shapes (no download needed).

Used by `mtl ablate --synthetic` and recipes with `data.synthetic: true`: step timings depend on
shapes only, so random tensors measure the same cost as the real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlcli.data import registry
from mtlcli.data.store import IGNORE_INDEX, PreparedDataset

MIN_ATOMS, MAX_ATOMS = 3, 29  # QM9's smallest and largest molecules (about 18 atoms on average)
ELEMENTS = 5  # QM9's node features: one-hot element (5), atomic number, aromatic, sp, sp2, sp3, hydrogens

COUNTS = {"train": 2048, "val": 256, "test": 256}
BUDGET_BYTES = 256 * 2**20  # dense datasets get fewer samples: at most this much per split
MISSING_LABEL = -1  # a multi-input row's label for the other tasks (mtlcli.partial.MISSING_LABEL)


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
    if spec.graph:
        return _synthetic_graphs(spec, seed, counts or COUNTS)
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
            if spec.multi_input:  # each row an image of one task (row i: task i mod T), MISSING_LABEL elsewhere
                labels = np.full((n, len(high)), MISSING_LABEL, dtype=np.int16)
                own = np.arange(n) % len(high)
                labels[np.arange(n), own] = targets[s]["labels"][np.arange(n), own]
                targets[s]["labels"] = labels
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


def _synthetic_graphs(spec: registry.DatasetSpec, seed: int, counts: dict[str, int]) -> PreparedDataset:
    """Random molecules of QM9's sizes (3..29 atoms, a random tree of bonds, random positions) and normal targets."""
    rng = np.random.default_rng(seed)
    graphs: dict[str, dict[str, np.ndarray]] = {}
    targets: dict[str, dict[str, np.ndarray]] = {}
    for split, n in counts.items():
        atoms = rng.integers(MIN_ATOMS, MAX_ATOMS + 1, size=n)
        nodes = np.zeros((int(atoms.sum()), spec.channels), dtype=np.uint8)
        element = rng.integers(0, ELEMENTS, size=len(nodes))
        nodes[np.arange(len(nodes)), element] = 1
        nodes[:, ELEMENTS] = np.array([1, 6, 7, 8, 9])[element]
        bonds = []
        for count in atoms:  # a random tree: atom i > 0 bonds to an earlier atom
            child = np.arange(1, count)
            parent = (rng.random(count - 1) * child).astype(np.int64)
            kind = rng.integers(0, 3, size=count - 1)
            bonds.append(np.concatenate([np.stack([parent, child, kind], 1), np.stack([child, parent, kind], 1)]))
        graphs[split] = {
            "nodes": nodes,
            "positions": (rng.standard_normal((len(nodes), 3)) * 1.5).astype(np.float32),
            "atoms": atoms.astype(np.int64),
            "bonds": np.concatenate(bonds).astype(np.uint8),
            "bond_counts": (2 * (atoms - 1)).astype(np.int64),
        }
        targets[split] = {t.target or t.name: rng.standard_normal(n).astype(np.float32) for t in spec.tasks}
    meta = {
        "dataset": spec.name,
        "description": f"synthetic stand-in for {spec.description}: random molecules",
        **spec.meta_schema(),
        "input": "graph",
        "node_features": spec.channels,
        "seed": seed,
        "size": spec.default_size,
        "synthetic": True,
        "counts": dict(counts),
    }
    return PreparedDataset(path=Path(f"<synthetic {spec.name}>"), meta=meta, images={}, targets=targets, graphs=graphs)
