"""The shipped published tables (mtlcli/report/papers/*.yaml): valid, finite, mapped onto mtl's metrics, and each
paper's printed Δm% reproduced by mtl's own Δm% from the printed metrics (which also checks the transcription)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from mtlcli.data import registry
from mtlcli.data.registry import DatasetSpec, TaskSpec
from mtlcli.errors import MtlError
from mtlcli.names import METRIC_NAMES
from mtlcli.report.published import (
    PAPERS_DIR,
    Published,
    load_tables,
    parse_stl,
    read_document,
    tables_of,
)
from mtlcli.report.tables import delta_m
from mtlcli.results import Selection, load_runs, results_of
from mtlcli.tasks import METRICS
from tests.fake_runs import write_run

FILES = sorted(PAPERS_DIR.glob("*.yaml"))
# |printed Δm% - Δm% from the printed metrics| allowed by the printed digits (QM9 in FAMO: two significant digits)
TOLERANCE = {"nyuv2": 0.02, "cityscapes-mtan": 0.12, "qm9": 0.3, ("qm9", "famo"): 2.0}


def spec_for(document: dict) -> DatasetSpec:
    """A registry entry with exactly the file's columns, so files of datasets not registered yet are checked too."""
    tasks: dict[str, list[str]] = {}
    for name in document.get("columns", []):
        task, _, metric = name.partition(" ")
        tasks.setdefault(task, []).append(metric)
    for table in document["tables"]:
        for row in table["rows"]:
            for metric in row.get("means", {}):
                tasks.setdefault("any", []).append(metric)
    return DatasetSpec(
        name=document["dataset"], description="", tasks=tuple(TaskSpec(t, 1, metrics=tuple(m)) for t, m in tasks.items()),
        channels=1, default_size=1, min_size=1, max_size=1, mean=(0.0,), std=(1.0,), default_encoder="", how_to_get="",
    )  # fmt: skip


def test_the_four_benchmarks_ship() -> None:
    assert {read_document(p)["dataset"] for p in FILES} == {"nyuv2", "cityscapes-mtan", "qm9", "celeba"}
    pyproject = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    assert '"mtlcli.report" = ["papers/*.yaml"]' in pyproject  # shipped in the wheel


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_file_is_valid_finite_and_cited(path: Path) -> None:
    document = read_document(path)
    tables = tables_of(path, spec_for(document), document)
    assert {t.key for t in tables} >= {"famo"}
    for table in tables:
        assert table.url.startswith("https://arxiv.org/abs/") and table.table.startswith("Table ")
        assert table.cite and table.read_from and table.protocol
        for row in table.rows:
            numbers = [*row.values.values(), *row.means.values(), *([row.delta_m] if row.delta_m is not None else [])]
            assert numbers and all(math.isfinite(v) for v in numbers)
            for _, metric in row.values:
                assert metric in METRIC_NAMES and isinstance(METRICS[metric].higher_is_better, bool)
            assert all(v > 0 for v in row.values.values())  # errors, accuracies and angles alike


def test_registered_datasets_load_with_their_registered_metrics_and_unregistered_ones_are_skipped() -> None:
    tables = load_tables()
    assert {"nyuv2", "celeba"} <= set(tables)  # cityscapes-mtan and qm9 too, once the registry has them
    assert [t.key for t in tables["nyuv2"]] == ["nash-mtl", "famo", "fairgrad"]
    assert load_tables(["celeba"]).keys() == {"celeba"}
    for dataset, found in tables.items():
        spec = registry.get(dataset)
        for row in (r for t in found for r in t.rows):
            assert all(metric in spec.task(task).metrics for task, metric in row.values)
            assert all(any(m in t.metrics for t in spec.tasks) for m in row.means)


@pytest.mark.parametrize("path", [p for p in FILES if read_document(p).get("columns")], ids=lambda p: p.stem)
def test_printed_delta_m_follows_from_the_printed_metrics(path: Path) -> None:
    """mtl's Δm% (over all metrics, Maninis et al.) of each printed row against the table's single-task row equals
    the paper's own Δm% within the rounding of the printed digits; the one row a note flags does not."""
    document = read_document(path)
    tables = tables_of(path, spec_for(document), document)
    first_stl = next(t.single_task for t in tables if t.single_task is not None)
    checked = 0
    for table in tables:
        stl = table.single_task or first_stl
        tolerance = TOLERANCE.get((document["dataset"], table.key), TOLERANCE[document["dataset"]])
        for row in table.rows:
            if row.delta_m is None:
                continue
            ours = delta_m(row.values, stl.values)[0]
            if row.note:
                assert abs(ours - row.delta_m) > 0.1, row.name
            else:
                assert ours == pytest.approx(row.delta_m, abs=tolerance), (table.key, row.name)
            checked += 1
    assert checked >= 10


def write_tables(folder: Path, text: str, name: str = "multifashion.yaml") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return folder


TABLE = """
dataset: multifashion
columns: [left accuracy, right accuracy]
tables:
  - {key: k, cite: A et al. 2020, title: T, table: Table 1, url: https://arxiv.org/abs/1, read_from: here, protocol: p,
     rows: [{name: STL, single_task: true, values: [90.0, 80.0]}, {name: X, method: uniform, values: [88, 81], delta_m: 0.5}]}
"""


def test_a_file_for_an_unknown_dataset_is_skipped_without_error(tmp_path: Path) -> None:
    folder = write_tables(tmp_path / "p", TABLE)
    write_tables(folder, TABLE.replace("multifashion", "not-yet-a-dataset"), "later.yaml")
    tables = load_tables(directory=folder)
    assert list(tables) == ["multifashion"] and tables["multifashion"][0].rows[1].values[("left", "accuracy")] == 88.0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (TABLE.replace("right accuracy]", "middle accuracy]"), "'middle accuracy' is not a task metric of multifashion"),
        (TABLE.replace("right accuracy]", "right f1]"), "'right f1' is not a task metric of multifashion"),
        (TABLE.replace("[88, 81]", "[88, .nan]"), "is not a finite number"),
        (TABLE.replace("[88, 81]", "[88]"), "1 values for 2 columns"),
        (TABLE.replace("method: uniform", "method: no-such"), "method 'no-such' is not one of mtl's"),
        (TABLE.replace("url: https://arxiv.org/abs/1, ", ""), "text fields"),
    ],
)
def test_a_bad_file_is_one_clear_error(tmp_path: Path, bad: str, message: str) -> None:
    with pytest.raises(MtlError, match=message.replace("(", r"\(")):
        load_tables(directory=write_tables(tmp_path / "p", bad))


def test_parse_stl_and_the_reference_row(tmp_path: Path) -> None:
    assert parse_stl("runs") is None and parse_stl("published") == "" and parse_stl("published:famo") == "famo"
    for bad in ("published:", "paper", ""):
        with pytest.raises(MtlError, match="--stl"):
            parse_stl(bad)
    tables = load_tables(directory=write_tables(tmp_path / "p", TABLE))
    found = Published(tables, stl="").reference("multifashion")
    assert found is not None and found[1].name == "STL" and found[0].source == "A et al. 2020, Table 1"
    assert Published(tables, stl="other").reference("multifashion") is None
    assert Published(tables).reference("multifashion") is None and Published(tables).rows("multifashion") == []


def test_select_last_10_is_the_papers_mean_over_the_last_10_epochs(tmp_path: Path) -> None:
    """`--select last:10`: each test metric averaged over the last 10 epochs (Nash-MTL Appendix B; the authors'
    trainers save every epoch's test metrics and leave the mean to the reader). Δm% is affine in the metrics, so the
    Δm% of those means equals the mean of the per-epoch Δm% (the other reading of 'averaged over the last 10')."""
    run = write_run(tmp_path / "runs", "u", method="uniform", seed=0, test={"left": 80, "right": 70})
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines = []
    for epoch in range(1, 13):
        record = dict(records[-1], epoch=epoch)
        record["test"] = {"left": {"accuracy": 60.0 + epoch**1.5}, "right": {"accuracy": 50.0 + 3 * epoch % 7}}
        record["val"] = {"left": {"accuracy": 50.0}, "right": {"accuracy": 50.0}}
        lines.append(json.dumps(record))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (result,), _ = results_of(load_runs([tmp_path / "runs"])[0], Selection.parse("last:10"))
    last = [json.loads(line)["test"] for line in lines[-10:]]
    assert result.epochs == list(range(3, 13))
    expected = {(t, "accuracy"): statistics.fmean(r[t]["accuracy"] for r in last) for t in ("left", "right")}
    assert result.test == pytest.approx(expected)
    stl = {("left", "accuracy"): 90.0, ("right", "accuracy"): 80.0}
    per_epoch = [delta_m({(t, "accuracy"): r[t]["accuracy"] for t in ("left", "right")}, stl)[0] for r in last]
    assert delta_m(result.test, stl)[0] == pytest.approx(statistics.fmean(per_epoch))
