"""User errors: one clear line (plus a hint), a non-zero exit, never a traceback."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from mtlcli.cli import app

runner = CliRunner()


def _run(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def test_missing_prepared_data_says_run_prepare(tiny_recipe, write_recipe, tmp_path) -> None:
    tiny_recipe["data"]["dir"] = str(tmp_path / "empty")
    result = _run("train", str(write_recipe(tiny_recipe)))
    assert result.exit_code == 1
    assert "run `mtl prepare multifashion` first" in " ".join(result.output.split())


def test_unknown_method_lists_the_methods(tiny_recipe, write_recipe) -> None:
    result = _run("train", str(write_recipe(tiny_recipe)), "--method", "magic")
    assert result.exit_code == 1
    assert "unknown method 'magic'" in result.output and "uniform" in result.output and "mgda-ub" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_asked_but_absent(tiny_recipe, write_recipe) -> None:
    result = _run("train", str(write_recipe(tiny_recipe)), "--device", "cuda")
    assert result.exit_code == 1
    assert "torch sees no CUDA device" in result.output and "--device cpu" in result.output


def test_broken_yaml_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  name: [multifashion\n")
    result = _run("train", str(path))
    assert result.exit_code == 1
    assert "bad.yaml:3:1: broken YAML" in result.output


def test_invalid_recipe_lists_every_problem(tiny_recipe, write_recipe) -> None:
    result = _run("train", str(write_recipe(tiny_recipe)), "--set", "optim.lr=-1", "--set", "train.batch_size=0")
    assert result.exit_code == 1
    assert "optim.lr: must be > 0, got -1" in result.output
    assert "train.batch_size: must be > 0, got 0" in result.output


def test_debug_flag_shows_the_traceback(tiny_recipe, write_recipe) -> None:
    result = runner.invoke(app, ["--debug", "train", str(write_recipe(tiny_recipe)), "--method", "magic"])
    assert result.exit_code != 0 and result.exception is not None


def test_eval_of_a_directory_that_is_not_a_run(tmp_path) -> None:
    result = _run("eval", str(tmp_path))
    assert result.exit_code == 1 and "is not a run directory" in result.output


def test_compare_with_no_runs(tmp_path) -> None:
    result = _run("compare", str(tmp_path))
    assert result.exit_code == 1 and "no finished runs" in result.output


def test_prepare_unknown_dataset() -> None:
    result = _run("prepare", "cifar10")
    assert result.exit_code == 1 and "choose one of: multimnist, multifashion, multi-fashion-mnist" in result.output


def test_prepare_two_sources_need_names(tmp_path) -> None:
    result = _run("prepare", "multi-fashion-mnist", "--source", str(tmp_path), "--data-dir", str(tmp_path / "d"))
    assert result.exit_code == 1 and "--source mnist=DIR --source fashion-mnist=DIR" in " ".join(result.output.split())


def test_python_dash_m_works() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mtlcli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("mtl ")
