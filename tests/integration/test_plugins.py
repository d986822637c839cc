"""Plug-ins (issue 19, part 2): an encoder named by import path in a recipe, and a method from another package's
entry point (group mtlcli.methods). The example package tests/fixtures/mtl_plugin_example is installed with pip
into a temporary directory, as a user would install theirs, and trained through the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.errors import MtlError, RecipeError
from mtlcli.methods import REGISTRY
from mtlcli.recipe import validate
from tests.conftest import ROOT

runner = CliRunner()
EXAMPLE = ROOT / "tests" / "fixtures" / "mtl_plugin_example"
ENCODER = "mtl_plugin_example.encoders:small_cnn"
METHOD = "inverse-loss-ema"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plug-in installed by pip (no index, no build isolation) into a directory of its own."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, root / "source")  # the build writes egg-info next to the sources: a copy
    site = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "--target", str(site), str(source)], check=True, capture_output=True, timeout=300)
    return site


def on_path(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """Put `directory` on sys.path (its packages and their entry points), as PYTHONPATH would."""
    monkeypatch.syspath_prepend(str(directory))
    REGISTRY.reload()


@pytest.fixture
def plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    on_path(monkeypatch, plugin_site)
    yield plugin_site
    REGISTRY.reload()  # sys.path is restored after this: the registry reads it again


@pytest.fixture
def broken_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution (only its metadata) declaring two broken method entry points, one per way of failing."""
    dist = tmp_path / "broken_site" / "broken_plugins-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mtlcli.methods]\nno-module = nowhere_at_all.methods:spec\n")
    on_path(monkeypatch, dist.parent)
    yield dist
    REGISTRY.reload()


def plugin_recipe(tiny_recipe: dict[str, Any], **model: Any) -> dict[str, Any]:
    tiny_recipe["model"] = {"encoder": ENCODER, "width": 4, "features": 8, **model}
    tiny_recipe["method"] = {"name": METHOD, "beta": 0.5}
    return tiny_recipe


def test_mtl_methods_lists_the_plugin_method_after_the_built_in_ones(plugin: Path) -> None:
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    headers = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert headers[-1] == METHOD and METHOD not in headers[:-1]
    one = runner.invoke(app, ["methods", METHOD])
    assert one.exit_code == 0, one.output
    assert "plug-in: mtl_plugin_example.inverse_loss_ema (from mtl-plugin-example 0.1.0)" in one.stdout
    assert "beta = 0.9  (float)" in one.stdout and "paper: none (an example)" in one.stdout


def test_without_the_plugin_installed_the_method_is_unknown(tiny_recipe: dict[str, Any]) -> None:
    REGISTRY.reload()
    assert METHOD not in REGISTRY
    with pytest.raises(RecipeError, match=f"method.name: unknown method '{METHOD}'"):
        validate(plugin_recipe(tiny_recipe))


def test_a_plugin_methods_options_are_validated_like_a_built_in_ones(plugin: Path, tiny_recipe: dict[str, Any]) -> None:
    raw = plugin_recipe(tiny_recipe)
    raw["method"] = {"name": METHOD, "beta": 2, "bet": 0.5}
    with pytest.raises(RecipeError) as info:
        validate(raw)
    problems = "\n".join(info.value.problems)
    assert "method.bet: does not apply to inverse-loss-ema" in problems and "did you mean 'beta'?" in problems
    assert "method.beta: must be < 1" in problems
    raw["method"] = {"name": METHOD}
    assert validate(raw).method.options == {"beta": 0.9}  # the defaults filled in, as for a built-in method


def test_trains_one_epoch_with_the_plugin_encoder_and_method_and_checkpoints_its_state(
    plugin: Path, tiny_recipe: dict[str, Any], write_recipe: Any
) -> None:
    import mtlcli
    from mtlcli.methods import build
    from mtlcli.training.checkpoint import load_checkpoint

    path = write_recipe(plugin_recipe(tiny_recipe))
    result = runner.invoke(app, ["train", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    run = mtlcli.Run.load(result.stdout.strip().splitlines()[-1])
    assert run.summary is not None and run.summary["status"] == "complete"
    assert run.recipe["model"] == {"encoder": ENCODER, "width": 4, "features": 8}
    assert run.recipe["method"] == {"name": METHOD, "beta": 0.5}
    state = load_checkpoint(run.dir / "last.pt")
    assert state["model"]["encoder.conv.weight"].shape == (4, 1, 3, 3)  # the plug-in's encoder, width 4
    assert state["model"]["heads.left.weight"].shape == (10, 8)  # a linear head on its 8-d z, found by a forward pass
    ema = state["method"]["ema"]
    assert ema.shape == (2,) and not torch.equal(ema, torch.ones(2))  # the method's state moved and was saved
    again = build(METHOD, beta=0.5)
    again.setup(2, torch.device("cpu"))
    again.load_state_dict(state["method"])
    assert torch.equal(again.state_dict()["ema"], ema)
    evaluated = runner.invoke(app, ["eval", str(run.dir), "--json"])  # the model is rebuilt from the recipe's import path
    assert evaluated.exit_code == 0, evaluated.output
    assert mtlcli.compare([run.dir])["method"].tolist() == [METHOD]


@pytest.mark.parametrize(
    ("method", "parameter"),
    [("gradnorm", "encoder.conv.weight"), ("single-task", "encoder.encoders.1.conv.weight")],  # last_layer; T encoders
)
def test_built_in_methods_train_on_the_plugin_encoder(
    plugin: Path, tiny_recipe: dict[str, Any], write_recipe: Any, method: str, parameter: str
) -> None:
    from mtlcli.training.checkpoint import load_checkpoint

    raw = plugin_recipe(tiny_recipe)
    raw["method"] = {"name": method}
    result = runner.invoke(app, ["train", str(write_recipe(raw)), "--quiet"])
    assert result.exit_code == 0, result.output
    assert parameter in load_checkpoint(Path(result.stdout.strip().splitlines()[-1]) / "last.pt")["model"]


@pytest.mark.parametrize(
    ("encoder", "model", "message", "hint"),
    [
        ("nowhere_at_all.encoders:cnn", {}, "model.encoder: cannot import nowhere_at_all.encoders "
         "(no module named 'nowhere_at_all')", "install the package that provides it"),
        ("mtl_plugin_example.encoders:missing", {}, "model.encoder: module mtl_plugin_example.encoders has no attribute "
         "'missing'", "check the name after the colon"),
        ("mtl_plugin_example.encoders:not_a_module", {}, "model.encoder mtl_plugin_example.encoders:not_a_module returned "
         "a dict, not a torch.nn.Module", "the factory must return an nn.Module"),
        (ENCODER, {"colour": 3}, f"model.encoder {ENCODER} cannot take the recipe's model options: got an unexpected "
         "keyword argument 'colour'", "it takes: width, features, input_shape"),
    ],
    ids=["no-module", "no-attribute", "not-a-module", "bad-option"],
)  # fmt: skip
def test_a_plugin_encoder_that_cannot_be_built_is_one_error_line_with_a_hint(
    plugin: Path, tiny_recipe: dict[str, Any], write_recipe: Any, encoder: str, model: dict[str, Any], message: str,
    hint: str,
) -> None:  # fmt: skip
    raw = plugin_recipe(tiny_recipe)
    raw["model"] = {"encoder": encoder, **model}
    result = runner.invoke(app, ["train", str(write_recipe(raw)), "--quiet"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert errors == [f"Error: {message}"], result.output
    assert any(line.startswith("Hint:") and hint in line for line in lines), result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("encoder", "problem"),
    [
        ("os:system", "model.encoder: 'os:system': os is part of Python's standard library, not a plug-in"),
        ("my package:f", "model.encoder: 'my package:f' is not an import path: write package.module:factory"),
        ("pkg.module:", "model.encoder: 'pkg.module:' is not an import path"),
    ],
)
def test_a_malformed_or_standard_library_import_path_is_a_recipe_problem(
    tiny_recipe: dict[str, Any], encoder: str, problem: str
) -> None:
    tiny_recipe["model"] = {"encoder": encoder}
    with pytest.raises(RecipeError) as info:
        validate(tiny_recipe)
    assert info.value.problems[0].startswith(problem)


def test_a_broken_plugin_is_one_error_naming_its_entry_point(broken_plugins: Path) -> None:
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: method plug-in 'no-module' (entry point mtlcli.methods: no-module = nowhere_at_all.methods:spec): "
        "cannot import nowhere_at_all.methods (no module named 'nowhere_at_all')"
    ]
    assert "mgda-ub" in REGISTRY and REGISTRY["mgda-ub"].name == "mgda-ub"  # a built-in name reads no plug-in


def write_plugin(directory: Path, module: str, body: str, entry: str = "my-method") -> None:
    """A plug-in module and a distribution declaring it under group mtlcli.methods, on `directory`."""
    (directory / f"{module}.py").write_text(body)
    dist = directory / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mtlcli.methods]\n{entry} = {module}\n")


@pytest.mark.parametrize(
    ("entry", "body", "message"),
    [
        ("my-method", "name = 'my-method'\n", "lacks summary, paper, options, build"),
        ("my-method", "name = 'other'\nsummary = paper = ''\noptions = dict\nbuild = print\n",
         "its name is 'other', its entry point's 'my-method'; options is not a pydantic model class"),
        ("uniform", "name = 'uniform'\n", "is named like a built-in method"),
    ],
    ids=["incomplete", "wrong-name-and-options", "built-in-name"],
)  # fmt: skip
def test_a_plugin_that_breaks_the_protocol_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str, body: str, message: str
) -> None:
    module = f"plugin_{tmp_path.name.replace('-', '_')}"
    write_plugin(tmp_path, module, body, entry)
    on_path(monkeypatch, tmp_path)
    try:
        with pytest.raises(MtlError, match=message) as info:
            _ = REGISTRY[entry] if entry != "uniform" else list(REGISTRY)
        assert entry in info.value.message and module in info.value.message
    finally:
        REGISTRY.reload()


def test_a_plugin_whose_build_returns_no_method_is_one_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mtlcli.methods import build

    body = (
        "from pydantic import BaseModel\n"
        "name, summary, paper = 'my-method', 'nothing', 'none'\n"
        "class options(BaseModel):\n    pass\n"
        "def build(options):\n    return object()\n"
    )
    write_plugin(tmp_path, "plugin_no_method", body)
    on_path(monkeypatch, tmp_path)
    try:
        with pytest.raises(MtlError, match="build returned object, which lacks backward, setup, parameters") as info:
            build("my-method")
        assert "Stateless" in (info.value.hint or "")
    finally:
        REGISTRY.reload()


def test_completion_offers_a_plugins_name_and_options_and_skips_a_broken_one(
    plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtlcli.cli.complete import methods, recipe_keys

    assert methods("inverse-") == [METHOD] and "method.beta=" in recipe_keys()
    write_plugin(tmp_path, "plugin_broken_for_completion", "name = 'broken'\n", entry="broken")
    on_path(monkeypatch, tmp_path)
    assert methods("")[-2:] == ["broken", METHOD] and "method.beta=" in recipe_keys()  # no error on TAB


def test_an_interrupted_plugin_run_resumes_bitwise_with_the_methods_state(plugin: Path, data_dir: Path, tmp_path: Path) -> None:
    """SIGTERM in epoch 2, then --resume: the same metrics, model and method state (the EMA) as one run of 2 epochs."""
    import signal

    from mtlcli.training.checkpoint import load_checkpoint
    from tests.integration._reliability import assert_same_run, recipe, trainer
    from tests.integration.test_resume import STEPS, interrupted_then_resumed

    raw = plugin_recipe(recipe(data_dir, tmp_path / "out", epochs=2))
    reference = trainer(raw).run()
    resumed, _ = interrupted_then_resumed(raw, STEPS + 2, signal.SIGTERM)
    assert resumed.run_dir is not None
    assert_same_run(reference, resumed.run_dir)
    ema = [load_checkpoint(run / "last.pt")["method"]["ema"] for run in (reference, resumed.run_dir)]
    assert torch.equal(ema[0], ema[1]) and not torch.equal(ema[0], torch.ones(2))
