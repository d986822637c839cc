"""`mtl compare` on 40 tasks (CelebA-like attributes, metric `error`): a summary on stdout, everything under --out.

The study (tests.fake_runs.write_many_task_study): task i has single-task error b_i + s for seed s, with
b_i = (7 i mod 40) + 1 (a permutation of 1..40); uniform b_i + 2 + s; mgda-ub b_i + 1 + s on tasks 0-29 and
b_i + 3 + s on tasks 30-39. Every expected number below is worked out from these numbers by hand.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data.registry import CELEBA_ATTRIBUTES
from mtlcli.report.figures import _error, difficulty_order, radar_errors
from mtlcli.report.tables import MAX_STDOUT_COLUMNS, Group, build_tables, groups_of
from mtlcli.results import Selection, load_runs, results_of
from tests.fake_runs import write_error_run, write_many_task_study, write_run

runner = CliRunner()
NAMES = list(CELEBA_ATTRIBUTES)
BASE = [(7 * i) % 40 + 1 for i in range(40)]
SHIFTS = {"single-task": [0.0] * 40, "uniform": [2.0] * 40, "mgda-ub": [1.0] * 30 + [3.0] * 10}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_many_task_study(tmp_path_factory.mktemp("many") / "runs", NAMES)


@pytest.fixture(scope="module")
def out(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The --out folder of the study (written once: figures take seconds)."""
    folder = tmp_path_factory.mktemp("report") / "out"
    result = runner.invoke(app, ["compare", str(study), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def invoke(*args: str) -> tuple[str, str]:
    result = runner.invoke(app, ["compare", *args])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def by_hand(method: str) -> dict[str, float]:
    """Mean error over tasks (mean and std over the two seeds) and Δm% against the single-task means."""
    seeds = [np.mean([b + d + s for b, d in zip(BASE, SHIFTS[method], strict=True)]) for s in (0, 1)]
    reference = [b + 0.5 for b in BASE]  # single-task mean over seeds 0 and 1
    deltas = [
        np.mean([(b + d + s - r) / r * 100 for b, d, r in zip(BASE, SHIFTS[method], reference, strict=True)])
        for s in (0, 1)
    ]
    return {
        "error": float(np.mean(seeds)),
        "error std": float(np.std(seeds, ddof=1)),
        "delta": float(np.mean(deltas)),
        "delta std": float(np.std(deltas, ddof=1)),
    }


def groups(root: Path) -> list[Group]:
    runs, _ = load_runs([root])
    results, _ = results_of(runs, Selection())
    (found,) = groups_of(results).values()
    return found


def test_the_fake_errors_are_what_the_docstring_says() -> None:
    assert sorted(BASE) == list(range(1, 41))
    assert by_hand("single-task")["error"] == pytest.approx(21.0)  # mean of 1..40 is 20.5, seeds add 0 and 1
    assert by_hand("uniform")["error"] == pytest.approx(23.0)
    assert by_hand("mgda-ub")["error"] == pytest.approx(22.5)  # + (30 × 1 + 10 × 3) / 40
    assert by_hand("uniform")["error std"] == pytest.approx(math.sqrt(0.5))


def test_stdout_shows_a_summary_without_the_task_names(study: Path) -> None:
    text, _ = invoke(str(study))
    assert not [name for name in NAMES if name in text]
    assert "celeba: methods (summary over 40 tasks)" in text and "celeba: methods\n" not in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.split()[:1] in (["uniform"], ["mgda-ub"])}
    assert "23.00 ± 0.71" in lines["uniform"] and "22.50 ± 0.71" in lines["mgda-ub"]
    # ranks among the multi-task rows: mgda-ub first on the 30 tasks where it is 1 point worse than single-task
    assert " 1.75 " in lines["uniform"] and " 1.25 " in lines["mgda-ub"]
    assert f"{by_hand('uniform')['delta']:.2f} ± {by_hand('uniform')['delta std']:.2f}" in lines["uniform"]
    note = next(line for line in text.splitlines() if line.startswith("Note:"))
    assert "40 task-metric columns" in note and "--out" in note and "--wide" in note


def test_summary_numbers_by_hand(study: Path) -> None:
    payload, err = invoke(str(study), "--format", "json")
    tables = json.loads(payload)
    assert set(tables) == {"celeba-summary"}
    assert "note: celeba-methods has 40 task-metric columns" in err
    rows = {r["method"]: r for r in tables["celeba-summary"]["rows"]}
    assert list(rows) == ["single-task", "uniform", "mgda-ub"]
    for method in rows:
        expected = by_hand(method)
        assert rows[method]["mean error"] == pytest.approx(expected["error"])
        assert rows[method]["mean error std"] == pytest.approx(expected["error std"])
        assert rows[method]["Δm% (metrics)"] == pytest.approx(expected["delta"], abs=1e-9)
        assert rows[method]["Δm% (metrics) std"] == pytest.approx(expected["delta std"])
        assert rows[method]["n"] == 2
    assert rows["uniform"]["mean rank"] == pytest.approx(1.75) and rows["mgda-ub"]["mean rank"] == pytest.approx(1.25)
    assert rows["single-task"]["mean rank"] is None  # not ranked (NaN)
    assert rows["mgda-ub"]["ms/step"] == pytest.approx(12.0) and rows["mgda-ub"]["× uniform"] == pytest.approx(1.2)
    assert "Δm% (tasks)" not in rows["uniform"]  # one metric per task: the same number as Δm% (metrics)


def test_wide_prints_every_task_column(study: Path) -> None:
    text, _ = invoke(str(study), "--wide")
    assert all(f"{name} error" in text for name in NAMES)
    assert "celeba: methods (summary over 40 tasks)" in text  # the summary as well
    frame = pd.read_csv(io.StringIO(invoke(str(study), "--wide", "--format", "csv")[0]))
    assert sum(c.endswith(" error") and not c.startswith("mean") for c in frame.columns) == 40


def test_out_writes_the_wide_table_in_every_format_and_the_report(out: Path) -> None:
    frame = pd.read_csv(out / "tables" / "celeba-methods.csv").set_index("method")
    assert [c for c in frame.columns if c.endswith(" error") and not c.startswith("mean")] == [f"{n} error" for n in NAMES]
    i = NAMES.index("Smiling")
    assert frame.loc["uniform", "Smiling error"] == pytest.approx(BASE[i] + 2.5)
    summary = pd.read_csv(out / "tables" / "celeba-summary.csv")
    assert list(summary.columns) == [
        "method", "n", "mean error", "mean error std", "Δm% (metrics)", "Δm% (metrics) std", "mean rank",
        "ms/step", "× uniform", "train min",
    ]  # fmt: skip
    assert all(name in (out / "tables" / "celeba-methods.md").read_text() for name in NAMES)
    tex = (out / "tables" / "celeba-methods.tex").read_text()
    assert all(name.replace("_", r"\_") in tex for name in NAMES)
    assert len(json.loads((out / "tables" / "celeba-methods.json").read_text())["rows"]) == 3
    page = (out / "report.html").read_text()
    assert all(name in page for name in NAMES)
    assert 'id="celeba-summary"' in page and 'id="celeba-methods" class="wide"' in page
    assert "780 pairs" in page  # why there is no pairwise figure
    radar = out / "figures" / "celeba-radar.png"
    assert radar.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and radar.stat().st_size > 20_000
    assert not (out / "figures" / "celeba-pairwise.png").exists()
    assert "error as recorded" in page and "100 - error" not in page


def test_radar_orders_tasks_from_easy_to_hard() -> None:
    errors = {"single-task": [5.0, 1.0, 30.0, 10.0], "uniform": [50.0, 2.0, 3.0, 4.0]}
    assert difficulty_order(errors, "single-task") == [1, 0, 3, 2]
    assert difficulty_order(errors) == [1, 3, 2, 0]  # means 27.5, 1.5, 16.5, 7
    errors["single-task"][0] = math.nan  # missing for the reference: the mean over what there is (50)
    assert difficulty_order(errors, "single-task") == [1, 3, 2, 0]
    assert difficulty_order({"a": [2.0, 1.0, 2.0]}) == [1, 0, 2]  # ties keep task order


def test_radar_of_the_study_orders_by_single_task_error(study: Path) -> None:
    shown = groups(study)
    keys = [(n, "error") for n in NAMES]
    errors = radar_errors(shown, keys)
    order = difficulty_order(errors, "single-task")
    assert [NAMES[i] for i in order] == [n for _, n in sorted(zip(BASE, NAMES, strict=True))]
    assert NAMES[order[0]] == "5_o_Clock_Shadow" and NAMES[order[-1]] == NAMES[BASE.index(40)]


def test_error_metrics_are_not_inverted(study: Path, tmp_path: Path) -> None:
    assert _error(12.0, ("Smiling", "error")) == 12.0 and _error(88.0, ("Smiling", "accuracy")) == 12.0
    errors = radar_errors(groups(study), [(n, "error") for n in NAMES])
    assert errors["single-task"] == pytest.approx([b + 0.5 for b in BASE])  # not 100 - error
    # the same study scored by accuracy first: the radar shows the same errors (100 - accuracy)
    names = NAMES[:12]
    write_many_task_study(tmp_path / "acc", names, metrics=("accuracy", "error"))
    accuracy = radar_errors(groups(tmp_path / "acc"), [(n, "accuracy") for n in names])
    base = [(7 * i) % 12 + 1 for i in range(12)]
    assert accuracy["uniform"] == pytest.approx([b + 2.5 for b in base])


def test_the_threshold_counts_columns_not_tasks_or_datasets(tmp_path: Path) -> None:
    assert MAX_STDOUT_COLUMNS == 12
    cases = {"twelve": (12, ("error",)), "thirteen": (13, ("error",)), "seven-by-two": (7, ("accuracy", "error"))}
    for name, (count, metrics) in cases.items():
        for seed in (0, 1):
            errors = {f"t{i}": 10.0 + i + seed for i in range(count)}
            write_error_run(tmp_path / name, f"u{seed}", method="uniform", seed=seed, errors=errors, metrics=metrics,
                            dataset="multimnist")
    keys = {name: set(json.loads(invoke(str(tmp_path / name), "--format", "json")[0])) for name in cases}
    assert keys == {
        "twelve": {"multimnist-methods"},
        "thirteen": {"multimnist-summary"},
        "seven-by-two": {"multimnist-summary"},  # 14 columns from 7 tasks
    }
    seven = json.loads(invoke(str(tmp_path / "seven-by-two"), "--format", "json")[0])["multimnist-summary"]["rows"][0]
    assert seven["mean accuracy"] == pytest.approx(100 - 13.5)  # each task's first metric: accuracy 90 - i - s


def test_timing_and_scale_tables_use_means_with_many_tasks(tmp_path: Path) -> None:
    names = NAMES[:14]
    errors = {n: float(i + 1) for i, n in enumerate(names)}  # mean 7.5
    write_error_run(tmp_path, "exact", method="mgda", seed=0, errors=errors, train_seconds=600, dataset="celeba")
    write_error_run(tmp_path, "ub", method="mgda-ub", seed=0, errors=errors, train_seconds=120, dataset="celeba")
    scaled = {n: e + (2.0 if i == 0 else 0.0) for i, (n, e) in enumerate(errors.items())}
    write_error_run(tmp_path, "ub-x10", method="mgda-ub", seed=0, errors=scaled, scales={names[0]: 10.0},
                    dataset="celeba")
    runs, _ = load_runs([tmp_path])
    results, _ = results_of(runs, Selection())
    tables = {t.key: t for t in build_tables(results, Selection())}
    timing = tables["celeba-timing"].frame.set_index("method")
    assert not [c for c in timing.columns if c.split()[0] in names]
    assert timing.loc["mgda-ub", "mean error"] == pytest.approx(7.5) and timing.loc["mgda-ub", "speed-up"] == 5.0
    scale = tables["celeba-scale"].frame.iloc[0]
    assert not [c for c in scale.index if names[0] in c]
    assert scale["max |Δ|"] == pytest.approx(2.0) and scale["mean |Δ|"] == pytest.approx(2.0 / 14)


def test_a_two_task_study_prints_as_before(tmp_path: Path) -> None:
    for method, left in (("single-task", 90.0), ("uniform", 88.0)):
        write_run(tmp_path, method, method=method, seed=0, test={"left": left, "right": 80.0})
    text, err = invoke(str(tmp_path))
    assert text == invoke(str(tmp_path), "--wide")[0]
    assert "summary" not in text and "Note:" not in text and "note:" not in err
    assert "left accuracy" in text and "right accuracy" in text
    assert set(json.loads(invoke(str(tmp_path), "--format", "json")[0])) == {"multifashion-methods"}
