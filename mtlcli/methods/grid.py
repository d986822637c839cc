"""Grid search over static weights (the baseline of Sener & Koltun 2018, §4): one `static` run per
point of an even grid of the simplex, the best chosen on validation. It is a sweep of runs, not a
per-step rule, so `mtl train --method grid` expands it (see `mtlcli.cli.train`)."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field

from mtlcli.errors import MtlError
from mtlcli.methods.base import Options


class GridOptions(Options):
    points: int | None = Field(None, ge=2, description="grid points per axis; null: 11 for 2 tasks, 6 for 3, 4 for 4+")


def default_points(num_tasks: int) -> int:
    return {1: 2, 2: 11, 3: 6}.get(num_tasks, 4)


def simplex_grid(num_tasks: int, points: int) -> list[list[float]]:
    """Every weight vector with entries in {0, 1/(points-1), ..., 1} summing to 1 (lexicographic)."""
    steps = points - 1
    combos = (c for c in itertools.product(range(steps + 1), repeat=num_tasks - 1) if sum(c) <= steps)
    return sorted(([k / steps for k in (steps - sum(c), *c)] for c in combos), reverse=True)


def sweep_only(options: GridOptions | None = None) -> Any:
    """The registry's factory for `grid`: its options validate like any method's, but it has no
    per-step rule; `mtl train --method grid` expands it into `static` runs (mtlcli.sweep)."""
    raise MtlError(
        "grid is a sweep of static runs, not a per-step method",
        hint="run it with `mtl train RECIPE --method grid`",
    )
