"""CelebA end to end on a generated miniature release (real JPEGs, both txt files): prepare, then a
1-epoch 40-task training through the CLI for every kind of method (representation-gradient, exact
loop and batched, learned, single-task), eval, compare, and the synthetic Table 2 ablation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data.registry import CELEBA_ATTRIBUTES
from tests.celeba_fixture import make_celeba_source
from tests.conftest import load_shipped_recipe

runner = CliRunner()
# size 32 and width 4: the authors' architecture (z = 8w x (32/32)^2 = 32) at a CPU-test scale
TINY = ["--set", "data.size=32", "--set", "model.width=4"]


@pytest.fixture(scope="module")
def celeba_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("celeba")
    source = make_celeba_source(root / "release", n=24, layout="zip", counts=(16, 4, 4), image_hw=(44, 36))
    data = root / "data"
    result = runner.invoke(app, ["prepare", "celeba", "--source", str(source.path), "--size", "32", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    return data


@pytest.fixture
def celeba_recipe(tmp_path: Path, write_recipe) -> Path:
    raw = copy.deepcopy(load_shipped_recipe("celeba"))
    raw["train"].update(epochs=1, batch_size=8, eval_batch_size=16, device="cpu")
    raw["output"]["dir"] = str(tmp_path / "results")
    return write_recipe(raw, "celeba.yaml")


METHODS = [
    ("uniform", []),
    ("mgda-ub", []),
    ("mgda", ["--set", "method.grads=loop"]),
    ("mgda", ["--set", "method.grads=batched"]),
    ("imtl-g", []),
    ("imtl-g-exact", []),
    ("pcgrad", []),
    ("gradnorm", []),
    ("uncertainty", []),
    ("single-task", []),
]


def train(recipe: Path, data: Path, method: str, extra: list[str]) -> Path:
    args = ["train", str(recipe), "--method", method, "--data-dir", str(data), "-q", *TINY, *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("method", "extra"), METHODS, ids=[m + "".join(e[1:2]) for m, e in METHODS])
def test_one_epoch_on_40_attributes(celeba_dir: Path, celeba_recipe: Path, method: str, extra: list[str]) -> None:
    run = train(celeba_recipe, celeba_dir, method, extra)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == list(CELEBA_ATTRIBUTES) and summary["encoder"] == "resnet18-cifar"
    assert summary["input_shape"] == [3, 32, 32]
    meta = json.loads((celeba_dir / "celeba" / "meta.json").read_text())
    assert summary["normalization"] == {"mean": meta["mean"], "std": meta["std"]}  # measured by prepare
    for split in ("val", "test"):
        errors = [summary[split][a]["error"] for a in CELEBA_ATTRIBUTES]
        assert all(0.0 <= e <= 100.0 and math.isfinite(e) for e in errors)
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    weights = [epoch["alphas"][a] for a in CELEBA_ATTRIBUTES]
    assert len(weights) == 40 and all(math.isfinite(w) for w in weights)
    if method == "mgda-ub" or method == "mgda":  # min-norm weights live on the simplex
        assert abs(sum(weights) - 1.0) < 1e-4 and min(weights) >= -1e-6


def test_loop_and_batched_exact_mgda_train_the_same_model(celeba_dir: Path, celeba_recipe: Path) -> None:
    runs = [train(celeba_recipe, celeba_dir, "mgda", ["--set", f"method.grads={mode}"]) for mode in ("loop", "batched")]
    loop, batched = (json.loads((r / "summary.json").read_text()) for r in runs)
    for attribute in CELEBA_ATTRIBUTES:
        assert loop["test"][attribute]["error"] == pytest.approx(batched["test"][attribute]["error"], abs=1e-6)


def test_eval_and_compare_on_40_attributes(celeba_dir: Path, celeba_recipe: Path, tmp_path: Path) -> None:
    runs = [train(celeba_recipe, celeba_dir, m, []) for m in ("single-task", "uniform", "mgda-ub")]
    result = runner.invoke(app, ["eval", str(runs[2]), "--split", "test", "--data-dir", str(celeba_dir)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((runs[2] / "eval-test-best.json").read_text())
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert evaluated["metrics"]["Smiling"]["error"] == pytest.approx(summary["test"]["Smiling"]["error"], abs=1e-9)

    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "mean error" in result.stdout and "Wearing_Necktie" not in result.stdout  # the summary, not 40 columns
    assert "Wearing_Necktie" in (out / "report.html").read_text()


def test_the_table_2_ablation_at_40_tasks_without_data(celeba_recipe: Path, tmp_path: Path) -> None:
    methods = "uniform,mgda-ub,mgda:grads=loop,mgda:grads=batched,imtl-g,imtl-g-exact"
    args = ["ablate", str(celeba_recipe), "--synthetic", *TINY, "--steps", "1", "--warmup", "0", "--methods", methods]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "ablation"), "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ablation" / "ablation-celeba-cpu.json").read_text())
    assert len(payload["tasks"]) == 40 and payload["batch_size"] == 8
    assert [r["label"] for r in payload["methods"]][:4] == ["uniform", "mgda-ub", "mgda (grads=loop)", "mgda (grads=batched)"]
    assert payload["min_norm"]["tasks"] == 40 and payload["min_norm"]["median_ms"] > 0
    caption = (tmp_path / "ablation" / "ablation-celeba-cpu.md").read_text()
    assert "exact MGDA / MGDA-UB: x" in caption and "T = 40" in caption


def test_grid_over_40_tasks_is_refused_before_training(celeba_dir: Path, celeba_recipe: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(celeba_recipe), "--method", "grid", "--data-dir", str(celeba_dir), *TINY])
    assert result.exit_code == 1
    assert "11,480 runs" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
