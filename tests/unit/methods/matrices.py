"""Seeded gradient matrices J [T, dim] of chosen rank and scale, including the hard cases."""

from __future__ import annotations

import numpy as np

SCALES = (1e-8, 1e-4, 1.0, 1e4, 1e8)
KINDS = ("random", "low-rank", "duplicated", "parallel", "collinear")


def jacobian(kind: str, t: int, *, seed: int, scale: float = 1.0, dim: int = 60) -> np.ndarray:
    """`kind`: random (full row rank when t <= dim), low-rank (rank max(1, t // 3)), duplicated
    (a third of the rows repeated), parallel (positive multiples of one vector, rank 1), collinear
    (one vector plus 1e-6 relative noise). Rows are scaled by `scale` times a random factor in [1, 10]."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        jac = rng.normal(size=(t, dim))
    elif kind == "low-rank":
        rank = max(1, t // 3)
        jac = rng.normal(size=(t, rank)) @ rng.normal(size=(rank, dim))
    elif kind == "duplicated":
        base = rng.normal(size=(t - t // 3, dim))
        jac = np.concatenate([base, base[: t // 3]])[rng.permutation(t)]
    elif kind == "parallel":
        jac = rng.uniform(0.5, 5.0, size=(t, 1)) * rng.normal(size=(1, dim))
    elif kind == "collinear":
        jac = rng.normal(size=(1, dim)) + 1e-6 * rng.normal(size=(t, dim))
    else:
        raise ValueError(kind)
    return jac * scale * rng.uniform(1, 10, size=(t, 1))
