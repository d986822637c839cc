"""`mtl compare --published` and `--stl published`: the cited papers' rows beside the runs, and Δm% against a published
single-task row, labelled so it is never taken for Δm% against the runs' own single-task reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.report import published as published_module
from mtlcli.report.published import load_tables
from tests.fake_runs import write_run, write_study

runner = CliRunner()
NYU_TASKS = [
    {"name": "segmentation", "metrics": ["miou", "pixel_accuracy"], "loss": "pixel_cross_entropy"},
    {"name": "depth", "metrics": ["abs_error", "rel_error"], "loss": "masked_l1"},
    {"name": "normal", "metrics": ["mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"],
     "loss": "normal_cosine"},
]  # fmt: skip
NASH = "Δm% (metrics) vs published STL (Navon et al. 2022, Table 2)"


def invoke(*args: str) -> dict:
    result = runner.invoke(app, ["compare", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def nyuv2(tmp_path: Path) -> Path:
    """NYUv2-shaped runs (every metric of a task = 100 - the task's number, see tests.fake_runs.task_values)."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        test = {"segmentation": 60.0 + seed, "depth": 99.5, "normal": 75.0}
        write_run(root, f"st{seed}", method="single-task", seed=seed, test=test, tasks=NYU_TASKS, dataset="nyuv2")
        write_run(root, f"u{seed}", method="uniform", seed=seed, test=test, tasks=NYU_TASKS, dataset="nyuv2")
    return root


def test_published_rows_sit_beside_the_runs_cited_and_marked(nyuv2: Path) -> None:
    table = invoke(str(nyuv2), "--published")["nyuv2-methods"]
    rows = {r["method"]: r for r in table["rows"]}
    shipped = load_tables(["nyuv2"])["nyuv2"]
    expected = {t.label(r) for t in shipped for r in t.rows}
    assert len(expected) == 12 + 13 + 1 and expected <= set(rows)
    famo = rows["FAMO (Liu et al. 2023, Table 1) [published]"]
    assert famo["segmentation miou"] == 38.88 and famo["normal within_30"] == 68.98 and famo["published Δm%"] == -4.10
    assert famo["n"] == "-" and famo["mean rank"] is None and famo["ms/step"] is None
    assert rows["STL (Navon et al. 2022, Table 2) [published]"]["depth abs_error"] == 0.6754
    assert rows["uniform"]["n"] == 2 and rows["uniform"]["mean rank"] == 1.0  # ranks: runs only
    assert "https://arxiv.org/abs/2306.03792" in table["caption"] and "[published]" in table["caption"]
    assert "Δm% (metrics)" in table["columns"]  # against the runs' single-task, as without --published
    plain = invoke(str(nyuv2))["nyuv2-methods"]
    assert not any("[published]" in r["method"] for r in plain["rows"]) and "published Δm%" not in plain["columns"]


def test_stl_published_names_its_reference_and_reproduces_the_papers_delta_m(nyuv2: Path) -> None:
    table = invoke(str(nyuv2), "--published", "--stl", "published")["nyuv2-methods"]
    assert NASH in table["columns"] and "Δm% (metrics)" not in table["columns"]
    assert "published single-task row of Navon et al. 2022, Table 2 (--stl published)" in table["caption"]
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["FAMO (Liu et al. 2023, Table 1) [published]"][NASH] == pytest.approx(-4.10, abs=0.01)
    assert rows["STL (Liu et al. 2023, Table 1) [published]"][NASH] == pytest.approx(0.0, abs=1e-12)
    alone = invoke(str(nyuv2), "--stl", "published:famo")["nyuv2-methods"]  # Δm% vs FAMO's row, no published rows
    assert "Δm% (metrics) vs published STL (Liu et al. 2023, Table 1)" in alone["columns"]
    assert not any("[published]" in r["method"] for r in alone["rows"])


@pytest.fixture
def papers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A published table for the hand-calculated study of tests.fake_runs.write_study (left: accuracy + error)."""
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "multifashion.yaml").write_text(
        "dataset: multifashion\ncolumns: [left accuracy, left error, right accuracy]\ntables:\n"
        "  - {key: p, cite: P et al. 2024, title: T, table: Table 9, url: https://arxiv.org/abs/0, read_from: r,\n"
        "     protocol: q, rows: [{name: STL, single_task: true, values: [90, 10, 80]},\n"
        "                         {name: Ours, method: mgda-ub, values: [95, 5, 80], delta_m: -19.0}]}\n"
    )
    monkeypatch.setattr(published_module, "PAPERS_DIR", folder)
    return folder


def test_delta_m_against_the_published_stl_by_hand(tmp_path: Path, papers: Path) -> None:
    """uniform's seeds give 88/12/78 and 90/10/80 at their best epochs; the published STL is 90/10/80, so
    Δm% (metrics) = mean over seeds of mean(-(a - 90)/90, (e - 10)/10, -(r - 80)/80) x 100
    = mean(mean(2/90, 2/10, 2/80), 0) x 100 = 4.1204; (tasks) = mean(mean(2/90, 2/10), 2/80) / 2 x 100 = 3.4028."""
    study = write_study(tmp_path / "runs")
    column = "Δm% (metrics) vs published STL (P et al. 2024, Table 9)"
    rows = {r["method"]: r for r in invoke(str(study), "--published", "--stl", "published")["multifashion-methods"]["rows"]}
    assert rows["uniform"][column] == pytest.approx((2 / 90 + 2 / 10 + 2 / 80) / 3 * 100 / 2)
    tasks = column.replace("(metrics)", "(tasks)")
    assert rows["uniform"][tasks] == pytest.approx(((2 / 90 + 2 / 10) / 2 + 2 / 80) / 2 * 100 / 2)
    ours = rows["Ours (P et al. 2024, Table 9) [published]"]
    assert ours[column] == pytest.approx((-5 / 90 - 5 / 10 + 0) / 3 * 100) and ours["published Δm%"] == -19.0
    # against the runs' single-task (91/9/81) instead, as by default: a different number in a different column
    # (seeds 3 and 1 below it on every metric: mean((3 + 1) / 2 x (1/91, 1/9, 1/81)) x 100 = 8.963)
    runs_rows = {r["method"]: r for r in invoke(str(study), "--published")["multifashion-methods"]["rows"]}
    assert runs_rows["uniform"]["Δm% (metrics)"] == pytest.approx((2 / 91 + 2 / 9 + 2 / 81) / 3 * 100)
    assert column not in runs_rows["uniform"]


def test_unknown_table_is_one_line_and_a_dataset_without_published_stl_warns(tmp_path: Path, papers: Path) -> None:
    study = write_study(tmp_path / "runs")
    result = runner.invoke(app, ["compare", str(study), "--stl", "published:nope"])
    assert result.exit_code == 1 and "no published table 'nope'" in result.output and "Traceback" not in result.output
    (papers / "multifashion.yaml").unlink()
    result = runner.invoke(app, ["compare", str(study), "--stl", "published", "--format", "json"])
    assert result.exit_code == 0 and "multifashion: no published single-task numbers per metric" in result.stderr
    table = json.loads(result.stdout)["multifashion-methods"]
    assert not any(c.startswith("Δm%") for c in table["columns"]) and "--stl published" in table["caption"]


def test_celeba_summary_carries_the_published_averages(tmp_path: Path) -> None:
    """CelebA's papers print no per-attribute table: MGDA-UB's rows fill the summary's `mean error`, FAMO's only the
    published Δm% (over F1, which the caption says); `--stl published` has no per-metric row there, so no Δm%."""
    from mtlcli.data.registry import CELEBA_ATTRIBUTES
    from tests.fake_runs import write_many_task_study

    study = write_many_task_study(tmp_path / "runs", list(CELEBA_ATTRIBUTES))
    result = runner.invoke(app, ["compare", str(study), "--published", "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["celeba-summary"]
    rows = {r["method"]: r for r in summary["rows"]}
    assert rows["MGDA-UB (Sener & Koltun 2018, Table 1) [published]"]["mean error"] == 8.25
    assert rows["Single task (Sener & Koltun 2018, Table 1) [published]"]["mean error"] == 8.77
    famo = rows["FAMO (Liu et al. 2023, Table 3) [published]"]
    assert famo["published Δm%"] == 1.21 and famo["mean error"] is None and famo["Δm% (metrics)"] is None
    assert rows["uniform"]["n"] == 2 and "over per-attribute F1" in summary["caption"]
    result = runner.invoke(app, ["compare", str(study), "--stl", "published", "--format", "json"])
    assert result.exit_code == 0 and "celeba: no published single-task numbers per metric" in result.stderr
