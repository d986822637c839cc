"""The tables of `mtl compare`: methods per dataset, grid search, exact-vs-UB timing, scale invariance.

Every table is a `Table`: a numeric DataFrame (means, with their seed standard deviations in
companion `<column> std` columns), a title and a caption that states the selection rule. Renderers
(`mtlcli.report.render`) turn the pairs into "mean ± std" where the format is for people.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from mtlcli.report import MAX_STDOUT_COLUMNS
from mtlcli.report.published import Published, PublishedRow, PublishedTable
from mtlcli.results import (
    GRID,
    SINGLE_TASK,
    UNIFORM,
    MetricKey,
    RunResult,
    Selection,
    describe_scales,
    metric_keys,
)
from mtlcli.tasks import METRICS

# (exact, representation-level) variants of the same method: the paper's Table 2 ablation.
EXACT_PAIRS: tuple[tuple[str, str], ...] = (("mgda", "mgda-ub"), ("imtl-g-exact", "imtl-g"))
DELTA_METRICS = "Δm% (metrics)"
DELTA_TASKS = "Δm% (tasks)"
PUBLISHED_DELTA = "published Δm%"  # a published row's Δm% as its paper prints it
MEAN_RANK = "mean rank"
# More task-metric columns than this: stdout shows the methods table's summary (`--wide` prints it whole),
# and the timing, grid and scale tables show means over tasks instead of a column per task metric.
COST_COLUMNS = ("ms/step", "× uniform", "train min")
DELTA_NOTE = (
    "Δm% = mean of (-1)^h (M - M_st) / M_st × 100 against single-task (h = 1 when higher is better; "
    "lower is better, negative beats single-task): (metrics) averages over all metrics (Nash-MTL, CAGrad, FAMO), "
    "(tasks) over tasks of each task's mean (LibMTL)."
)


def delta_columns(reference: PublishedTable | None = None) -> tuple[str, str]:
    """The two Δm% column names; against a published single-task row they say whose, so they are never confused
    with Δm% against the runs' own single-task reference."""
    if reference is None:
        return DELTA_METRICS, DELTA_TASKS
    suffix = f" vs published STL ({reference.source})"
    return DELTA_METRICS + suffix, DELTA_TASKS + suffix


@dataclass
class Table:
    """A numeric table; `spread` maps a value column to the column holding its std over seeds.

    `task_columns`: how many columns hold a task metric when the table has one per task metric; more than
    `MAX_STDOUT_COLUMNS` makes it `wide`, and compare prints its summary instead.
    """

    key: str
    title: str
    caption: str
    frame: pd.DataFrame
    spread: dict[str, str] = field(default_factory=dict)
    task_columns: int = 0
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # task-metric columns: their better direction

    @property
    def wide(self) -> bool:
        return self.task_columns > MAX_STDOUT_COLUMNS


@dataclass
class Group:
    """The runs (seeds) of one method variant on one dataset with the same loss scales."""

    dataset: str
    label: str
    method: str
    scales: tuple[tuple[str, float], ...]
    results: list[RunResult]

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def keys(self) -> list[MetricKey]:
        return metric_keys(self.results[0].run.recipe)

    @property
    def tasks(self) -> list[dict]:
        return self.results[0].run.recipe["tasks"]

    def stat(self, value: Callable[[RunResult], float | None]) -> tuple[float, float]:
        """Mean and sample std (n - 1; NaN for one run) of `value` over the runs that have it."""
        values = [v for v in (value(r) for r in self.results) if v is not None and not math.isnan(v)]
        if not values:
            return math.nan, math.nan
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)

    def test(self, key: MetricKey) -> tuple[float, float]:
        return self.stat(lambda r: r.test.get(key, math.nan))

    @property
    def val_score(self) -> float:
        return self.stat(lambda r: r.val_score)[0]


def groups_of(results: Iterable[RunResult]) -> dict[str, list[Group]]:
    """Groups per dataset, in a stable order: single-task, uniform, then by label."""
    found: dict[tuple[str, str, tuple[tuple[str, float], ...]], list[RunResult]] = {}
    for result in results:
        found.setdefault((result.dataset, result.label, result.scales), []).append(result)
    out: dict[str, list[Group]] = {}
    for (dataset, label, scales), members in found.items():
        members.sort(key=lambda r: (r.seed, r.run.path.name))
        out.setdefault(dataset, []).append(Group(dataset, label, members[0].method, scales, members))
    order = {SINGLE_TASK: 0, UNIFORM: 1}
    for groups in out.values():
        groups.sort(key=lambda g: (order.get(g.method, 2), g.label, g.scales))
    return dict(sorted(out.items()))


def column(key: MetricKey) -> str:
    return f"{key[0]} {key[1]}"


def reference_group(groups: list[Group]) -> Group | None:
    """The unscaled single-task group (the one with most seeds when there are variants)."""
    candidates = [g for g in groups if g.method == SINGLE_TASK and not g.scales]
    return max(candidates, key=lambda g: g.n) if candidates else None


def delta_m(values: dict[MetricKey, float], reference: dict[MetricKey, float]) -> tuple[float, float]:
    """(Δm% over all metrics, Δm% over tasks of each task's mean); lower is better in both."""
    terms: dict[MetricKey, float] = {}
    for key, value in values.items():
        base = reference.get(key, math.nan)
        sign = -1.0 if METRICS[key[1]].higher_is_better else 1.0
        terms[key] = sign * (value - base) / base * 100.0 if base else math.nan
    by_task: dict[str, list[float]] = {}
    for (task, _), term in terms.items():
        by_task.setdefault(task, []).append(term)
    over_metrics = statistics.fmean(terms.values()) if terms else math.nan
    over_tasks = statistics.fmean(statistics.fmean(v) for v in by_task.values()) if by_task else math.nan
    return over_metrics, over_tasks


def is_wide(keys: list[MetricKey]) -> bool:
    """Whether a column per task metric is too many for stdout."""
    return len(keys) > MAX_STDOUT_COLUMNS


def primary_keys(group: Group) -> dict[str, list[MetricKey]]:
    """Each task's first metric, grouped by metric name (in task order)."""
    out: dict[str, list[MetricKey]] = {}
    for task in group.tasks:
        out.setdefault(task["metrics"][0], []).append((task["name"], task["metrics"][0]))
    return out


def mean_cells(group: Group) -> dict[str, tuple[float, float]]:
    """'mean <metric>': each seed's mean over the tasks led by that metric, then (mean, std) over seeds."""
    return {
        f"mean {metric}": group.stat(lambda r, ks=keys: statistics.fmean(r.test.get(k, math.nan) for k in ks))
        for metric, keys in primary_keys(group).items()
    }


def metric_cells(group: Group) -> dict[str, tuple[float, float]]:
    """(mean, std) per task-metric column, or per `mean_cells` column when the columns would be too many."""
    if is_wide(group.keys):
        return mean_cells(group)
    return {column(k): group.test(k) for k in group.keys}


def put_cells(row: dict[str, object], spread: dict[str, str], cells: dict[str, tuple[float, float]]) -> None:
    """Write (mean, std) cells into `row` as `<name>` and `<name> std`, and record the pair in `spread`."""
    for name, (mean, std) in cells.items():
        row[name], row[f"{name} std"] = mean, std
        spread[name] = f"{name} std"


def primary_metric(groups: list[Group]) -> str | None:
    """The first metric shared by every task, when all tasks lead with the same one."""
    firsts = {t["metrics"][0] for t in groups[0].tasks}
    return next(iter(firsts)) if len(firsts) == 1 else None


def collapse_grid(groups: list[Group]) -> tuple[list[Group], Group | None, int]:
    """Replace the grid points by the one with the best mean validation score (never test)."""
    points = [g for g in groups if g.method == GRID and not g.scales]
    if not points:
        return groups, None, 0
    best = max(points, key=lambda g: g.val_score)
    return [g for g in groups if g not in points or g is best], best, len(points)


def method_table(dataset: str, groups: list[Group], selection: Selection, published: Published | None = None) -> Table:
    """A row per method variant (seeds aggregated), single-task reference first; Δm%, mean rank, timing.

    With `published`, the cited papers' rows follow the runs' (`[published]`), and Δm% may be computed against a
    published single-task row instead of the runs' own (the column names then say whose)."""
    unscaled = [g for g in groups if not g.scales]
    rows_groups, grid_best, grid_points = collapse_grid(unscaled)
    keys = unscaled[0].keys
    published = published or Published({})
    extra = published.rows(dataset)
    ref_values, stl_table, stl_note = _reference_values(dataset, unscaled, keys, published)
    delta_metrics, delta_tasks = delta_columns(stl_table)
    primary = primary_metric(unscaled)
    uniform = next((g for g in unscaled if g.method == UNIFORM), None)
    uniform_step = uniform.stat(lambda r: r.step_seconds)[0] if uniform else math.nan
    rows, spread = [], {}
    for group in rows_groups:
        label = group.label
        if group is grid_best:
            label = f"{label} [best of {grid_points} on val]"
        row: dict[str, object] = {"method": label, "n": group.n}
        for key in keys:
            mean, std = group.test(key)
            row[column(key)], row[f"{column(key)} std"] = mean, std
            spread[column(key)] = f"{column(key)} std"
        if primary is not None:
            name = f"mean {primary}"
            firsts = [(t["name"], t["metrics"][0]) for t in group.tasks]
            row[name], row[f"{name} std"] = group.stat(
                lambda r, f=firsts: statistics.fmean(r.test.get(k, math.nan) for k in f)
            )
            spread[name] = f"{name} std"
        if ref_values is not None:
            row[delta_metrics], row[f"{delta_metrics} std"] = group.stat(lambda r: delta_m(r.test, ref_values)[0])
            row[delta_tasks], row[f"{delta_tasks} std"] = group.stat(lambda r: delta_m(r.test, ref_values)[1])
            spread[delta_metrics], spread[delta_tasks] = f"{delta_metrics} std", f"{delta_tasks} std"
        step = group.stat(lambda r: r.step_seconds)[0]
        row["ms/step"] = step * 1000.0
        row["× uniform"] = step / uniform_step if uniform_step else math.nan
        row["train min"] = group.stat(lambda r: r.train_seconds)[0] / 60.0
        rows.append(row)
    for table, published_row in extra:
        rows.append(_published_row(table, published_row, unscaled[0], primary, ref_values, (delta_metrics, delta_tasks)))
    frame = pd.DataFrame(rows)
    ranked = pd.Series([g.method != SINGLE_TASK for g in rows_groups] + [False] * len(extra), index=frame.index)
    if ranked.any():
        ranks = pd.DataFrame(
            {
                column(k): frame.loc[ranked, column(k)].rank(ascending=not METRICS[k[1]].higher_is_better, method="average")
                for k in keys
            }
        )
        frame.insert(frame.columns.get_loc("ms/step"), MEAN_RANK, ranks.mean(axis=1))
    caption = f"{dataset}: {selection.describe()}; mean ± std over n seeds (std with n - 1)."
    if ref_values is not None:
        caption += " " + DELTA_NOTE
        if stl_table is not None:
            caption += (
                f" Here M_st is the published single-task row of {stl_table.source} (--stl published), not the runs' "
                "single-task reference."
            )
    else:
        caption += stl_note or " No single-task runs, so no Δm%."
    caption += " Mean rank over all metrics among the multi-task rows (1 is best)."
    if selection.kind == "best" and any(g.method == SINGLE_TASK for g in groups):
        caption += (
            " single-task: each task's network at its own best validation epoch (the networks are independent,"
            " as separate trainings would be)."
        )
    if grid_best is not None:
        caption += f" The grid row is the grid point with the best mean validation score of {grid_points}."
    caption += " ms/step: median step time (mean over seeds); train min: training time without evaluation."
    if extra:
        caption += " " + published_note(published.tables.get(dataset, []))
    caption += " ↑ / ↓: higher / lower is better."
    directions = {column(k): METRICS[k[1]].higher_is_better for k in keys}
    return Table(f"{dataset}-methods", f"{dataset}: methods", caption, frame, spread, len(keys), directions)


def _reference_values(
    dataset: str, unscaled: list[Group], keys: list[MetricKey], published: Published
) -> tuple[dict[MetricKey, float] | None, PublishedTable | None, str]:
    """The single-task values Δm% is against (the runs' or a published row), that row's table, and a caption note
    when there are none."""
    if published.stl is None:
        reference = reference_group(unscaled)
        return ({k: reference.test(k)[0] for k in keys} if reference else None), None, ""
    found = published.reference(dataset)
    if found is None:
        return None, None, " No published single-task numbers per metric for this dataset (--stl published), so no Δm%."
    table, row = found
    missing = [column(k) for k in keys if k not in row.values]
    if missing:
        return None, None, f" The published single-task row of {table.source} lacks {', '.join(missing)}, so no Δm%."
    return {k: row.values[k] for k in keys}, table, ""


def _published_row(
    table: PublishedTable,
    published_row: PublishedRow,
    like: Group,
    primary: str | None,
    ref_values: dict[MetricKey, float] | None,
    deltas: tuple[str, str],
) -> dict[str, object]:
    """A published row in the columns of the runs' rows: its numbers where the paper printed them, NaN elsewhere."""
    keys = like.keys
    row: dict[str, object] = {"method": table.label(published_row), "n": "-"}
    for key in keys:
        row[column(key)], row[f"{column(key)} std"] = published_row.values.get(key, math.nan), math.nan
    if primary is not None:
        name = f"mean {primary}"
        row[name], row[f"{name} std"] = published_mean(published_row, like, primary), math.nan
    if ref_values is not None:
        covered = all(k in published_row.values for k in keys)
        metrics, tasks = delta_m({k: published_row.values[k] for k in keys}, ref_values) if covered else (math.nan,) * 2
        row[deltas[0]], row[f"{deltas[0]} std"] = metrics, math.nan
        row[deltas[1]], row[f"{deltas[1]} std"] = tasks, math.nan
    row[PUBLISHED_DELTA] = math.nan if published_row.delta_m is None else published_row.delta_m
    row["ms/step"] = row["× uniform"] = row["train min"] = math.nan
    return row


def published_mean(published_row: PublishedRow, like: Group, metric: str) -> float:
    """A published row's mean of `metric` over the tasks that lead with it: as printed, or from its values."""
    if metric in published_row.means:
        return published_row.means[metric]
    keys = [(t["name"], metric) for t in like.tasks if t["metrics"][0] == metric]
    if keys and all(k in published_row.values for k in keys):
        return statistics.fmean(published_row.values[k] for k in keys)
    return math.nan


def published_note(tables: list[PublishedTable]) -> str:
    """The caption's citation of the published rows: paper, table, protocol, where read, and any caveat."""
    parts = []
    for table in tables:
        text = f"{table.source}: {table.title}, {table.url}; {table.protocol}"
        if table.note:
            text += f"; {table.note}"
        parts.append(text)
    return (
        "Rows marked [published] are numbers printed in the cited papers, not runs (no seeds, no timing, no rank); "
        f"{PUBLISHED_DELTA} is each paper's own. " + " | ".join(parts) + "."
    )


def _summary_columns(methods: Table, group: Group) -> list[str]:
    """The methods-table columns a summary keeps: Δm% (per task only when tasks have several metrics; against
    whichever single-task reference the methods table used), the published Δm%, rank, cost."""
    several = any(len(t["metrics"]) > 1 for t in group.tasks)
    deltas = [c for c in methods.frame.columns if c.startswith(DELTA_METRICS) or (several and c.startswith(DELTA_TASKS))]
    wanted = [*deltas, PUBLISHED_DELTA, MEAN_RANK, *COST_COLUMNS]
    return [name for name in wanted if name in methods.frame.columns and not name.endswith(" std")]


def summary_table(dataset: str, groups: list[Group], methods: Table, published: Published | None = None) -> Table:
    """The methods table in a few columns: per method the mean of each primary metric over tasks, Δm%, rank, cost."""
    rows_groups, _, _ = collapse_grid([g for g in groups if not g.scales])
    extra = (published or Published({})).rows(dataset)
    source, kept = methods.frame, _summary_columns(methods, rows_groups[0])
    rows, spread = [], {}
    for index, group in zip(source.index, [*rows_groups, *extra], strict=True):
        if isinstance(group, Group):
            row: dict[str, object] = {"method": source.at[index, "method"], "n": group.n}
            put_cells(row, spread, mean_cells(group))
        else:
            row = {"method": source.at[index, "method"], "n": "-"}
            like = rows_groups[0]
            put_cells(row, spread, {f"mean {m}": (published_mean(group[1], like, m), math.nan) for m in primary_keys(like)})
        for name in kept:
            row[name] = source.at[index, name]
            if name in methods.spread:
                row[methods.spread[name]] = source.at[index, methods.spread[name]]
                spread[name] = methods.spread[name]
        rows.append(row)
    means = ", ".join(mean_cells(rows_groups[0]))
    caption = (
        f"{dataset}: summary of the per-task methods table. {means}: each seed's mean over the tasks whose first "
        "metric it is, then mean ± std over n seeds; the other columns are the per-task table's. "
        + methods.caption.removeprefix(f"{dataset}: ")
        + f"\nNote: the per-task table ({methods.key}) has {methods.task_columns} task-metric columns "
        f"(more than {MAX_STDOUT_COLUMNS}): --out DIR writes it (csv, md, tex, json and report.html); --wide prints it."
    )
    title = f"{dataset}: methods (summary over {len(rows_groups[0].tasks)} tasks)"
    return Table(f"{dataset}-summary", title, caption, pd.DataFrame(rows), spread)


def stdout_tables(tables: list[Table], *, wide: bool = False) -> list[Table]:
    """What compare prints: every table but the wide ones (their summaries stand in), or all with `wide`."""
    return [t for t in tables if wide or not t.wide]


def _grid_order(group: Group) -> tuple:
    """Grid points in the order of their weight vectors (then by label)."""
    weights = group.results[0].options.get("weights")
    numeric = isinstance(weights, list) and all(isinstance(w, int | float) for w in weights)
    return (tuple(-w for w in weights) if numeric else (), group.label)


def grid_table(dataset: str, groups: list[Group], selection: Selection) -> Table | None:
    """Every grid-search point with its validation score and test metrics (the front of the figures)."""
    points = [g for g in groups if g.method == GRID and not g.scales]
    if not points:
        return None
    keys = points[0].keys
    rows: list[dict[str, object]] = []
    spread: dict[str, str] = {}
    for group in sorted(points, key=_grid_order):
        row: dict[str, object] = {"grid point": group.label, "n": group.n, "val score": group.val_score}
        put_cells(row, spread, metric_cells(group))
        rows.append(row)
    caption = (
        f"{dataset}: every grid-search point (fixed loss weights); {selection.describe()}. "
        "val score: mean validation score that picks the grid row of the methods table."
    ) + _means_note(keys)
    return Table(f"{dataset}-grid", f"{dataset}: grid search", caption, pd.DataFrame(rows), spread)


def _means_note(keys: list[MetricKey]) -> str:
    """A caption's note that the metric columns are means over tasks (nothing when they are per task)."""
    if not is_wide(keys):
        return ""
    return (
        f" With {len(keys)} task metrics (more than {MAX_STDOUT_COLUMNS}), the metric columns are means: each seed's mean "
        "over the tasks whose first metric it is, then mean ± std over seeds; the runs table has every task metric."
    )


def timing_table(dataset: str, groups: list[Group], selection: Selection) -> Table | None:
    """Exact vs representation-level variants (paper Table 2): time, ms/step, speed-up, metrics."""
    unscaled = [g for g in groups if not g.scales]
    rows, spread = [], {}
    for exact, approx in EXACT_PAIRS:
        exact_groups = [g for g in unscaled if g.method == exact]
        approx_groups = [g for g in unscaled if g.method == approx]
        if not exact_groups or not approx_groups:
            continue
        times = [g.stat(lambda r: r.train_seconds)[0] for g in exact_groups]
        steps = [g.stat(lambda r: r.step_seconds)[0] for g in exact_groups]
        fastest_time, fastest_step = min(times), min(steps)
        for group in exact_groups + approx_groups:
            seconds = group.stat(lambda r: r.train_seconds)[0]
            step = group.stat(lambda r: r.step_seconds)[0]
            row: dict[str, object] = {
                "method": group.label,
                "gradients": "shared parameters (exact)" if group.method == exact else "representation",
                "n": group.n,
                "train min": seconds / 60.0,
                "total min": group.stat(lambda r: r.total_seconds)[0] / 60.0,
                "ms/step": step * 1000.0,
                "speed-up": fastest_time / seconds if seconds else math.nan,
                "step speed-up": fastest_step / step if step else math.nan,
            }
            put_cells(row, spread, metric_cells(group))
            rows.append(row)
    if not rows:
        return None
    caption = (
        f"{dataset}: exact methods (per-task gradients on the shared parameters) vs their representation-level "
        "variants, as in Sener & Koltun (2018) Table 2. train min: training time without evaluation, total min: with it "
        "(means over seeds); "
        "speed-up: the fastest exact variant's time divided by the row's; step speed-up: the same for the median "
        f"ms/step. Metrics: {selection.describe()}, mean ± std over n seeds. Times are as each run recorded them: "
        "runs trained at different times on a shared machine are not comparable; `mtl ablate` times the methods "
        "side by side."
    ) + _means_note(unscaled[0].keys)
    return Table(f"{dataset}-timing", f"{dataset}: exact vs representation-level", caption, pd.DataFrame(rows), spread)


def scale_table(dataset: str, groups: list[Group], selection: Selection) -> Table | None:
    """Runs with scaled task losses against the same method unscaled: |change| of every metric (IMTL Table 1)."""
    unscaled = {g.label: g for g in groups if not g.scales}
    rows = []
    for group in groups:
        base = unscaled.get(group.label)
        if not group.scales or base is None:
            continue
        row: dict[str, object] = {"method": group.label, "scaling": describe_scales(group.scales), "n": group.n, "n base": base.n}
        changes = [abs(group.test(key)[0] - base.test(key)[0]) for key in group.keys]
        if is_wide(group.keys):
            row["max |Δ|"] = max(changes)
        else:
            row.update({f"|Δ| {column(key)}": change for key, change in zip(group.keys, changes, strict=True)})
        row["mean |Δ|"] = statistics.fmean(changes)
        rows.append(row)
    if not rows:
        return None
    caption = (
        f"{dataset}: scale invariance (IMTL, Liu et al. 2021, Table 1). Each row trains with the listed task losses "
        "multiplied by a constant; |Δ| is the absolute change of the mean test metric against the same method "
        f"unscaled (smaller is more scale-invariant). {selection.describe()}."
    )
    if rows and "max |Δ|" in rows[0]:
        caption += f" More than {MAX_STDOUT_COLUMNS} task metrics: the largest and the mean |Δ| over them."
    return Table(f"{dataset}-scale", f"{dataset}: scale invariance", caption, pd.DataFrame(rows))


def runs_table(dataset: str, groups: list[Group], selection: Selection) -> Table:
    """A row per run: what the aggregated rows are made of (label, seed, selected epochs, metrics)."""
    rows = []
    for group in groups:
        for result in group.results:
            row: dict[str, object] = {
                "method": group.label,
                "scaling": describe_scales(group.scales),
                "seed": result.seed,
                "epochs": ",".join(map(str, result.epochs)),
            }
            row.update({column(k): result.test.get(k, math.nan) for k in group.keys})
            row["ms/step"] = (result.step_seconds or math.nan) * 1000.0
            row["run"] = result.run.path.name
            rows.append(row)
    caption = f"{dataset}: every run compared; {selection.describe()}; epochs: the epochs reported."
    return Table(f"{dataset}-runs", f"{dataset}: runs", caption, pd.DataFrame(rows))


def build_tables(
    results: list[RunResult], selection: Selection, *, runs: bool = False, published: Published | None = None
) -> list[Table]:
    """Every table compare produces, per dataset, in reading order (with `runs`, a row per run too; with `published`,
    the cited papers' rows and/or Δm% against a published single-task row)."""
    tables: list[Table] = []
    for dataset, groups in groups_of(results).items():
        if any(not g.scales for g in groups):
            methods = method_table(dataset, groups, selection, published)
            if methods.wide:
                tables.append(summary_table(dataset, groups, methods, published))
            tables.append(methods)
        for builder in (grid_table, timing_table, scale_table):
            table = builder(dataset, groups, selection)
            if table is not None:
                tables.append(table)
        if runs:
            tables.append(runs_table(dataset, groups, selection))
    return tables
