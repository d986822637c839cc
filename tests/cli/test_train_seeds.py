"""`mtl train --seeds` runs a recipe once per seed; `data.synthetic` trains without prepared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.cli.train import parse_seeds
from mtlcli.errors import MtlError

runner = CliRunner()


def test_seeds_train_one_run_per_seed(tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", "uniform", "--seeds", "0,1", "-q"])
    assert result.exit_code == 0, result.output
    runs = [Path(line) for line in result.stdout.split()]
    assert len(runs) == 2
    seeds = [json.loads((run / "summary.json").read_text())["seed"] for run in runs]
    assert seeds == [0, 1]
    result = runner.invoke(app, ["compare", str(runs[0].parent), "--format", "json"])
    assert json.loads(result.stdout)["multifashion-methods"]["rows"][0]["n"] == 2


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("3-5") == [3, 4, 5]
    for bad in ("a", "1,1", "", "-1"):
        with pytest.raises(MtlError, match="--seeds"):
            parse_seeds(bad)


def test_seed_and_seeds_conflict(tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--seed", "1", "--seeds", "0,1"])
    assert result.exit_code == 1 and "--seed and --seeds" in result.output


def test_synthetic_recipe_trains_without_data(tiny_recipe, write_recipe, tmp_path: Path) -> None:
    tiny_recipe["data"].update(dir=str(tmp_path / "nowhere"), synthetic=True)
    tiny_recipe["train"]["batch_size"] = 512
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", "uniform", "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((Path(result.stdout.split()[-1]) / "summary.json").read_text())
    assert summary["status"] == "complete"
