"""`mtl prepare table`: a dataset from the user's own table (CSV + images, parquet features), trained and measured
from the command line; partially labelled tasks; every bad input is one error naming the file, row or column."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mtlcli import recipe as recipes
from mtlcli.cli import app
from mtlcli.data.store import load_prepared
from mtlcli.training.build import device_splits, load_dataset, make_model, tasks_of
from mtlcli.training.evaluation import evaluate

runner = CliRunner()
SPECIES = ("cat", "dog", "fox")


def write_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n small RGB images of different sizes, PNG and JPEG (one grayscale PNG among them)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        height, width = int(rng.integers(12, 50)), int(rng.integers(12, 50))
        pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
        image = Image.fromarray(pixels).convert("L") if i == 3 else Image.fromarray(pixels)
        name = f"img{i:02d}.png" if i % 2 else f"sub/img{i:02d}.jpg"
        (folder / name).parent.mkdir(exist_ok=True)
        image.save(folder / name)
        names.append(name)
    return names


def table_rows(n: int, seed: int = 0) -> pd.DataFrame:
    """species (text classes, every 5th missing), age (real numbers, every 4th missing), two numeric features."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "species": SPECIES[i % 3] if i % 5 else "",
            "age": f"{30 + 10 * rng.standard_normal():.2f}" if i % 4 else "",
            "x1": f"{rng.standard_normal():.4f}",
            "x2": f"{3 + 2 * rng.standard_normal():.4f}",
        }
        for i in range(n)
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def image_table(tmp_path: Path) -> Path:
    names = write_images(tmp_path / "images", 20)
    frame = table_rows(20)
    frame.insert(0, "file", names)
    frame["split"] = ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    frame.to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def write_recipe(path: Path, **data: str) -> Path:
    lines = ["data: {name: table" + "".join(f", {k}: {v}" for k, v in data.items()) + "}", "tasks: all",
             "method: {name: uniform}", "optim: {name: adam, lr: 0.001}",
             "train: {epochs: 1, batch_size: 8, eval_batch_size: 8, device: cpu}"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_csv_with_images_is_prepared_and_trained(image_table: Path) -> None:
    data = image_table / "data"
    code, text = run("prepare", "table", "--labels", str(image_table / "labels.csv"), "--images", str(image_table / "images"),
                     "--id", "file", "--task", "species", "--task", "age", "--size", "32", "--data-dir", str(data))  # fmt: skip
    assert code == 0, text
    assert f"prepared table in {data / 'table'} (train 14, val 3, test 3; 32x32; seed 0)" in text
    meta = json.loads((data / "table" / "meta.json").read_text())
    species, age = meta["tasks"]
    assert species["kind"] == "classification" and species["classes"] == list(SPECIES) and species["num_classes"] == 3
    assert age["kind"] == "regression" and age["num_classes"] == 1
    assert meta["splits"] == "the table's column 'split'" and meta["input"] == "images"
    prepared = load_prepared(data, "table")
    assert prepared.images["train"].shape == (14, 32, 32, 3) and prepared.images["train"].dtype == np.uint8
    assert prepared.targets["train"]["task0"].tolist()[:6] == [-1, 1, 2, 0, 1, -1]  # row 0 and 5 have no species
    assert math.isnan(prepared.targets["train"]["task1"][0]) and not math.isnan(prepared.targets["train"]["task1"][1])
    code, text = run("prepare", "table", "--labels", str(image_table / "labels.csv"), "--images", str(image_table / "images"),
                     "--id", "file", "--task", "species", "--task", "age", "--size", "32", "--data-dir", str(data))  # fmt: skip
    assert code == 0 and "table is already prepared" in text

    out = image_table / "results"
    recipe = write_recipe(image_table / "table.yaml")
    code, text = run("train", str(recipe), "--data-dir", str(data), "--out", str(out))
    assert code == 0, text
    (run_dir,) = out.iterdir()
    saved = (run_dir / "recipe.yaml").read_text()
    assert "encoder: resnet18-cifar" in saved and "masked_cross_entropy" in saved and "masked_mse" in saved
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["test"]["age"]) == {"abs_error", "rmse", "loss"} and math.isfinite(record["test"]["age"]["abs_error"])


def test_a_parquet_feature_table_trains_with_mgda_ub_under_its_own_name(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = table_rows(40, seed=3)
    frame.insert(0, "id", [f"s{i}" for i in range(40)])
    typed = pd.DataFrame({
        "id": frame["id"],
        "species": pd.array([s or None for s in frame["species"]], dtype="string"),
        "age": pd.to_numeric(frame["age"].replace("", np.nan)),
        "x1": frame["x1"].astype(float),
        "x2": frame["x2"].astype(float),
    })  # fmt: skip
    typed.to_parquet(tmp_path / "labels.parquet")
    data = tmp_path / "data"
    code, text = run("prepare", "table", "--labels", str(tmp_path / "labels.parquet"), "--task", "species", "--task", "age",
                     "--name", "houses", "--seed", "2", "--data-dir", str(data))  # fmt: skip
    assert code == 0, text
    assert f"prepared table in {data / 'houses'} (train 32, val 4, test 4; 2 features; seed 2)" in text
    recipe = write_recipe(tmp_path / "houses.yaml", prepared="houses")
    out = tmp_path / "results"
    code, text = run("train", str(recipe), "--method", "mgda-ub", "--data-dir", str(data), "--out", str(out))
    assert code == 0, text
    (run_dir,) = out.iterdir()
    assert "encoder: mlp" in (run_dir / "recipe.yaml").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["dataset"] == "houses"
    code, text = run("compare", str(out))
    assert code == 0 and "houses" in text and "age abs_error" in text, text
    moved = data.rename(tmp_path / "elsewhere")  # eval finds the table's tasks in --data-dir, not the recipe's data.dir
    code, text = run("eval", str(run_dir), "--data-dir", str(moved), "--device", "cpu")
    assert code == 0, text
    assert "task accuracy abs_error rmse loss" in text  # each task's metrics in their own columns


def test_metrics_skip_missing_labels_and_report_the_regression_in_the_tables_units(tmp_path: Path) -> None:
    frame = table_rows(30, seed=7)
    frame.insert(0, "id", [f"r{i}" for i in range(30)])
    frame.to_csv(tmp_path / "labels.csv", index=False)
    data = tmp_path / "data"
    code, text = run("prepare", "table", "--labels", str(tmp_path / "labels.csv"), "--task", "species", "--task", "age",
                     "--data-dir", str(data))  # fmt: skip
    assert code == 0, text
    recipe = recipes.load(write_recipe(tmp_path / "r.yaml"), data_dir=str(data))
    dataset = load_dataset(recipe)
    tasks = tasks_of(recipe, dataset)
    torch.manual_seed(0)
    model = make_model(recipe, dataset)
    got = evaluate(model, tasks, device_splits(recipe, dataset, torch.device("cpu"))["test"], batch_size=2)

    # by hand, from the CSV: the test rows, the train rows' statistics, the model on the standardised features
    table = pd.read_csv(tmp_path / "labels.csv", keep_default_na=True).set_index("id")
    test_ids = np.load(data / "table" / "test_ids.npy").tolist()
    train = table.loc[np.load(data / "table" / "train_ids.npy").tolist()]
    features = table[["x1", "x2"]].to_numpy()
    mean, std = train[["x1", "x2"]].to_numpy().mean(axis=0), train[["x1", "x2"]].to_numpy().std(axis=0)
    x = torch.tensor((table.loc[test_ids, ["x1", "x2"]].to_numpy() - mean) / std, dtype=torch.float32)[:, None, None, :]
    assert features.shape == (30, 2)
    model.eval()
    with torch.no_grad():
        _, outputs = model(x.permute(0, 3, 1, 2))
    rows = table.loc[test_ids]
    labelled = rows["species"].notna().to_numpy()
    predicted = np.array(SPECIES)[outputs["species"].argmax(dim=1).numpy()]
    assert 0 < labelled.sum() < len(rows) or labelled.all()
    accuracy = 100.0 * (predicted[labelled] == rows["species"].to_numpy()[labelled]).mean()
    ages = rows["age"].to_numpy(dtype=float)
    has_age = ~np.isnan(ages)
    age_mean, age_std = train["age"].dropna().mean(), train["age"].dropna().std(ddof=0)
    years = outputs["age"].squeeze(1).double().numpy() * age_std + age_mean
    mae = np.abs(years[has_age] - ages[has_age]).mean()
    rmse = math.sqrt(((years[has_age] - ages[has_age]) ** 2).mean())
    assert got["species"]["accuracy"] == pytest.approx(accuracy)
    assert got["age"]["abs_error"] == pytest.approx(mae, rel=1e-5)
    assert got["age"]["rmse"] == pytest.approx(rmse, rel=1e-5)


def test_a_table_not_prepared_is_one_recipe_problem(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", prepared="nowhere")
    code, text = run("train", str(recipe), "--data-dir", str(tmp_path / "data"))
    assert code == 1 and "data.prepared: table dataset 'nowhere' is not prepared" in text
    assert "mtl prepare table --labels FILE.csv [--images DIR] --name nowhere" in text and "Traceback" not in text


# ----------------------------------------------------------------------------- bad input
def bad_table(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """A table with one problem, the extra arguments, and what the error must say."""
    names = write_images(tmp_path / "images", 8)
    frame = table_rows(8)
    frame.insert(0, "id", names)
    frame["split"] = ["train"] * 6 + ["val", "test"]
    csv = tmp_path / "labels.csv"
    args = ["--images", str(tmp_path / "images")]
    if case == "no id column":
        frame = frame.rename(columns={"id": "image"})
        expected = f"{csv}: no id column 'id' (its columns: 'image', 'species'"
    elif case == "image absent":
        frame.loc[5, "id"] = "ghost.png"
        expected = f"{csv}:7: image 'ghost.png' is not in {tmp_path / 'images'}"
    elif case == "one class":
        frame["kind"] = ["a"] * 6 + ["", ""]
        args += ["--task", "kind", "--task", "age"]
        expected = f"{csv}: class column 'kind' has one class ('a') among its labels"
    elif case == "text in a regression column":
        frame.loc[4, "age"] = "old"
        expected = f"{csv}:6: column 'age' holds 'old', not a number, but 'age' is a regression task"
    else:
        frame["empty"] = ""
        args += ["--task", "species", "--task", "empty"]
        expected = f"{csv}: task column 'empty' is empty"
    frame.to_csv(csv, index=False)
    return args, expected


@pytest.mark.parametrize(
    "case", ["no id column", "image absent", "one class", "text in a regression column", "an empty task column"]
)
def test_bad_input_is_one_error_and_nothing_is_written(case: str, tmp_path: Path) -> None:
    args, expected = bad_table(tmp_path, case)
    data = tmp_path / "data"
    code, text = run("prepare", "table", "--labels", str(tmp_path / "labels.csv"), *args, "--size", "32", "--data-dir", str(data))
    assert code == 1, text
    assert text.count("Error:") == 1 and expected in text and "Hint:" in text and "Traceback" not in text
    assert not (data / "table").exists() and not list(data.glob(".table.tmp-*"))


def test_a_task_kind_can_be_forced_and_the_recipe_keeps_table_tasks_on_masked_losses(tmp_path: Path) -> None:
    frame = table_rows(20, seed=4).drop(columns="age")  # an empty feature cell would be an error
    frame.insert(0, "id", range(20))
    frame["grade"] = [str(i % 4) if i % 3 else "" for i in range(20)]
    frame.to_csv(tmp_path / "labels.csv", index=False)
    data = tmp_path / "data"
    code, text = run("prepare", "table", "--labels", str(tmp_path / "labels.csv"), "--task", "grade:regression",
                     "--task", "x2:classification", "--task", "species", "--name", "forced", "--data-dir", str(data))  # fmt: skip
    assert code == 0, text
    grade, x2, species = json.loads((data / "forced" / "meta.json").read_text())["tasks"]
    assert grade["kind"] == "regression" and x2["kind"] == "classification" and x2["num_classes"] == 20
    assert species["classes"] == list(SPECIES)

    raw = {"data": {"name": "table", "prepared": "forced", "synthetic": True, "mean": 0.5},
           "tasks": [{"name": "grade", "loss": "masked_l1"}, {"name": "species", "loss": "cross_entropy"}],
           "method": {"name": "uniform"}, "optim": {"lr": 0.1}}  # fmt: skip
    with pytest.raises(recipes.RecipeError) as info:
        recipes.load(raw=raw, data_dir=str(data))
    assert sorted(info.value.problems) == [
        "data.synthetic: a table has no synthetic stand-in (its shapes are those of the prepared table)",
        "tasks.1.loss: task species of table takes masked_cross_entropy (its labels may be missing), not cross_entropy",
    ]
    raw["data"].pop("synthetic")
    with pytest.raises(recipes.RecipeError) as info:
        recipes.load(raw=raw, data_dir=str(data))
    assert "data.mean: a feature table is standardised when it is prepared; leave data.mean out" in info.value.problems


def test_only_a_table_has_a_prepared_name_of_its_own() -> None:
    from tests.conftest import load_shipped_recipe

    raw = load_shipped_recipe()
    raw["data"]["prepared"] = "mine"
    with pytest.raises(recipes.RecipeError) as info:
        recipes.load(raw=raw)
    assert any(p.startswith("data.prepared: only a table is prepared under a name of its own") for p in info.value.problems)
