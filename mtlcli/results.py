"""Comparison tables over run directories (`mtl compare`)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal

import pandas as pd
from tabulate import tabulate

from mtlcli.runs import Run, find_runs, read_run

Format = Literal["table", "markdown", "csv", "json"]


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


def run_table(runs: list[Run]) -> dict[str, pd.DataFrame]:
    """One DataFrame per dataset: a row per run with its test metrics at the best-validation epoch."""
    tables: dict[str, pd.DataFrame] = {}
    by_dataset: dict[str, list[Run]] = {}
    for run in runs:
        by_dataset.setdefault(run.dataset, []).append(run)
    for dataset, group in by_dataset.items():
        rows = []
        for run in group:
            assert run.summary is not None
            row: dict[str, object] = {"method": run.method, "seed": run.seed, "epoch": run.summary["best_epoch"]}
            primary = []
            for task in run.recipe["tasks"]:
                for metric in task["metrics"]:
                    value = run.summary["test"][task["name"]][metric]
                    row[f"{task['name']} {metric}"] = value
                primary.append(run.summary["test"][task["name"]][task["metrics"][0]])
            row["mean"] = sum(primary) / len(primary)
            step = run.summary.get("step_seconds_median")
            row["ms/step"] = step * 1000 if step is not None else None
            row["run"] = run.path.name
            rows.append(row)
        frame = pd.DataFrame(rows)
        uniform = frame.loc[frame["method"] == "uniform", "ms/step"].dropna()
        if len(uniform):
            base = float(uniform.median())
            frame.insert(frame.columns.get_loc("ms/step") + 1, "x uniform", frame["ms/step"] / base)
        frame = frame.sort_values(["method", "seed", "run"], kind="stable").reset_index(drop=True)
        tables[dataset] = frame
    return tables


def render(tables: dict[str, pd.DataFrame], fmt: Format) -> str:
    if fmt == "json":
        payload = {name: json.loads(frame.to_json(orient="records")) for name, frame in tables.items()}
        return json.dumps(payload, indent=2) + "\n"
    if fmt == "csv":
        parts = []
        for name, frame in tables.items():
            buffer = io.StringIO()
            frame.insert(0, "dataset", name)
            frame.to_csv(buffer, index=False, float_format="%.6g")
            frame.pop("dataset")
            parts.append(buffer.getvalue())
        header, *rest = parts or [""]
        return header + "".join(p.split("\n", 1)[1] for p in rest)
    style = "github" if fmt == "markdown" else "simple"
    blocks = []
    for name, frame in tables.items():
        caption = f"{name}: test metrics (%) at the best-validation epoch"
        title = f"### {caption}" if fmt == "markdown" else caption
        body = tabulate(frame, headers="keys", tablefmt=style, showindex=False, floatfmt=".2f", missingval="-")
        blocks.append(f"{title}\n\n{body}\n")
    return "\n".join(blocks)
