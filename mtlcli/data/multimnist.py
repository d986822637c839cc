"""MultiMNIST-style datasets: two 28x28 items overlaid on one canvas, one classification task each.

Construction follows the MGDA-UB authors' loader (Sener & Koltun 2018, appendix C.1), made
reproducible and fixed: the partner is a *different* image of the same split drawn with a seeded
generator; canvas 36x36, left item at (0, 0), right item at (6, 6), pixel-wise maximum where they
overlap; resized to `size` by nearest-neighbour sampling. Validation is a seeded 10% of the training
split, and partners are drawn within each split so validation shares no source image with training.
"""

from __future__ import annotations

import numpy as np

from mtlcli.data.paired import CANVAS, ITEM, OFFSET, SPECS, TASKS, VAL_FRACTION, PairedSpec

__all__ = ["CANVAS", "ITEM", "OFFSET", "SPECS", "TASKS", "VAL_FRACTION", "PairedSpec"]


def draw_partners(n_left: int, n_right: int, rng: np.random.Generator, *, same_pool: bool) -> np.ndarray:
    """Index of each left item's partner; with `same_pool`, never the item itself."""
    if not same_pool:
        return rng.integers(0, n_right, size=n_left)
    if n_left < 2:
        raise ValueError("a split needs at least two images to pair each with a different one")
    partner = rng.integers(0, n_left - 1, size=n_left)
    return partner + (partner >= np.arange(n_left))  # skip the item itself, uniform over the others


def resize_indices(size: int, canvas: int = CANVAS) -> np.ndarray:
    """Nearest-neighbour source rows/cols for a `canvas` -> `size` resize (pixel-centre rule, as PIL)."""
    return np.floor((np.arange(size) + 0.5) * canvas / size).astype(np.int64)


def overlay(left: np.ndarray, right: np.ndarray, *, size: int) -> np.ndarray:
    """Compose [N, 28, 28] pairs on a 36x36 canvas (max where they overlap) and resize to `size`."""
    n = left.shape[0]
    canvas = np.zeros((n, CANVAS, CANVAS), dtype=np.uint8)
    canvas[:, :ITEM, :ITEM] = left
    region = canvas[:, OFFSET : OFFSET + ITEM, OFFSET : OFFSET + ITEM]
    np.maximum(region, right, out=region)
    if size == CANVAS:
        return canvas
    idx = resize_indices(size)
    return np.ascontiguousarray(canvas[:, idx][:, :, idx])


def split_train_val(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, disjoint (train, val) index sets; val is VAL_FRACTION of n."""
    perm = rng.permutation(n)
    n_val = round(n * VAL_FRACTION)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def build(
    spec: PairedSpec,
    raw: dict[str, dict[str, np.ndarray]],
    *,
    seed: int,
    size: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Build train/val/test (images [N, size, size], labels [N, 2]) from raw arrays per source.

    `raw[source]` holds train_images, train_labels, test_images, test_labels.
    """
    streams = np.random.SeedSequence(seed).spawn(2 + 3)
    pair_rngs = dict(zip(("train", "val", "test"), (np.random.default_rng(s) for s in streams[2:]), strict=True))
    # one train/val split per raw source (computed once, so both sides of a same-source pair agree)
    splits = {
        source: split_train_val(len(raw[source]["train_images"]), np.random.default_rng(stream))
        for source, stream in zip(spec.sources, streams[:2], strict=False)
    }

    def pools(source: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        src = raw[source]
        train_idx, val_idx = splits[source]
        return {
            "train": (src["train_images"][train_idx], src["train_labels"][train_idx]),
            "val": (src["train_images"][val_idx], src["train_labels"][val_idx]),
            "test": (src["test_images"], src["test_labels"]),
        }

    left_pools, right_pools = pools(spec.left), pools(spec.right)
    same = spec.left == spec.right
    out = {}
    for split in ("train", "val", "test"):
        left_images, left_labels = left_pools[split]
        right_images, right_labels = right_pools[split]
        partner = draw_partners(len(left_images), len(right_images), pair_rngs[split], same_pool=same)
        images = overlay(left_images, right_images[partner], size=size)
        labels = np.stack([left_labels, right_labels[partner]], axis=1).astype(np.uint8)
        out[split] = (images, labels)
    return out
