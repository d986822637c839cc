"""QM9 from the command line: `mtl prepare qm9 --source DIR` on raw files in their exact formats, one-epoch training
(uniform, mgda-ub, famo) with MAE per target in the tables' units, `mtl eval`, `mtl compare`, every method one step on
molecular graphs (`mtl ablate --synthetic`), bad input as one error, and the missing graph extra named."""

from __future__ import annotations

import builtins
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data.registry import QM9_TARGETS
from mtlcli.errors import RecipeError
from mtlcli.methods.registry import REGISTRY
from mtlcli.recipe import load
from mtlcli.training.build import device_splits, load_dataset, make_model, tasks_of
from mtlcli.training.evaluation import evaluate
from tests.conftest import ROOT
from tests.qm9_fixture import needs_geometric, write_raw

runner = CliRunner()
TASKS = [t.name for t in QM9_TARGETS]
PER_STEP = [name for name in REGISTRY if name != "grid"]  # grid is a sweep of static runs


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    raw = write_raw(tmp_path / "raw")
    code, output = invoke("prepare", "qm9", "--source", str(raw), "--data-dir", str(data_dir))
    assert code == 0, output
    return data_dir


def tiny_recipe(tmp_path: Path, data_dir: Path, method: str = "uniform", **train: object) -> Path:
    """The shipped QM9 recipe, 8 wide, batches of 4 molecules on the CPU."""
    raw = yaml.safe_load((ROOT / "recipes" / "qm9.yaml").read_text())
    raw["data"]["dir"] = str(data_dir)
    raw["model"]["dim"] = 8
    raw["method"] = {"name": method}
    raw["train"].update({"epochs": 1, "batch_size": 4, "eval_batch_size": 8, "device": "cpu", **train})
    raw["output"]["dir"] = str(tmp_path / "results")
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_prepare_prints_where_and_a_second_run_reuses_it(tmp_path: Path, prepared: Path) -> None:
    meta = json.loads((prepared / "qm9" / "meta.json").read_text())
    assert meta["input"] == "graph" and [t["name"] for t in meta["tasks"]] == TASKS
    assert [t["unit"] for t in meta["tasks"]][2:4] == ["meV", "meV"]
    code, output = invoke("prepare", "qm9", "--source", str(tmp_path / "raw"), "--data-dir", str(prepared))
    assert code == 0 and "already" in output.lower(), output


def test_bad_raw_files_are_one_error_and_leave_nothing_train_accepts(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw")
    csv = raw / "gdb9.sdf.csv"
    lines = csv.read_text().splitlines()
    fields = lines[4].split(",")
    fields[5] = "nan"  # alpha of the fourth molecule
    csv.write_text("\n".join([*lines[:4], ",".join(fields), *lines[5:]]) + "\n")
    code, output = invoke("prepare", "qm9", "--source", str(raw), "--data-dir", str(tmp_path / "data"))
    squashed = " ".join(output.split())
    assert code == 1 and "Traceback" not in output and len(re.findall(r"^Error: ", output, re.MULTILINE)) == 1, output
    assert "gdb9.sdf.csv" in squashed and "molecule 4 (gdb_4)" in squashed and "alpha is nan" in squashed
    code, output = invoke("train", str(tiny_recipe(tmp_path, tmp_path / "data")), "-q")
    assert code == 1 and "not prepared" in output and "Traceback" not in output


def test_without_torch_geometric_the_error_names_the_extra(tmp_path: Path, prepared: Path, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_geometric(name: str, *args, **kwargs):
        if name.startswith("torch_geometric"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_geometric)
    code, output = invoke("train", str(tiny_recipe(tmp_path, prepared)), "-q")
    assert code == 1 and "Traceback" not in output, output
    assert "mtlcli[graph]" in " ".join(output.split()).replace(" ", "")


@needs_geometric
@pytest.mark.parametrize("method", ["uniform", "mgda-ub", "famo"])
def test_one_epoch_trains_and_reports_mae_per_target_in_the_tables_units(tmp_path: Path, prepared: Path, method: str) -> None:
    recipe = tiny_recipe(tmp_path, prepared, method)
    code, output = invoke("train", str(recipe), "-q")
    assert code == 0, output
    run = Path(output.strip().splitlines()[-1])
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert list(record["test"]) == TASKS and record["steps"] == 3  # 11 training molecules in batches of 4
    assert all(np.isfinite(record["test"][t]["abs_error"]) for t in TASKS)
    # the MAE is |prediction * std + mean - target| in the stored units (meV for the energies), over every molecule
    r = load(recipe)
    data = load_dataset(r)
    model = make_model(r, data)
    model.load_state_dict(torch.load(run / "best.pt", weights_only=False)["model"])
    model.eval()
    test = device_splits(r, data, torch.device("cpu"))["test"]
    with torch.no_grad():
        x, y = test.batch(slice(None))
        outputs = model(x)[1]
    for task in tasks_of(r, data):
        mean, std = task.standardize
        mae = (outputs[task.name].squeeze(1) * std + mean - y[task.name]).abs().mean().item()
        assert mae == pytest.approx(record["test"][task.name]["abs_error"], rel=1e-4), task.name
    assert evaluate(model, tasks_of(r, data), test, batch_size=1)["homo"]["abs_error"] == pytest.approx(
        record["test"]["homo"]["abs_error"], rel=1e-4)
    code, output = invoke("eval", str(run))
    assert code == 0 and "homo" in output and (run / "eval-test-best.json").is_file(), output
    code, output = invoke("compare", str(tmp_path / "results"))
    assert code == 0 and "homo" in output, output


@needs_geometric
def test_every_method_steps_on_molecular_graphs(tmp_path: Path) -> None:
    """One step of every per-step method on the QM9 network (T = 11), on random molecules: `mtl ablate --synthetic`."""
    recipe = tiny_recipe(tmp_path, tmp_path / "nowhere")
    weights = "[" + ",".join(["0.5", *["0.05"] * (len(TASKS) - 1)]) + "]"  # static has no default weights
    names = [arg for name in PER_STEP for arg in ("--methods", f"static:weights={weights}" if name == "static" else name)]
    fast = ["--steps", "1", "--warmup", "0", "--batch-size", "6", "--device", "cpu"]
    code, output = invoke("ablate", str(recipe), "--synthetic", *names, *fast, "--out", str(tmp_path / "ablation"))
    assert code == 0, output[-3000:]
    payload = json.loads(next((tmp_path / "ablation").glob("ablation-*.json")).read_text())
    assert {row["method"] for row in payload["methods"]} == set(PER_STEP)
    assert all(row["median_ms"] > 0 for row in payload["methods"]) and payload["tasks"] == TASKS


def test_a_recipe_pairs_molecules_with_the_graph_encoder_and_no_augmentation() -> None:
    raw = yaml.safe_load((ROOT / "recipes" / "qm9.yaml").read_text())
    raw["model"] = {"encoder": "mlp"}
    raw["data"]["augment"] = "scale-crop"
    with pytest.raises(RecipeError) as info:
        load(raw=raw)
    assert "model.encoder: mlp takes images, qm9 holds molecular graphs (choose mpnn)" in info.value.problems
    assert any(p.startswith("data.augment: qm9 holds molecular graphs") for p in info.value.problems)
    celeba = yaml.safe_load((ROOT / "recipes" / "celeba.yaml").read_text())
    celeba["model"] = {"encoder": "mpnn"}
    with pytest.raises(RecipeError, match=r"model\.encoder: mpnn takes molecular graphs, celeba holds images"):
        load(raw=celeba)
