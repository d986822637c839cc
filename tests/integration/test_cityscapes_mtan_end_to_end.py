"""MTAN's Cityscapes end to end on a generated miniature release in the real .npy layout (zipped): prepare through
the CLI, 1-epoch training of the shipped recipe (split SegNet, scale-crop-flip) with uniform, MGDA-UB and Nash-MTL,
the 19-class task on request, eval, compare with its figures, the synthetic ablation, a bitwise resume and
torchrun (2 processes train what 1 trains)."""

from __future__ import annotations

import copy
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.training import load_checkpoint
from tests.cityscapes_mtan_fixture import make_cityscapes_mtan_source
from tests.conftest import ROOT, load_shipped_recipe
from tests.integration._reliability import assert_same_run, interrupted_then_resumed, trainer

runner = CliRunner()
NAME = "cityscapes-mtan"
# 32x64: the smallest 2:1 size the split SegNet's five poolings take; width 4 keeps it a CPU test
TINY = ["--set", "data.size=32", "--set", "model.width=4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(NAME)
    source = make_cityscapes_mtan_source(root / "release", n_train=12, n_val=4, hw=(32, 64), zipped=True)
    data = root / "data"
    result = runner.invoke(app, ["prepare", NAME, "--source", str(source.path), "--size", "32", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "32x64" in result.output
    return data


def shipped(out: Path, **train: object) -> dict:
    raw = copy.deepcopy(load_shipped_recipe(NAME))
    raw["train"].update({"epochs": 1, "batch_size": 4, "eval_batch_size": 8, "device": "cpu", **train})
    raw["output"]["dir"] = str(out)
    return raw


def train(recipe: Path, data: Path, method: str, extra: list[str]) -> Path:
    result = runner.invoke(app, ["train", str(recipe), "--method", method, "--data-dir", str(data), "-q", *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def test_the_shipped_recipe_is_the_famo_setting() -> None:
    raw = load_shipped_recipe(NAME)
    assert raw["data"] == {"name": NAME, "size": 128, "mean": 0.0, "std": 1.0, "augment": "scale-crop-flip"}
    assert raw["model"]["encoder"] == "segnet-split" and raw["tasks"] == "all"
    assert raw["optim"] == {"name": "adam", "lr": 0.0001, "scheduler": {"name": "step", "step_size": 100, "gamma": 0.5}}
    assert (raw["train"]["epochs"], raw["train"]["batch_size"]) == (200, 8)


def test_train_eval_and_compare_with_figures(data_dir: Path, tmp_path: Path, write_recipe) -> None:
    recipe = write_recipe(shipped(tmp_path / "results"), f"{NAME}.yaml")
    runs = {method: train(recipe, data_dir, method, TINY) for method in ("single-task", "uniform", "mgda-ub", "nash-mtl")}
    for method, run in runs.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["tasks"] == ["segmentation", "depth"] and summary["encoder"] == "segnet-split"
        assert summary["input_shape"] == [3, 32, 64], method
        for split in ("val", "test"):
            metrics = summary[split]
            assert 0.0 <= metrics["segmentation"]["miou"] <= 100.0 and 0.0 <= metrics["segmentation"]["pixel_accuracy"] <= 100.0
            assert metrics["depth"]["abs_error"] > 0 and math.isfinite(metrics["depth"]["rel_error"])
        epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
        weights = list(epoch["alphas"].values())
        assert len(weights) == 2 and all(math.isfinite(w) for w in weights), method
        if method == "mgda-ub":
            assert abs(sum(weights) - 1.0) < 1e-4 and min(weights) >= -1e-6  # on the simplex

    result = runner.invoke(app, ["eval", str(runs["mgda-ub"]), "--split", "test", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((runs["mgda-ub"] / "eval-test-best.json").read_text())["metrics"]
    summary = json.loads((runs["mgda-ub"] / "summary.json").read_text())["test"]
    for task, metrics in summary.items():
        for name, value in metrics.items():
            assert evaluated[task][name] == pytest.approx(value, rel=1e-9, abs=1e-9), (task, name)

    table = json.loads(runner.invoke(app, ["compare", str(tmp_path / "results"), "--format", "json"]).stdout)
    rows = {row["method"]: row for row in table[f"{NAME}-methods"]["rows"]}
    assert set(rows) == set(runs) and rows["single-task"]["Δm% (metrics)"] == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(rows["nash-mtl"]["Δm% (metrics)"])
    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and any(p.suffix == ".png" for p in (out / "figures").iterdir())


def test_the_19_classes_on_request(data_dir: Path, tmp_path: Path, write_recipe) -> None:
    raw = shipped(tmp_path / "results")
    raw["tasks"] = [{"name": "segmentation"}, {"name": "depth"}, {"name": "segmentation_19"}]
    run = train(write_recipe(raw, "three.yaml"), data_dir, "mgda-ub", TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["segmentation", "depth", "segmentation_19"]
    assert 0.0 <= summary["test"]["segmentation_19"]["miou"] <= 100.0


def test_the_ablation_without_data(tmp_path: Path, write_recipe) -> None:
    raw = shipped(tmp_path / "results", batch_size=2)
    raw["model"]["width"] = 4
    recipe = write_recipe(raw, f"{NAME}.yaml")
    args = ["ablate", str(recipe), "--synthetic", "--set", "data.size=32", "--steps", "1", "--warmup", "0"]
    result = runner.invoke(app, [*args, "--methods", "uniform,mgda-ub", "--out", str(tmp_path / "ablation"), "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ablation" / f"ablation-{NAME}-cpu.json").read_text())
    assert payload["tasks"] == ["segmentation", "depth"] and payload["batch_size"] == 2


def test_an_augmented_run_resumes_bitwise(data_dir: Path, tmp_path: Path) -> None:
    raw = shipped(tmp_path / "out", epochs=2)
    raw["data"].update(dir=str(data_dir), size=32)
    raw["model"]["width"] = 4
    reference = trainer(raw).run()
    resumed, _ = interrupted_then_resumed(raw, 4, signal.SIGTERM)  # epoch 2 (3 steps of 4 from 11 samples), batch 1
    assert_same_run(reference, resumed.run_dir)


def test_torchrun_trains_it_on_two_processes(data_dir: Path, tmp_path: Path) -> None:
    """BatchNorm normalises with each rank's rows (README, Several GPUs), so the SegNet is not bitwise the 1-process
    one; the run trains the same steps over the same data, and only rank 0 writes it."""
    raw = shipped(tmp_path / "results")
    raw["data"].update(dir=str(data_dir), size=32)
    raw["model"]["width"] = 4
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mtlcli", "train",
               str(recipe), "--method", "mgda-ub", "-q"]  # fmt: skip
    two = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    run = Path(two.stdout.strip().splitlines()[-1])
    assert [p.name for p in (tmp_path / "results").iterdir()] == [run.name]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["segmentation", "depth"]
    assert all(math.isfinite(v) for task in summary["test"].values() for v in task.values())
    checkpoint = load_checkpoint(run / "last.pt")
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint["model"].values() if t.is_floating_point())
