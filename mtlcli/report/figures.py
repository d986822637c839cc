"""The papers' figures from compared runs (matplotlib, Agg; PNG and SVG).

- two tasks: the accuracy profile of Sener & Koltun (2018) Figure 3 - one marker per method (mean,
  with the seed spread), grid-search points joined as a front, single-task as reference lines;
- more tasks: pairwise projections (their Figure 4; left out above `MAX_PAIRWISE_TASKS` tasks) and a
  radar chart of per-task error (Figure 2): tasks ordered from easy to hard, split into an easy and a
  hard chart when there are many;
- validation curves per method, and the loss-weight (alpha) trajectories of weighting methods.
"""

from __future__ import annotations

import io
import itertools
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from mtlcli.io import write_bytes_atomic
from mtlcli.report.tables import Group, collapse_grid, reference_group
from mtlcli.results import GRID, SINGLE_TASK, UNIFORM, MetricKey
from mtlcli.tasks import METRICS

MARKERS = "osD^v<>PX*hp"
MAX_PAIR_TASKS = 6  # pairwise projections of the first tasks only (15 panels)
MAX_PAIRWISE_TASKS = 16  # more tasks than this: no pairwise figure (the first few of many tasks say little)
RADAR_SPLIT = 10  # more tasks than this: an easy and a hard radar chart
RADAR_SMALL = 12  # more axes than this on one chart: smaller, wrapped labels and a larger chart
MAX_ALPHA_PANELS = 12


@dataclass
class Figure:
    """A written figure: `name.png` and `name.svg` in the figures directory."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path


def _save(fig: MplFigure, directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, dpi=120, bbox_inches="tight")
        path = directory / f"{name}.{ext}"
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths[0], paths[1]


def _primary(group: Group) -> list[MetricKey]:
    return [(t["name"], t["metrics"][0]) for t in group.tasks]


_PALETTE = [plt.get_cmap("tab20")(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]  # 10 strong, then 10 light


def _style(index: int) -> tuple[tuple[float, ...], str]:
    """A distinct (colour, marker) per method: 20 colours, and the marker cycle offsets repeats."""
    return _PALETTE[index % len(_PALETTE)], MARKERS[index % len(MARKERS)]


def _axis_label(key: MetricKey) -> str:
    better = "higher" if METRICS[key[1]].higher_is_better else "lower"
    return f"{key[0]} {key[1]} (%; {better} is better)"


def _orient(ax: plt.Axes, kx: MetricKey, ky: MetricKey) -> None:
    """Flip lower-is-better axes so that top-right is always better."""
    if not METRICS[kx[1]].higher_is_better:
        ax.invert_xaxis()
    if not METRICS[ky[1]].higher_is_better:
        ax.invert_yaxis()


def _limits(values: list[float]) -> tuple[float, float] | None:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    pad = max(0.15 * (hi - lo), 0.5)
    return lo - pad, hi + pad


def _plot_pair(ax: plt.Axes, groups: list[Group], kx: MetricKey, ky: MetricKey, *, legend: bool) -> None:
    """One 2-D profile: methods (mean, std, seeds), the grid front, single-task reference lines.

    The view frames the methods and single-task; grid points far from them (e.g. a weight of 0 on a
    task) are left outside the view, as in the paper, and counted in the legend.
    """
    unscaled = [g for g in groups if not g.scales]
    focus_x: list[float] = []
    focus_y: list[float] = []
    for group in unscaled:
        if group.method == SINGLE_TASK:
            ax.axvline(group.test(kx)[0], color="k", ls="--", lw=1)
            ax.axhline(group.test(ky)[0], color="k", ls="--", lw=1, label="single-task")
            focus_x.append(group.test(kx)[0])
            focus_y.append(group.test(ky)[0])
    others = [g for g in unscaled if g.method not in (GRID, SINGLE_TASK)]
    for i, group in enumerate(others):
        color, marker = _style(i)
        (mx, sx), (my, sy) = group.test(kx), group.test(ky)
        seeds_x = [r.test.get(kx, math.nan) for r in group.results]
        seeds_y = [r.test.get(ky, math.nan) for r in group.results]
        if len(seeds_x) > 1:
            ax.scatter(seeds_x, seeds_y, s=12, color=color, alpha=0.35, marker=marker, zorder=3)
        sx, sy = (0.0 if math.isnan(sx) else sx), (0.0 if math.isnan(sy) else sy)
        ax.errorbar(
            mx, my, xerr=sx, yerr=sy, fmt=marker, color=color, ms=8, capsize=3, zorder=4, label=f"{group.label} (n={group.n})"
        )
        focus_x += [*seeds_x, mx - sx, mx + sx]
        focus_y += [*seeds_y, my - sy, my + sy]
    grid = sorted((g for g in unscaled if g.method == GRID), key=lambda g: g.test(kx)[0])
    if grid:
        xs, ys = [g.test(kx)[0] for g in grid], [g.test(ky)[0] for g in grid]
        _, chosen, _ = collapse_grid(grid)
        assert chosen is not None
        focus_x.append(chosen.test(kx)[0])
        focus_y.append(chosen.test(ky)[0])
        xlim, ylim = _limits(focus_x), _limits(focus_y)
        outside = sum(
            1 for x, y in zip(xs, ys, strict=True) if xlim and ylim and not (xlim[0] <= x <= xlim[1] and ylim[0] <= y <= ylim[1])
        )
        note = f", {outside} outside the view" if outside and len(focus_x) > 1 else ""
        ax.plot(xs, ys, "-", color="0.6", lw=1, zorder=1)
        ax.scatter(xs, ys, s=18, color="0.45", zorder=2, label=f"grid search ({len(grid)} weightings{note})")
        ax.scatter(
            [chosen.test(kx)[0]],
            [chosen.test(ky)[0]],
            s=90,
            facecolors="none",
            edgecolors="0.2",
            zorder=2,
            label="grid: best on validation",
        )
    xlim, ylim = _limits(focus_x), _limits(focus_y)
    if xlim and ylim and len(focus_x) > 1:
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
    ax.set_xlabel(_axis_label(kx))
    ax.set_ylabel(_axis_label(ky))
    _orient(ax, kx, ky)
    ax.grid(alpha=0.3)
    if legend:  # outside the axes: with many methods an inside legend hides the points
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def profile_figure(dataset: str, groups: list[Group], directory: Path) -> Figure:
    """Two tasks: task A metric vs task B metric (paper Figure 3); top-right is better."""
    kx, ky = _primary(groups[0])[:2]
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    _plot_pair(ax, groups, kx, ky, legend=True)
    ax.set_title(f"{dataset}: test {kx[1]} profile (top-right is better)")
    name = f"{dataset}-profile"
    png, svg = _save(fig, directory, name)
    caption = (
        f"{dataset}: test {kx[0]} vs {ky[0]} per method (mean over seeds, error bars one std, faint points the seeds); "
        "grey: grid-search weightings joined as a front; dashed: single-task references. Top-right is better."
    )
    return Figure(name, f"{dataset}: accuracy profile", caption, png, svg)


def pairwise_figure(dataset: str, groups: list[Group], directory: Path) -> Figure:
    """More than two tasks: every pair of the first tasks as a 2-D projection (paper Figure 4)."""
    keys = _primary(groups[0])[:MAX_PAIR_TASKS]
    pairs = list(itertools.combinations(keys, 2))
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows + 0.8), squeeze=False, layout="constrained")
    for ax, (kx, ky) in zip(axes.flat, pairs, strict=False):
        _plot_pair(ax, groups, kx, ky, legend=False)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=8)
    fig.suptitle(f"{dataset}: pairwise projections of the test profile (top-right is better)")
    name = f"{dataset}-pairwise"
    png, svg = _save(fig, directory, name)
    shown = "" if len(_primary(groups[0])) <= MAX_PAIR_TASKS else f" (the first {MAX_PAIR_TASKS} tasks)"
    caption = f"{dataset}: each panel projects the per-task test metrics on two tasks{shown}; every point solves all tasks."
    return Figure(name, f"{dataset}: pairwise projections", caption, png, svg)


def _error(value: float, key: MetricKey) -> float:
    """Per-task error in %: 100 - value for a higher-is-better % metric, the value itself otherwise."""
    return 100.0 - value if METRICS[key[1]].higher_is_better else value


def radar_errors(groups: list[Group], keys: list[MetricKey]) -> dict[str, list[float]]:
    """Per label, the mean test error (%) of every task in `keys` (an `error` metric as it is, never 100 - error)."""
    return {g.label: [_error(g.test(k)[0], k) for k in keys] for g in groups}


def relative_errors(errors: dict[str, list[float]], reference: str | None) -> dict[str, list[float]]:
    """Errors divided by the reference label's (single-task), else by the mean over labels: 1 = the reference.

    For tasks whose metrics have different units (pixels, metres, degrees, %), one radial axis only means
    something relative to a common baseline.
    """
    count = len(next(iter(errors.values()), []))
    base = []
    for i in range(count):
        own = errors[reference][i] if reference in errors else math.nan
        finite = [e[i] for e in errors.values() if not math.isnan(e[i])]
        base.append(own if not math.isnan(own) and own > 0 else (float(np.mean(finite)) if finite else math.nan))
    return {
        label: [v / b if b and b > 0 else math.nan for v, b in zip(values, base, strict=True)] for label, values in errors.items()
    }


def mixed_units(keys: list[MetricKey]) -> bool:
    """Whether the primary metrics are not all percentages (e.g. mIoU %, depth error in m, angle in degrees)."""
    return any(METRICS[m].unit != "%" for _, m in keys)


def difficulty_order(errors: dict[str, list[float]], reference: str | None = None) -> list[int]:
    """Task indices from easy to hard: by the `reference` label's error (single-task), else the mean over labels.

    A task the reference lacks (NaN) falls back on the mean; tasks without any error come last; ties keep task order.
    """
    count = len(next(iter(errors.values()), []))

    def difficulty(i: int) -> float:
        own = errors[reference][i] if reference in errors else math.nan
        if not math.isnan(own):
            return own
        finite = [e[i] for e in errors.values() if not math.isnan(e[i])]
        return float(np.mean(finite)) if finite else math.inf

    return sorted(range(count), key=lambda i: (difficulty(i), i))


def _radar_label(name: str, small: bool) -> str:
    """An axis label: underscores as spaces, wrapped onto short lines when the chart has many axes."""
    text = name.replace("_", " ")
    return "\n".join(textwrap.wrap(text, 11, break_long_words=False)) if small else text


def _radar_axes(ax: plt.Axes, names: list[str], top: float) -> list[float]:
    """Angles clockwise from the top, labelled with `names`; radial axis from 0 to `top`."""
    small = len(names) > RADAR_SMALL
    angles = np.linspace(0, 2 * np.pi, len(names), endpoint=False).tolist()
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    ax.set_xticks(angles)
    ax.set_xticklabels([_radar_label(n, small) for n in names], fontsize=6.5 if small else 8)
    ax.tick_params(axis="x", pad=10 if small else 4)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylim(0, top)
    ax.grid(alpha=0.4)
    return angles


def _radar_parts(order: list[int], unit: str = "error (%)") -> tuple[list[list[int]], list[str]]:
    """One chart, or easy and hard halves (paper Figure 2) when there are more than `RADAR_SPLIT` tasks."""
    if len(order) <= RADAR_SPLIT:
        return [order], [f"per-task {unit}, easy to hard clockwise"]
    half = len(order) // 2
    return [order[:half], order[half:]], [f"easy tasks: {unit}", f"hard tasks: {unit}"]


def radar_figure(dataset: str, groups: list[Group], directory: Path, *, note: str = "") -> Figure:
    """Per-task error per method on radar charts (paper Figure 2), tasks from easy to hard, halves when many."""
    shown, _, _ = collapse_grid([g for g in groups if not g.scales])
    keys = _primary(groups[0])
    errors = radar_errors(shown, keys)
    reference = reference_group(shown)
    order = difficulty_order(errors, reference.label if reference else None)
    relative = mixed_units(keys)
    if relative:
        errors = relative_errors(errors, reference.label if reference else None)
    base = "single-task" if reference else "the mean over methods"
    parts, titles = _radar_parts(order, f"error / {base}'s" if relative else "error (%)")
    side = 7.2 if max(len(p) for p in parts) > RADAR_SMALL else 6.2
    fig, axes = plt.subplots(
        1,
        len(parts),
        figsize=(side * len(parts), side + 0.6),
        squeeze=False,
        subplot_kw={"projection": "polar"},
        layout="constrained",
    )
    methods = [g for g in shown if g.method != SINGLE_TASK]
    for ax, part, title in zip(axes.flat, parts, titles, strict=True):
        top = 1.1 * max([e[j] for e in errors.values() for j in part if not math.isnan(e[j])], default=1.0)
        angles = _radar_axes(ax, [keys[j][0] for j in part], top)  # each chart its own scale, as in the paper
        for group in shown:
            single = group.method == SINGLE_TASK
            color = "k" if single else _style(methods.index(group))[0]
            data = [errors[group.label][j] for j in part]
            ax.plot([*angles, angles[0]], [*data, data[0]], "--" if single else "-", color=color, lw=1.4, label=group.label)
        ax.set_title(title, pad=24)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, max(1, len(labels))), fontsize=8)
    fig.suptitle(f"{dataset}: per-task test error (lower is better)")
    name = f"{dataset}-radar"
    png, svg = _save(fig, directory, name)
    caption = _radar_caption(dataset, keys, reference is not None)
    if relative:
        caption += f" The metrics have different units, so each is divided by {base}'s: 1 is {base}, below 1 is better."
    return Figure(name, f"{dataset}: per-task error", caption + note, png, svg)


def _radar_caption(dataset: str, keys: list[MetricKey], reference: bool) -> str:
    """What the radar plots: error as recorded or as 100 - metric, and how the tasks are ordered."""
    inverted = sorted({m for _, m in keys if METRICS[m].higher_is_better})
    kept = sorted({m for _, m in keys if not METRICS[m].higher_is_better})
    what = "; ".join([*(f"100 - {m}" for m in inverted), *(f"{m} as recorded" for m in kept)])
    by = "the single-task error" if reference else "the mean error over methods"
    split = "; split at the median into easy and hard tasks" if len(keys) > RADAR_SPLIT else ""
    return (
        f"{dataset}: test error per task ({what}; lower is better), mean over seeds; dashed: single-task. "
        f"Tasks run clockwise from the top, easy to hard by {by}{split}."
    )


def _pairwise_note(tasks: int) -> str:
    """Why there is no pairwise figure, for the caption of the radar that stands in for it."""
    return (
        f" No pairwise projections (paper Figure 4): {tasks} tasks make {tasks * (tasks - 1) // 2} pairs, "
        f"more than the {MAX_PAIRWISE_TASKS} tasks they are drawn for."
    )


def _per_epoch(group: Group, value: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean and std over seeds of `record[value][key]` (val metric or alpha) per epoch."""
    by_epoch: dict[int, list[float]] = {}
    for result in group.results:
        for rec in result.run.metrics:
            item = rec.get(value, {}).get(key)
            if isinstance(item, dict):
                item = item.get(value_metric(group, key))
            if item is not None:
                by_epoch.setdefault(int(rec["epoch"]), []).append(float(item))
    epochs = np.array(sorted(by_epoch))
    means = np.array([np.mean(by_epoch[e]) for e in epochs])
    stds = np.array([np.std(by_epoch[e], ddof=1) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])
    return epochs, means, stds


def value_metric(group: Group, task: str) -> str:
    return next(t["metrics"][0] for t in group.tasks if t["name"] == task)


def curves_figure(dataset: str, groups: list[Group], directory: Path) -> Figure:
    """Validation metric per epoch for every method (mean over seeds, shaded one std), a panel per task."""
    keys = _primary(groups[0])[:MAX_PAIR_TASKS]
    shown = [g for g in groups if not g.scales and g.method != GRID]
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.8 * rows), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys, strict=False):
        methods = [g for g in shown if g.method != SINGLE_TASK]
        for group in shown:
            single = group.method == SINGLE_TASK
            color = "k" if single else _style(methods.index(group))[0]  # the colours of the profile figure
            epochs, mean, std = _per_epoch(group, "val", key[0])
            if not len(epochs):
                continue
            ax.plot(epochs, mean, "--" if single else "-", color=color, lw=1.4, marker=".", label=group.label)
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.1 if single else 0.15)
        ax.set_title(f"{key[0]}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"validation {key[1]} (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{dataset}: validation curves")
    name = f"{dataset}-curves"
    png, svg = _save(fig, directory, name)
    caption = f"{dataset}: validation metric per epoch, mean over seeds (shaded: one std); grid points left out."
    total = len(_primary(groups[0]))
    if total > len(keys):
        caption += f" The first {len(keys)} of {total} tasks."
    return Figure(name, f"{dataset}: validation curves", caption, png, svg)


def _varies(group: Group) -> bool:
    values = [v for r in group.results for series in r.alphas.values() for v in series if not math.isnan(v)]
    return bool(values) and (max(values) - min(values)) > 1e-9


def alphas_figure(dataset: str, groups: list[Group], directory: Path) -> Figure | None:
    """Mean loss weight per task per epoch for every method whose weights change (a panel each)."""
    shown = [g for g in groups if not g.scales and g.method not in (GRID, SINGLE_TASK, UNIFORM) and _varies(g)]
    shown = shown[:MAX_ALPHA_PANELS]
    if not shown:
        return None
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    tasks = [t["name"] for t in groups[0].tasks]
    for ax, group in zip(axes.flat, shown, strict=False):
        for i, task in enumerate(tasks):
            color, _ = _style(i)
            epochs, mean, std = _per_epoch(group, "alphas", task)
            if len(epochs):
                ax.plot(epochs, mean, color=color, marker=".", label=task)
                ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_title(group.label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mean weight α")
        ax.grid(alpha=0.3)
        if len(tasks) <= 10:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle(f"{dataset}: loss-weight (α) trajectories")
    name = f"{dataset}-alphas"
    png, svg = _save(fig, directory, name)
    caption = f"{dataset}: each task's loss weight averaged over the steps of each epoch, mean over seeds."
    return Figure(name, f"{dataset}: α trajectories", caption, png, svg)


def build_figures(groups_by_dataset: dict[str, list[Group]], directory: Path) -> list[Figure]:
    """Every figure for every dataset with unscaled runs, written under `directory`."""
    figures: list[Figure] = []
    for dataset, groups in groups_by_dataset.items():
        unscaled = [g for g in groups if not g.scales]
        if not unscaled:
            continue
        if len(unscaled[0].tasks) == 2:
            figures.append(profile_figure(dataset, unscaled, directory))
        elif (count := len(unscaled[0].tasks)) > 2:
            if count <= MAX_PAIRWISE_TASKS:
                figures.append(pairwise_figure(dataset, unscaled, directory))
            note = _pairwise_note(count) if count > MAX_PAIRWISE_TASKS else ""
            figures.append(radar_figure(dataset, unscaled, directory, note=note))
        figures.append(curves_figure(dataset, unscaled, directory))
        alphas = alphas_figure(dataset, unscaled, directory)
        if alphas is not None:
            figures.append(alphas)
    return figures
