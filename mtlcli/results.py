"""Results of finished runs, read back for `mtl compare`: selection rule, method labels, seed groups.

A run contributes the test metrics of the epochs its selection rule picks - the best mean validation
score (`best`, the default) or the mean of the last K epochs (`last:K`); the test split never decides
anything. Runs are grouped per dataset by method variant (the method name plus whatever recipe keys
differ between runs, e.g. `mgda (grads=loop)`) and by the tasks' loss scales; seeds of a group are
aggregated by the table builders in `mtlcli.report`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlcli.errors import MtlError
from mtlcli.methods import needs_independent_networks
from mtlcli.runs import Run, find_runs, read_run
from mtlcli.tasks import METRICS

MetricKey = tuple[str, str]  # (task, metric)

# Recipe keys that never distinguish methods: where the run (and its trackers' logs) went, which seed, which hardware.
IGNORED_KEYS = ("train.seed", "output.dir", "output.trackers", "data.dir", "train.device", "train.eval_batch_size")
SINGLE_TASK = "single-task"
UNIFORM = "uniform"
GRID = "grid"


GRID_SWEEP = "grid.json"  # `mtl train --method grid` writes its static runs into a sweep directory with this file


def method_of(run: Run) -> str:
    """The method a run stands for in tables: `grid` for the static runs of a grid-search sweep."""
    if run.method == GRID or (run.path.parent / GRID_SWEEP).is_file():
        return GRID
    return run.method


def load_runs(roots: list[Path]) -> tuple[list[Run], list[str]]:
    """Complete runs under `roots`, and a warning for each incomplete or damaged one."""
    runs, warnings = [], []
    for path in find_runs(roots):
        try:
            run = read_run(path)
        except Exception as exc:  # a damaged run must not hide the others
            warnings.append(f"skipped {path}: {getattr(exc, 'message', exc)}")
            continue
        if not run.complete:
            warnings.append(f"skipped {path}: incomplete (no summary.json; still running, or stopped)")
            continue
        runs.append(run)
    return runs, warnings


@dataclass(frozen=True)
class Selection:
    """Which epochs of a run are reported: `best` validation epoch, or the mean of the `last` K."""

    kind: str = "best"
    k: int = 1

    @classmethod
    def parse(cls, text: str) -> Selection:
        text = text.strip()
        if text == "best":
            return cls("best")
        if text == "last":
            return cls("last", 1)
        if text.startswith("last:"):
            try:
                k = int(text[5:])
            except ValueError:
                k = 0
            if k > 0:
                return cls("last", k)
        raise MtlError(f"--select {text!r}: expected best, last or last:K (K >= 1)", hint="e.g. --select last:5")

    def __str__(self) -> str:
        return "best" if self.kind == "best" else f"last:{self.k}"

    def describe(self) -> str:
        """The rule in words, for table captions."""
        if self.kind == "best":
            return "test metrics at the epoch with the best mean validation score (selection never sees test)"
        if self.k == 1:
            return "test metrics at the last epoch"
        return f"test metrics averaged over the last {self.k} epochs"

    def epochs(self, records: list[dict[str, Any]], tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The metric records this rule reports (one for `best`, up to K for `last:K`)."""
        if not records:
            return []
        if self.kind == "last":
            return records[-self.k :]
        best, best_score = records[0], -math.inf
        for rec in records:  # first epoch with the strictly highest score, as the trainer's best.pt
            score = validation_score(rec, tasks)
            if score > best_score:
                best, best_score = rec, score
        return [best]


def validation_score(record: dict[str, Any], tasks: list[dict[str, Any]]) -> float:
    """Mean over tasks of each task's first validation metric, negated when lower is better."""
    values = []
    for task in tasks:
        metric = task["metrics"][0]
        value = float(record["val"][task["name"]][metric])
        values.append(value if METRICS[metric].higher_is_better else -value)
    return sum(values) / len(values)


@dataclass
class RunResult:
    """One finished run as a table sees it: its label, loss scales and the selected metrics."""

    run: Run
    label: str
    scales: tuple[tuple[str, float], ...]
    epochs: list[int]
    test: dict[MetricKey, float]
    val: dict[MetricKey, float]
    val_score: float
    alphas: dict[str, list[float]] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return method_of(self.run)

    @property
    def dataset(self) -> str:
        return self.run.dataset

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def options(self) -> dict[str, Any]:
        return {k: v for k, v in self.run.recipe["method"].items() if k != "name"}

    @property
    def step_seconds(self) -> float | None:
        value = (self.run.summary or {}).get("step_seconds_median")
        return float(value) if value is not None else None

    @property
    def total_seconds(self) -> float | None:
        value = (self.run.summary or {}).get("total_seconds")
        return float(value) if value is not None else None

    @property
    def train_seconds(self) -> float | None:
        summary = self.run.summary or {}
        value = summary.get("train_seconds", summary.get("total_seconds"))
        return float(value) if value is not None else None


def metric_keys(recipe: dict[str, Any]) -> list[MetricKey]:
    return [(t["name"], m) for t in recipe["tasks"] for m in t["metrics"]]


def loss_scales(recipe: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    """(task, factor) for every task whose loss is scaled (loss_scale != 1)."""
    return tuple((t["name"], float(t.get("loss_scale", 1.0))) for t in recipe["tasks"] if float(t.get("loss_scale", 1.0)) != 1.0)


def describe_scales(scales: tuple[tuple[str, float], ...]) -> str:
    return ", ".join(f"{task} ×{factor:g}" for task, factor in scales) or "none"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.0.c': value} for a nested mapping/list."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list) and not all(isinstance(v, int | float) for v in node):
        out = {}
        for i, value in enumerate(node):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: node}


def format_value(value: Any) -> str:
    if isinstance(value, list):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _is_ignored(key: str) -> bool:
    if key in IGNORED_KEYS or key.startswith(("method.", "output.trackers.")):
        return True
    return key.startswith("tasks.") and key.endswith(".loss_scale")


# Runs written before recipe.yaml recorded every method option (mtl 0.1) ran with these defaults where the new
# ones, the published methods', differ: the cheaper level on z, weighted head gradients, LibMTL's EMA decay ...
DEFAULTS_BEFORE_PUBLISHED: dict[str, dict[str, Any]] = {
    "cagrad": {"level": "representation"},
    "nash-mtl": {"level": "representation"},
    "upgrad": {"level": "representation", "head_grads": "weighted"},
    "dualproj": {"level": "representation", "head_grads": "weighted"},
    "aligned-mtl": {"level": "representation", "reduction": "mean"},
    "fairgrad": {"level": "representation"},
    "gradvac": {"level": "representation"},
    "db-mtl": {"beta_sigma": 0.5},
    "imtl-g": {"head_grads": "weighted"},
    "imtl-g-exact": {"head_grads": "weighted"},
}


def method_options(run: Run) -> dict[str, Any]:
    """The run's method options with the method's defaults filled in (as given when it is not registered).

    A recipe.yaml that lacks some of the method's options was written before recipes recorded them all; its
    gaps are filled with the defaults of that time (`DEFAULTS_BEFORE_PUBLISHED`), what the run really used."""
    from mtlcli.methods import REGISTRY  # local: keeps `results` importable without the method registry loaded

    given = {k: v for k, v in run.recipe["method"].items() if k != "name"}
    info = REGISTRY.get(run.method)
    if info is None:
        return given
    if not set(info.options.model_fields) <= set(given):
        given = {**DEFAULTS_BEFORE_PUBLISHED.get(run.method, {}), **given}
    try:
        return info.options(**given).model_dump(mode="json")
    except Exception:  # options of another version of the method: compare them as written
        return given


def variant_labels(runs: list[Run]) -> dict[Path, str]:
    """A label per run: its method name plus the method options and recipe keys that differ.

    Method options (defaults filled in) are compared among runs of the same method
    (`mgda (grads=loop)`); other recipe keys across all runs of the dataset that have them
    (`uniform (optim.lr=0.01)`); seeds, devices, paths and loss scales never count. A run at another level
    than its method's published one is always labelled so (`cagrad (level=representation)`), even alone;
    the published level is never shown.
    """
    from mtlcli.methods import REGISTRY

    flat = {run.path: flatten(run.recipe) for run in runs}
    shared = set.intersection(*(set(f) for f in flat.values())) if flat else set()
    varying = sorted(k for k in shared if not _is_ignored(k) and len({repr(f[k]) for f in flat.values()}) > 1)
    labels = {}
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(method_of(run), []).append(run)
    for method, group in by_method.items():
        options = {run.path: method_options(run) for run in group}
        option_keys = sorted({k for o in options.values() for k in o})
        differing = [k for k in option_keys if len({repr(o.get(k)) for o in options.values()}) > 1]
        info = REGISTRY.get(method)
        for run in group:
            variant = info.variant(options[run.path]) if info is not None else None
            shown = [k for k in differing if k != "level"]  # the level shows only for a variant: below
            parts = [f"{k}={format_value(options[run.path].get(k, '-'))}" for k in shown]
            if variant is not None:
                parts.insert(0, variant)
            parts += [f"{k}={format_value(flat[run.path][k])}" for k in varying]
            labels[run.path] = f"{method} ({', '.join(parts)})" if parts else method
    return labels


def results_of(runs: list[Run], selection: Selection) -> tuple[list[RunResult], list[str]]:
    """Every run with its selected metrics; warnings for runs that cannot be read that way."""
    results, warnings = [], []
    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset, []).append(run)
    for group in by_dataset.values():
        labels = variant_labels(group)
        for run in group:
            result, problem = _result_or_problem(run, labels[run.path], selection)
            if result is not None:
                results.append(result)
            else:
                warnings.append(f"skipped {run.path}: metrics.jsonl lacks what compare needs ({problem})")
    warnings.extend(
        f"{r.run.path.name}: only {len(r.epochs)} epoch(s) for --select {selection}"
        for r in results
        if selection.kind == "last" and len(r.epochs) < selection.k
    )
    return results, warnings


def _result_or_problem(run: Run, label: str, selection: Selection) -> tuple[RunResult | None, str]:
    try:
        return _result(run, label, selection), ""
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def per_task_epochs(run: Run, selection: Selection) -> dict[str, list[dict[str, Any]]]:
    """The records each task reports. One choice for all tasks, except for independent networks (the
    single-task reference) under `best`: each network is then taken at its own task's best validation
    epoch, exactly as T separate trainings would be."""
    tasks = run.recipe["tasks"]
    if selection.kind == "best" and needs_independent_networks(method_of(run)):
        return {t["name"]: selection.epochs(run.metrics, [t]) for t in tasks}
    chosen = selection.epochs(run.metrics, tasks)
    return {t["name"]: chosen for t in tasks}


def _result(run: Run, label: str, selection: Selection) -> RunResult:
    tasks = run.recipe["tasks"]
    per_task = per_task_epochs(run, selection)
    chosen = [rec for records in per_task.values() for rec in records]
    if not chosen:
        raise ValueError("no epochs recorded")
    keys = metric_keys(run.recipe)

    def mean_of(split: str) -> dict[MetricKey, float]:
        return {(t, m): statistics.fmean(float(rec[split][t][m]) for rec in per_task[t]) for t, m in keys}

    alphas: dict[str, list[float]] = {t["name"]: [] for t in tasks}
    for rec in run.metrics:
        for name in alphas:
            alphas[name].append(float(rec.get("alphas", {}).get(name, math.nan)))
    return RunResult(
        run=run,
        label=label,
        scales=loss_scales(run.recipe),
        epochs=sorted({int(rec["epoch"]) for rec in chosen}),
        test=mean_of("test"),
        val=mean_of("val"),
        val_score=statistics.fmean(validation_score(rec, [t]) for t in tasks for rec in per_task[t["name"]]),
        alphas=alphas,
    )
