"""`mtl compare` through the CLI: every format parses back; --out writes tables, figures and report.html."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.report import figures
from tests.fake_runs import write_run, write_study

runner = CliRunner()


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path / "runs")


def invoke(*args: str) -> str:
    result = runner.invoke(app, ["compare", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_json_parses_back_with_captions(study: Path) -> None:
    payload = json.loads(invoke(str(study), "--format", "json"))
    assert set(payload) == {"multifashion-methods", "multifashion-grid", "multifashion-scale"}
    methods = payload["multifashion-methods"]
    assert "best mean validation" in methods["caption"]
    uniform = next(r for r in methods["rows"] if r["method"] == "uniform")
    assert uniform["left accuracy"] == pytest.approx(89.0) and uniform["× uniform"] == pytest.approx(1.0)


def test_csv_parses_back_with_pandas(study: Path) -> None:
    frame = pd.read_csv(io.StringIO(invoke(str(study), "--format", "csv")))
    methods = frame[frame["table"] == "multifashion-methods"].set_index("method")
    assert methods.loc["mgda-ub", "right accuracy"] == pytest.approx(82.0)
    assert methods.loc["uniform", "left accuracy std"] == pytest.approx(2**0.5, rel=1e-5)
    assert set(frame["table"]) == {"multifashion-methods", "multifashion-grid", "multifashion-scale"}


def test_markdown_latex_and_table(study: Path) -> None:
    markdown = invoke(str(study), "--format", "markdown")
    assert "| method" in markdown and "89.00 ± 1.41" in markdown and "### multifashion: methods" in markdown
    latex = invoke(str(study), "--format", "latex")
    assert latex.count(r"\begin{tabular}") == 3 and r"\caption{" in latex and r"89.00 $\pm$ 1.41" in latex
    assert r"\_" not in latex.split(r"\begin{tabular}")[0].replace(r"\_", "")  # nothing unescaped breaks
    table = invoke(str(study))
    assert "Δm% (metrics)" in table and "mean rank" in table


def test_runs_flag_adds_a_row_per_run(study: Path) -> None:
    payload = json.loads(invoke(str(study), "--format", "json", "--runs"))
    rows = payload["multifashion-runs"]["rows"]
    uniform = sorted((r["seed"], r["left accuracy"]) for r in rows if r["method"] == "uniform")
    assert uniform == [(0, 88.0), (1, 90.0)]


def test_select_last_k_changes_the_numbers(study: Path) -> None:
    best = json.loads(invoke(str(study), "--format", "json"))["multifashion-methods"]["rows"]
    last = json.loads(invoke(str(study), "--format", "json", "--select", "last:2"))["multifashion-methods"]
    assert "last 2 epochs" in last["caption"]
    pick = {r["method"]: r["left accuracy"] for r in best}
    assert {r["method"]: r["left accuracy"] for r in last["rows"]}["uniform"] == pytest.approx(pick["uniform"] + 2.5)


def test_bad_select_and_no_runs_are_one_line_errors(study: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", str(study), "--select", "test"])
    assert result.exit_code == 1 and "Error:" in result.output and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["compare", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no finished runs" in result.output
    (tmp_path / "afile").write_text("x")
    result = runner.invoke(app, ["compare", str(study), "--out", str(tmp_path / "afile")])
    assert result.exit_code == 1 and "is a file" in result.output


def assert_real_image(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    width, height = struct.unpack(">II", data[16:24])
    assert width > 200 and height > 200
    pixels = mpimg.imread(path)
    assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 20  # not a single colour


def test_out_writes_tables_figures_and_a_self_contained_report(study: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    invoke(str(study), "--out", str(out), "--format", "markdown")
    assert (out / "tables.md").is_file()
    runs = pd.read_csv(out / "tables" / "multifashion-runs.csv")
    assert len(runs) == 10 and set(runs["epochs"].astype(str)) == {"2"}  # every finished run, its best epoch
    for key in ("multifashion-methods", "multifashion-grid", "multifashion-scale"):
        assert pd.read_csv(out / "tables" / f"{key}.csv").shape[0] >= 1
        assert json.loads((out / "tables" / f"{key}.json").read_text())["rows"]
        assert r"\begin{tabular}" in (out / "tables" / f"{key}.tex").read_text()
        assert "|" in (out / "tables" / f"{key}.md").read_text()
    for name in ("multifashion-profile", "multifashion-curves", "multifashion-alphas"):
        assert_real_image(out / "figures" / f"{name}.png")
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "multifashion: methods" in page and "<table" in page and "89.00 ± 1.41" in page
    assert "src=\"http" not in page and "<script" not in page  # self-contained


def test_more_than_two_tasks_get_pairwise_and_radar_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "MAX_PAIR_TASKS", 3)  # fewer panels: the same code, faster
    names = [f"t{i}" for i in range(12)]
    tasks = [{"name": n, "metrics": ["accuracy"]} for n in names]
    for seed in (0, 1):
        for method, base in (("single-task", 80.0), ("uniform", 75.0), ("mgda-ub", 78.0)):
            test = {n: base + i + seed for i, n in enumerate(names)}
            name = f"{method}{seed}"
            write_run(tmp_path / "runs", name, method=method, seed=seed, test=test, tasks=tasks, dataset="multimnist")
    out = tmp_path / "out"
    invoke(str(tmp_path / "runs"), "--out", str(out))
    assert_real_image(out / "figures" / "multimnist-pairwise.png")
    assert_real_image(out / "figures" / "multimnist-radar.png")
    assert not (out / "figures" / "multimnist-profile.png").exists()
    frame = pd.read_csv(out / "tables" / "multimnist-methods.csv").set_index("method")
    # uniform is 5 points below single-task on every task: Δm = mean_i 5 / (80.5 + i) * 100
    expected = np.mean([5 / (80.5 + i) * 100 for i in range(12)])
    assert frame.loc["uniform", "Δm% (metrics)"] == pytest.approx(expected, rel=1e-5)


def test_lower_is_better_metrics_flip_the_profile_axes(tmp_path: Path) -> None:
    from mtlcli.report.figures import profile_figure
    from mtlcli.report.tables import groups_of
    from mtlcli.results import Selection, load_runs, results_of

    tasks = [{"name": "left", "metrics": ["error"]}, {"name": "right", "metrics": ["error"]}]
    for method, acc in (("single-task", 80.0), ("uniform", 70.0), ("mgda-ub", 75.0)):
        write_run(tmp_path / "runs", method, method=method, seed=0, test={"left": acc, "right": acc}, tasks=tasks)
    runs, _ = load_runs([tmp_path / "runs"])
    results, _ = results_of(runs, Selection())
    (groups,) = groups_of(results).values()
    figure = profile_figure("multifashion", groups, tmp_path / "fig")
    assert_real_image(figure.png)
    frame = pd.read_csv(io.StringIO(invoke(str(tmp_path / "runs"), "--format", "csv"))).set_index("method")
    # error 30 vs single-task 20: lower is better, so Δm = +(30 - 20) / 20 * 100
    assert frame.loc["uniform", "Δm% (metrics)"] == pytest.approx(50.0)
    assert frame.loc["mgda-ub", "mean rank"] == pytest.approx(1.0)
