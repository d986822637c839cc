"""compare's tables against hand calculation on run directories written with known numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mtlcli.errors import MtlError
from mtlcli.report.tables import DELTA_METRICS, DELTA_TASKS, MEAN_RANK, build_tables, delta_m
from mtlcli.results import Selection, load_runs, results_of
from tests.fake_runs import LEFT2, TRAP, write_run, write_study


def tables_for(root: Path, select: str = "best") -> dict[str, object]:
    runs, warnings = load_runs([root])
    selection = Selection.parse(select)
    results, _ = results_of(runs, selection)
    return {t.key: t for t in build_tables(results, selection)} | {"warnings": warnings}


def row(table, method: str) -> dict[str, object]:
    frame = table.frame
    match = frame[frame["method"] == method]
    assert len(match) == 1, list(frame["method"])
    return match.iloc[0].to_dict()


def test_methods_table_aggregates_seeds_at_the_best_validation_epoch(tmp_path: Path) -> None:
    tables = tables_for(write_study(tmp_path))
    assert any("unfinished" in w and "incomplete" in w for w in tables["warnings"])
    table = tables["multifashion-methods"]
    assert list(table.frame["method"])[:2] == ["single-task", "uniform"]
    uniform = row(table, "uniform")
    assert uniform["n"] == 2  # the unfinished run is not counted
    assert uniform["left accuracy"] == pytest.approx(89.0)
    assert uniform["left accuracy std"] == pytest.approx(math.sqrt(2.0))
    assert uniform["left error"] == pytest.approx(11.0)
    assert uniform["right accuracy"] == pytest.approx(79.0)
    assert uniform["mean accuracy"] == pytest.approx((89.0 + 79.0) / 2)
    mgda = row(table, "mgda-ub")
    assert mgda["n"] == 2  # the run with a scaled loss is not one of its seeds
    assert (mgda["left accuracy"], mgda["right accuracy"]) == pytest.approx((92.0, 82.0))
    assert mgda["ms/step"] == pytest.approx(13.0)
    assert mgda["× uniform"] == pytest.approx(1.3)
    assert "caption" and "best mean validation" in table.caption and "never sees test" in table.caption


def test_delta_m_both_definitions_by_hand(tmp_path: Path) -> None:
    table = tables_for(write_study(tmp_path))["multifashion-methods"]
    # reference (single-task means): left accuracy 91, left error 9, right accuracy 81
    per_seed = []
    for left, right in ((88, 78), (90, 80)):
        acc_l = -(left - 91) / 91 * 100
        err_l = ((100 - left) - 9) / 9 * 100
        acc_r = -(right - 81) / 81 * 100
        per_seed.append(((acc_l + err_l + acc_r) / 3, ((acc_l + err_l) / 2 + acc_r) / 2))
    uniform = row(table, "uniform")
    assert uniform[DELTA_METRICS] == pytest.approx((per_seed[0][0] + per_seed[1][0]) / 2)
    assert uniform[DELTA_TASKS] == pytest.approx((per_seed[0][1] + per_seed[1][1]) / 2)
    assert uniform[DELTA_METRICS] != pytest.approx(uniform[DELTA_TASKS])  # the definitions differ here
    assert uniform[f"{DELTA_METRICS} std"] == pytest.approx(abs(per_seed[0][0] - per_seed[1][0]) / math.sqrt(2))
    single = row(table, "single-task")
    assert single[DELTA_METRICS] == pytest.approx(0.0, abs=1e-9) and single[DELTA_TASKS] == pytest.approx(0.0, abs=1e-9)
    assert "Nash-MTL" in table.caption and "LibMTL" in table.caption


def test_delta_m_signs_follow_the_metric_direction() -> None:
    reference = {("a", "accuracy"): 50.0, ("a", "error"): 50.0, ("b", "accuracy"): 80.0}
    better = {("a", "accuracy"): 55.0, ("a", "error"): 45.0, ("b", "accuracy"): 88.0}
    metrics, tasks = delta_m(better, reference)
    assert metrics == pytest.approx(-(10 + 10 + 10) / 3)
    assert tasks == pytest.approx(-((10 + 10) / 2 + 10) / 2)
    assert all(math.isnan(v) for v in delta_m({("a", "accuracy"): 1.0}, {("a", "accuracy"): 0.0}))


def test_mean_rank_and_grid_selected_on_validation(tmp_path: Path) -> None:
    table = tables_for(write_study(tmp_path))["multifashion-methods"]
    grid = next(m for m in table.frame["method"] if str(m).startswith("grid"))
    assert grid == "grid (weights=0.5/0.5) [best of 3 on val]"  # not 0.8/0.2, the best on test
    assert row(table, "mgda-ub")[MEAN_RANK] == pytest.approx(1.0)
    assert row(table, "uniform")[MEAN_RANK] == pytest.approx((2.5 + 2.5 + 3) / 3)
    assert row(table, grid)[MEAN_RANK] == pytest.approx((2.5 + 2.5 + 2) / 3)
    assert math.isnan(row(table, "single-task")[MEAN_RANK])
    points = tables_for(tmp_path)["multifashion-grid"].frame
    assert list(points["grid point"]) == [f"grid (weights={w})" for w in ("0.8/0.2", "0.5/0.5", "0.2/0.8")]
    assert list(points["val score"]) == pytest.approx([72.0, 75.0, 70.0])
    assert list(points["left accuracy"]) == pytest.approx([95.0, 89.0, 85.0])


@pytest.mark.parametrize(
    ("select", "shift"), [("last:2", TRAP / 2), ("last", TRAP), ("last:1", TRAP), ("last:3", (-10 + TRAP) / 3)]
)
def test_last_k_selection_averages_the_last_epochs(tmp_path: Path, select: str, shift: float) -> None:
    table = tables_for(write_study(tmp_path), select)["multifashion-methods"]
    assert row(table, "uniform")["left accuracy"] == pytest.approx(89.0 + shift)
    assert "last" in table.caption


@pytest.mark.parametrize("bad", ["worst", "last:0", "last:x", "test"])
def test_selection_rule_errors(bad: str) -> None:
    with pytest.raises(MtlError, match="--select"):
        Selection.parse(bad)


def test_scale_invariance_table(tmp_path: Path) -> None:
    table = tables_for(write_study(tmp_path))["multifashion-scale"]
    (only,) = table.frame.to_dict("records")
    assert only["method"] == "mgda-ub" and only["scaling"] == "left ×10" and only["n base"] == 2
    # scaled 90.5 / 83 against unscaled means 92 / 82
    assert only["|Δ| left accuracy"] == pytest.approx(1.5)
    assert only["|Δ| left error"] == pytest.approx(1.5)
    assert only["|Δ| right accuracy"] == pytest.approx(1.0)
    assert only["mean |Δ|"] == pytest.approx(4.0 / 3)


def test_timing_table_exact_vs_representation(tmp_path: Path) -> None:
    acc = {"left": 90, "right": 80}
    loop, batched = {"grads": "loop"}, {"grads": "batched"}
    write_run(tmp_path, "loop", method="mgda", seed=0, test=acc, options=loop, train_seconds=600, step_seconds=0.03)
    write_run(tmp_path, "batch", method="mgda", seed=0, test=acc, options=batched, train_seconds=300, step_seconds=0.02)
    write_run(tmp_path, "ub0", method="mgda-ub", seed=0, test=acc, train_seconds=120, step_seconds=0.012)
    write_run(tmp_path, "ub1", method="mgda-ub", seed=1, test={"left": 92, "right": 80}, train_seconds=180, step_seconds=0.014)
    write_run(tmp_path, "u0", method="uniform", seed=0, test=acc, train_seconds=100, step_seconds=0.01)
    tables = tables_for(tmp_path)
    assert "multifashion-scale" not in tables and "multifashion-grid" not in tables
    frame = tables["multifashion-timing"].frame.set_index("method")
    assert list(frame.index) == ["mgda (grads=batched)", "mgda (grads=loop)", "mgda-ub"]
    assert frame.loc["mgda-ub", "train min"] == pytest.approx(150 / 60)
    assert frame.loc["mgda-ub", "total min"] == pytest.approx((150 + 3) / 60)  # + 1 s of evaluation per epoch
    assert frame.loc["mgda-ub", "speed-up"] == pytest.approx(300 / 150)
    assert frame.loc["mgda (grads=loop)", "speed-up"] == pytest.approx(0.5)
    assert frame.loc["mgda-ub", "step speed-up"] == pytest.approx(0.02 / 0.013)
    assert frame.loc["mgda-ub", "left accuracy"] == pytest.approx(91.0)
    assert frame.loc["mgda (grads=loop)", "gradients"] == "shared parameters (exact)"
    assert "Table 2" in tables["multifashion-timing"].caption


def test_no_single_task_means_no_delta_m(tmp_path: Path) -> None:
    write_run(tmp_path, "u0", method="uniform", seed=0, test={"left": 90, "right": 80}, tasks=LEFT2)
    table = tables_for(tmp_path)["multifashion-methods"]
    assert DELTA_METRICS not in table.frame.columns and "no Δm%" in table.caption


def test_labels_fill_method_defaults_and_ignore_keys_missing_from_old_runs(tmp_path: Path) -> None:
    acc = {"left": 90, "right": 80}
    write_run(tmp_path, "a", method="mgda-ub", seed=0, test=acc)  # normalization left at its default
    write_run(tmp_path, "b", method="mgda-ub", seed=1, test=acc, options={"normalization": "none"})
    write_run(tmp_path, "c", method="mgda-ub", seed=0, test=acc, options={"normalization": "l2"})
    write_run(tmp_path, "d", method="uniform", seed=0, test=acc)  # a run from a version without data.synthetic
    newer = write_run(tmp_path, "e", method="uniform", seed=1, test=acc) / "recipe.yaml"
    raw = yaml.safe_load(newer.read_text())
    raw["data"]["synthetic"] = False
    newer.write_text(yaml.safe_dump(raw))
    frame = tables_for(tmp_path)["multifashion-methods"].frame.set_index("method")
    assert frame.loc["mgda-ub (normalization=none)", "n"] == 2
    assert frame.loc["mgda-ub (normalization=l2)", "n"] == 1
    assert frame.loc["uniform", "n"] == 2


def test_a_variant_at_another_level_is_never_labelled_as_the_published_method(tmp_path: Path) -> None:
    """Issue 16: `cagrad` on z is `cagrad (level=representation)` even alone; a run whose recipe.yaml predates
    resolved method options (no `level`) ran at the old default, z, and is labelled so too."""
    from mtlcli.methods import REGISTRY

    acc = {"left": 90, "right": 80}
    options = REGISTRY["cagrad"].options().model_dump(mode="json")  # what a new recipe.yaml records
    write_run(tmp_path, "a", method="cagrad", seed=0, test=acc, options=options)
    write_run(tmp_path, "b", method="cagrad", seed=1, test=acc, options={**options, "level": "representation"})
    write_run(tmp_path, "c", method="upgrad", seed=0, test=acc)  # written before options were recorded
    write_run(tmp_path, "d", method="mgda-ub", seed=0, test=acc)  # no level option: never a variant
    frame = tables_for(tmp_path)["multifashion-methods"].frame.set_index("method")
    assert set(frame.index) == {"cagrad", "cagrad (level=representation)", "upgrad (level=representation)", "mgda-ub"}
    alone = tmp_path / "alone"
    write_run(alone, "z", method="cagrad", seed=0, test=acc, options={"level": "representation"})
    assert list(tables_for(alone)["multifashion-methods"].frame["method"]) == ["cagrad (level=representation)"]


def test_a_recipe_records_every_method_option_and_a_variant_names_its_run_directory() -> None:
    from mtlcli.methods import REGISTRY
    from mtlcli.recipe import validate
    from mtlcli.training.callbacks import run_name
    from tests.conftest import load_shipped_recipe

    raw = load_shipped_recipe("multifashion")
    raw["method"] = {"name": "upgrad"}
    recipe = validate(raw)
    assert recipe.method.options == REGISTRY["upgrad"].options().model_dump(mode="json")
    assert run_name(recipe) == "upgrad"
    raw["method"] = {"name": "upgrad", "level": "representation"}
    assert run_name(validate(raw)) == "upgrad-representation"
    raw["method"] = {"name": "mgda-ub"}
    assert run_name(validate(raw)) == "mgda-ub"


def test_imtl_g_runs_from_before_the_raw_head_default_are_read_as_weighted(tmp_path: Path) -> None:
    """IMTL-G's heads get their raw gradients by default now (Algorithm 1, LibMTL, TorchJD); a run whose recipe.yaml
    predates resolved method options ran with weighted heads, and is labelled so beside a new run."""
    from mtlcli.methods import REGISTRY

    acc = {"left": 90, "right": 80}
    options = REGISTRY["imtl-g"].options().model_dump(mode="json")
    assert options["head_grads"] == "raw"
    write_run(tmp_path, "a", method="imtl-g", seed=0, test=acc, options=options)
    write_run(tmp_path, "b", method="imtl-g", seed=0, test=acc)  # written before options were recorded
    frame = tables_for(tmp_path)["multifashion-methods"].frame
    assert set(frame["method"]) == {"imtl-g (head_grads=raw)", "imtl-g (head_grads=weighted)"}
