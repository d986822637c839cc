"""Grid search over static weights (the baseline of Sener & Koltun 2018, §4): one `static` run per
point of an even grid of the simplex, the best chosen on validation. It is a sweep of runs, not a
per-step rule, so `mtl train --method grid` expands it (see `mtlcli.cli.train`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from mtlcli.errors import MtlError
from mtlcli.methods.options import GridOptions


def default_points(num_tasks: int) -> int:
    return {1: 2, 2: 11, 3: 6}.get(num_tasks, 4)


MAX_GRID_RUNS = 1000  # a sweep larger than this is refused before anything trains


def grid_size(num_tasks: int, points: int) -> int:
    """How many points `simplex_grid` has: the compositions of points - 1 into num_tasks parts."""
    return math.comb(points - 1 + num_tasks - 1, num_tasks - 1)


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def simplex_grid(num_tasks: int, points: int) -> list[list[float]]:
    """Every weight vector with entries in {0, 1/(points-1), ..., 1} summing to 1 (lexicographic)."""
    steps = points - 1
    return sorted(([k / steps for k in c] for c in _compositions(steps, num_tasks)), reverse=True)


def sweep_only(options: GridOptions | None = None) -> Any:
    """The registry's factory for `grid`: its options validate like any method's, but it has no
    per-step rule; `mtl train --method grid` expands it into `static` runs (mtlcli.sweep)."""
    raise MtlError(
        "grid is a sweep of static runs, not a per-step method",
        hint="run it with `mtl train RECIPE --method grid`",
    )
