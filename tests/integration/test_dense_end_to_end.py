"""Dense scene understanding end to end on generated miniature releases in the real formats: prepare,
1-epoch training through the CLI for a representation-level and an exact method, eval, compare with
the IMTL / Nash-MTL table layout (arrows, Δm%), the synthetic 3-task ablation, and a bitwise resume of
an augmented dense run."""

from __future__ import annotations

import copy
import json
import math
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data.registry import NORMAL_METRICS
from mtlcli.methods import REGISTRY
from tests.cityscapes_fixture import make_cityscapes_source
from tests.conftest import load_shipped_recipe
from tests.integration._reliability import assert_same_run, interrupted_then_resumed, trainer
from tests.nyuv2_fixture import make_nyuv2_source

runner = CliRunner()
# 96x128 is the smallest 4:3 size the split SegNet's five poolings take; width 4 keeps it a CPU test
NYU_TINY = ["--set", "data.size=96", "--set", "model.width=4"]
# 16x32 images: the dilated ResNet-50 (width 4) gives z = [128, 2, 4]; PSP heads of 8 channels
CITY_TINY = ["--set", "data.size=16", "--set", "model.width=4", "--set", "model.head_width=8", "--set", "model.pretrained=false"]


@pytest.fixture(scope="module")
def cityscapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    source = make_cityscapes_source(root / "release", size=(32, 64), zipped=True)
    data = root / "data"
    args = ["prepare", "cityscapes", "--source", str(source.path), "--size", "16", "--data-dir", str(data), "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "16x32" in result.output
    return data


@pytest.fixture
def cityscapes_recipe(tmp_path: Path, write_recipe) -> Path:
    raw = copy.deepcopy(load_shipped_recipe("cityscapes"))
    raw["train"].update(epochs=1, batch_size=4, eval_batch_size=8, device="cpu")
    raw["output"]["dir"] = str(tmp_path / "results")
    return write_recipe(raw, "cityscapes.yaml")


@pytest.mark.parametrize("method", ["mgda-ub", "mgda"])
def test_one_epoch_on_cityscapes(cityscapes_dir: Path, cityscapes_recipe: Path, method: str) -> None:
    run = train(cityscapes_recipe, cityscapes_dir, method, CITY_TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["semantic", "instance", "disparity"] and summary["encoder"] == "resnet50-dilated"
    assert summary["input_shape"] == [3, 16, 32]
    for split in ("val", "test"):
        metrics = summary[split]
        assert 0.0 <= metrics["semantic"]["miou"] <= 100.0 and 0.0 <= metrics["semantic"]["pixel_accuracy"] <= 100.0
        assert metrics["instance"]["abs_error"] > 0 and metrics["disparity"]["abs_error"] > 0
        assert math.isfinite(metrics["disparity"]["rel_error"])
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    weights = list(epoch["alphas"].values())
    assert len(weights) == 3 and abs(sum(weights) - 1.0) < 1e-4 and min(weights) >= -1e-6


def test_pretrained_weights_offline_are_one_clear_error(
    cityscapes_dir: Path, cityscapes_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.hub

    def offline(*_args: object, **_kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    args = ["train", str(cityscapes_recipe), "--data-dir", str(cityscapes_dir), "-q", "--set", "data.size=16"]
    result = runner.invoke(app, args)  # the shipped recipe: width 64, pretrained
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    text = "".join(result.output.split())
    assert result.output.count("\nError: ") + result.output.startswith("Error: ") == 1, result.output
    assert "resnet50-0676ba61.pth" in text and "torch-home/hub/checkpoints" in text, result.output


@pytest.fixture(scope="module")
def nyuv2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nyuv2")
    source = make_nyuv2_source(root / "release", n_train=12, n_val=4, hw=(96, 128))
    data = root / "data"
    result = runner.invoke(app, ["prepare", "nyuv2", "--source", str(source.path), "--size", "96", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert "96x128" in result.output
    return data


def nyuv2_raw(out: Path) -> dict:
    raw = copy.deepcopy(load_shipped_recipe("nyuv2"))
    raw["train"].update(epochs=1, batch_size=4, eval_batch_size=8, device="cpu")
    raw["output"]["dir"] = str(out)
    return raw


@pytest.fixture
def nyuv2_recipe(tmp_path: Path, write_recipe) -> Path:
    return write_recipe(nyuv2_raw(tmp_path / "results"), "nyuv2.yaml")


def train(recipe: Path, data: Path, method: str, extra: list[str]) -> Path:
    result = runner.invoke(app, ["train", str(recipe), "--method", method, "--data-dir", str(data), "-q", *extra])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["mgda-ub", "mgda"])
def test_one_epoch_on_nyuv2(nyuv2_dir: Path, nyuv2_recipe: Path, method: str) -> None:
    run = train(nyuv2_recipe, nyuv2_dir, method, NYU_TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["segmentation", "depth", "normal"] and summary["encoder"] == "segnet-split"
    assert summary["input_shape"] == [3, 96, 128]
    for split in ("val", "test"):
        metrics = summary[split]
        assert 0.0 <= metrics["segmentation"]["miou"] <= 100.0 and 0.0 <= metrics["segmentation"]["pixel_accuracy"] <= 100.0
        assert metrics["depth"]["abs_error"] > 0 and math.isfinite(metrics["depth"]["rel_error"])
        assert set(NORMAL_METRICS) <= set(metrics["normal"])
        assert 0.0 <= metrics["normal"]["median_angle"] <= 180.0 and 0.0 <= metrics["normal"]["within_30"] <= 100.0
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    weights = list(epoch["alphas"].values())
    assert len(weights) == 3 and abs(sum(weights) - 1.0) < 1e-4 and min(weights) >= -1e-6  # on the simplex


def test_eval_and_compare_in_the_nash_mtl_layout(nyuv2_dir: Path, nyuv2_recipe: Path, tmp_path: Path) -> None:
    runs = [train(nyuv2_recipe, nyuv2_dir, m, NYU_TINY) for m in ("single-task", "uniform", "mgda-ub")]
    result = runner.invoke(app, ["eval", str(runs[2]), "--split", "test", "--data-dir", str(nyuv2_dir)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((runs[2] / "eval-test-best.json").read_text())["metrics"]
    summary = json.loads((runs[2] / "summary.json").read_text())["test"]
    for task, metrics in summary.items():
        for name, value in metrics.items():
            assert evaluated[task][name] == pytest.approx(value, rel=1e-9, abs=1e-9), (task, name)

    result = runner.invoke(app, ["compare", str(tmp_path / "results"), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "segmentation miou ↑" in text and "depth abs_error ↓" in text and "normal within_11.25 ↑" in text
    assert "Δm% (metrics)" in text and "Δm% (tasks)" in text  # both definitions, all 9 metric columns on stdout
    table = json.loads(runner.invoke(app, ["compare", str(tmp_path / "results"), "--format", "json"]).stdout)
    rows = {row["method"]: row for row in table["nyuv2-methods"]["rows"]}
    assert rows["single-task"]["Δm% (metrics)"] == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(rows["mgda-ub"]["Δm% (metrics)"])


def test_the_3_task_ablation_without_data(tmp_path: Path, write_recipe) -> None:
    raw = copy.deepcopy(load_shipped_recipe("cityscapes"))
    raw["train"].update(batch_size=2, device="cpu")
    raw["model"].update(width=4, head_width=8, pretrained=False)
    recipe = write_recipe(raw, "cityscapes.yaml")
    methods = "uniform,mgda-ub,mgda:grads=loop,mgda:grads=batched"
    args = ["ablate", str(recipe), "--synthetic", "--set", "data.size=16", "--steps", "1", "--warmup", "0"]
    result = runner.invoke(app, [*args, "--methods", methods, "--out", str(tmp_path / "ablation"), "--format", "json"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ablation" / "ablation-cityscapes-cpu.json").read_text())
    assert payload["tasks"] == ["semantic", "instance", "disparity"] and payload["batch_size"] == 2


def test_an_augmented_dense_run_resumes_bitwise(nyuv2_dir: Path, tmp_path: Path) -> None:
    raw = nyuv2_raw(tmp_path / "out")
    raw["data"].update(dir=str(nyuv2_dir), size=96)
    raw["model"]["width"] = 4
    raw["train"]["epochs"] = 2
    assert raw["data"]["augment"] == "scale-crop-flip"
    reference = trainer(raw).run()
    resumed, _ = interrupted_then_resumed(raw, 4, signal.SIGTERM)  # epoch 2 (3 steps of 4 from 11 samples), batch 1
    assert_same_run(reference, resumed.run_dir)


def test_the_report_folder_has_tables_and_figures_for_dense_metrics(nyuv2_dir: Path, nyuv2_recipe: Path, tmp_path: Path) -> None:
    for method in ("single-task", "uniform", "mgda-ub"):
        train(nyuv2_recipe, nyuv2_dir, method, NYU_TINY)
    out = tmp_path / "report"
    result = runner.invoke(app, ["compare", str(tmp_path / "results"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert (out / "report.html").is_file() and any(name.endswith(".png") for name in figures), figures
    tex = next(p for p in (out / "tables").iterdir() if p.name.endswith("methods.tex")).read_text()
    assert r"miou $\uparrow$" in tex and r"abs\_error $\downarrow$" in tex


@pytest.mark.parametrize("method", [name for name in REGISTRY if name != "grid"])
def test_every_method_takes_a_feature_map_as_z(cityscapes_dir: Path, cityscapes_recipe: Path, method: str) -> None:
    """z is [B, C, h, w] here: every method (per-task gradients of z, its Gram matrix, sign masks, tracked
    gradients, learned scales) trains on it, with finite weights."""
    extra = ["--set", "model.width=2", "--set", "model.head_width=4", "--set", "train.batch_size=8"]
    if method == "static":
        extra += ["--set", "method.weights=[0.2, 0.3, 0.5]"]
    run = train(cityscapes_recipe, cityscapes_dir, method, [*CITY_TINY, *extra])
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert len(epoch["alphas"]) == 3 and all(math.isfinite(w) for w in epoch["alphas"].values())
    assert all(math.isfinite(v) for task in epoch["test"].values() for v in task.values())


def test_the_7_category_variant_replaces_the_19_classes(cityscapes_dir: Path, tmp_path: Path, write_recipe) -> None:
    raw = copy.deepcopy(load_shipped_recipe("cityscapes"))
    raw["tasks"] = [{"name": "category"}, {"name": "disparity"}]
    raw["train"].update(epochs=1, batch_size=4, eval_batch_size=8, device="cpu")
    raw["output"]["dir"] = str(tmp_path / "results")
    run = train(write_recipe(raw, "categories.yaml"), cityscapes_dir, "uniform", CITY_TINY)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tasks"] == ["category", "disparity"] and 0.0 <= summary["test"]["category"]["miou"] <= 100.0
