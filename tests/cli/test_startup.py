"""The command line answers at once: no torch, pandas or matplotlib for help, listing, completion, --version
and a recipe error (issue 21). Each case runs in a fresh interpreter and reads its `sys.modules`; no timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "pandas", "matplotlib", "tensorboard", "mlflow")
PROBE = """
import json, sys
from mtlcli.cli import app
try:
    app(sys.argv[1:], prog_name="mtl")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("\\nPROBE " + json.dumps({"code": code, "heavy": sorted(m for m in HEAVY if m in sys.modules)}))
""".replace("HEAVY", repr(HEAVY))


def probe(args: list[str], cwd: Path, **env: str) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, output) of `mtl ARGS` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("PROBE "))
    payload = json.loads(line.removeprefix("PROBE "))
    return payload["code"], payload["heavy"], result.stdout + result.stderr


BAD_RECIPE = (
    "data: {name: multifashion}\ntasks: [{name: left}]\nmethod: {name: mgda-ub, normalisation: l2}\noptim: {lr: -1}\n"
    "output: {trackers: [tensorboard, mlfow]}\n"
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["methods"],
        ["methods", "mgda-ub"],
        ["train", "--help"],
        ["eval", "--help"],
        ["compare", "--help"],
        ["prepare", "--help"],
        ["ablate", "--help"],
    ],
    ids=" ".join,
)
def test_help_listing_and_version_import_no_heavy_module(args: list[str], tmp_path: Path) -> None:
    code, heavy, output = probe(args, tmp_path)
    assert code == 0, output
    assert heavy == [], f"`mtl {' '.join(args)}` imported {heavy}"


@pytest.mark.parametrize("command", ["train", "ablate"])
def test_a_recipe_error_is_reported_without_heavy_modules(command: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD_RECIPE)
    code, heavy, output = probe([command, "bad.yaml"], tmp_path)
    assert code == 1
    assert "optim.lr: must be > 0, got -1" in output
    assert "did you mean 'normalization'?" in output
    assert "output.trackers: unknown tracker 'mlfow' (did you mean 'mlflow'?)" in output
    assert heavy == []


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        ("mtl train --method mgda-u", ["mgda-ub", "mgda-unconstrained"]),
        ("mtl methods imtl-", ["imtl-g", "imtl-g-exact", "imtl-l"]),
        ("mtl prepare multi", ["multimnist", "multi-mnist", "multifashion", "multi-fashion", "multi-fashion-mnist"]),
        ("mtl train --set optim.l", ["optim.lr="]),
        ("mtl train --set method.normal", ["method.normalization="]),
        ("mtl train --set model.head_w", ["model.head_width="]),
        ("mtl train recipes/multif", ["recipes/multifashion.yaml"]),
        ("mtl eval results/", ["results/uniform-s0-abc"]),
    ],
)
def test_completion_answers_from_the_registries_without_heavy_modules(words: str, expected: list[str], tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "multifashion.yaml").write_text("data: {name: multifashion}\n")
    run = tmp_path / "results" / "uniform-s0-abc"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("{}\n")
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    code, heavy, output = probe([], tmp_path, _MTL_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=cword)
    assert code == 0, output
    offered = [line for line in output.splitlines() if line and not line.startswith("PROBE")]
    assert sorted(offered) == sorted(expected)
    assert heavy == []


def test_show_completion_prints_a_script_for_the_shell(tmp_path: Path) -> None:
    # typer takes the shell from the process tree (shellingham) unless detection is off, when the option takes its
    # value: a test run whose pytest has no shell among its ancestors (a detached job) must still name bash
    code, heavy, output = probe(["--show-completion", "bash"], tmp_path, _TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    assert code == 0, output
    assert "_MTL_COMPLETE=complete_bash" in output
    assert heavy == []


def test_version_names_mtl_torch_and_python_on_one_line() -> None:
    import platform

    import torch

    from mtlcli import __version__
    from mtlcli.cli import version_line

    cuda = f", CUDA {torch.version.cuda}" if torch.version.cuda else ""
    assert version_line() == f"mtl {__version__}, torch {torch.__version__}{cuda}, Python {platform.python_version()}"


def test_set_keys_cover_every_recipe_section_and_option() -> None:
    from mtlcli.cli.complete import recipe_keys
    from mtlcli.methods.registry import REGISTRY
    from mtlcli.models.registry import ENCODERS

    keys = recipe_keys()
    for key in ("data.name=", "data.augment=", "tasks.0.loss_scale=", "optim.scheduler.gamma=", "train.on_nonfinite=",
                "output.dir=", "output.trackers=", "method.name=", "model.encoder="):  # fmt: skip
        assert key in keys
    for info in REGISTRY.values():
        assert all(f"method.{option}=" in keys for option in info.options.model_fields)
    for spec in ENCODERS.values():
        assert all(f"model.{option}=" in keys for option in spec.options.model_fields)
    assert len(keys) == len(set(keys))
