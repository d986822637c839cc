"""`mtl ablate`: seconds on CPU with --synthetic, one table next to the runs that compare picks up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli import methods
from mtlcli.ablation import DEFAULT_METHODS, MethodSpec, parse_methods, run_ablation
from mtlcli.cli import app
from mtlcli.errors import MtlError
from mtlcli.recipe import validate
from tests.fake_runs import write_study

runner = CliRunner()
FAST = ["--steps", "2", "--warmup", "1", "--batch-size", "16", "--device", "cpu"]


def test_ablate_synthetic_writes_a_table_that_compare_includes(tiny_recipe, write_recipe, tmp_path: Path) -> None:
    tiny_recipe["data"]["dir"] = str(tmp_path / "nowhere")  # --synthetic needs no prepared data
    recipe = write_recipe(tiny_recipe)
    out = tmp_path / "runs"
    result = runner.invoke(app, ["ablate", str(recipe), "--synthetic", *FAST, "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    labels = [row["method"] for row in table["rows"]]
    assert labels[:2] == ["uniform", "mgda-ub"]
    assert table["rows"][0]["× uniform"] == pytest.approx(1.0)
    assert all(row["ms/step"] > 0 for row in table["rows"])
    assert "random tensors" in table["caption"] and "median of 2 steps" in table["caption"]
    payload = json.loads((out / "ablation-multifashion-cpu.json").read_text())
    assert payload["kind"] == "mtl-ablation" and payload["synthetic"] is True and payload["methods"][0]["peak_mib"] is None
    skipped = {note.split(":")[0] for note in payload["skipped"]}
    missing = {MethodSpec.parse(s).label for s in DEFAULT_METHODS if MethodSpec.parse(s).name not in methods.REGISTRY}
    assert missing <= skipped
    write_study(out / "study")
    result = runner.invoke(app, ["compare", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert "ablation-multifashion-cpu" in json.loads(result.stdout)


def test_ablate_real_data_and_explicit_methods(tiny_recipe, write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["ablate", str(recipe), *FAST, "--methods", "mgda-ub,uniform", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ablation-multifashion-cpu.json").read_text())
    assert payload["synthetic"] is False
    assert [r["label"] for r in payload["methods"]] == ["mgda-ub", "uniform"]
    assert payload["methods"][1]["ratio"] == pytest.approx(1.0)
    assert payload["methods"][1]["cpu_ratio"] == pytest.approx(1.0) and payload["methods"][0]["cpu_median_ms"] > 0


@pytest.mark.parametrize(
    ("methods_arg", "message"),
    [("nope", "unknown method 'nope'"), ("mgda-ub:bogus=1", "bogus"), ("uniform,uniform", "twice"), ("uniform:x", "key=value")],
)
def test_ablate_bad_methods_are_one_line_errors(tiny_recipe, write_recipe, methods_arg: str, message: str) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["ablate", str(recipe), "--synthetic", *FAST, "--methods", methods_arg])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_default_methods_skip_what_is_not_registered() -> None:
    specs, notes = parse_methods(None)
    assert [s.name for s in specs][:2] == ["uniform", "mgda-ub"]
    assert all(s.name in methods.REGISTRY for s in specs)
    assert len(specs) + len(notes) == len(DEFAULT_METHODS)
    with pytest.raises(MtlError):
        MethodSpec.parse(":a=1")


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_every_registered_method_can_be_timed(name: str, tiny_recipe) -> None:
    """Every per-step method times; one that is not (a sweep such as grid) is a clear MtlError."""
    tiny_recipe["data"]["synthetic"] = True
    tiny_recipe["train"]["batch_size"] = 8
    recipe = validate(tiny_recipe)
    specs = [MethodSpec("uniform"), MethodSpec(name)] if name != "uniform" else [MethodSpec("uniform")]
    try:
        payload = run_ablation(recipe, specs, steps=3, warmup=1, block=2)
    except MtlError as exc:
        assert name not in ("uniform", "mgda-ub") and exc.message
        return
    row = payload["methods"][-1]
    assert row["timed_steps"] == 3 and payload["block"] == 2
    assert row["median_ms"] > 0 and row["ratio"] > 0 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]


def test_methods_with_list_options_and_bad_yaml(tiny_recipe, write_recipe) -> None:
    from mtlcli.ablation import parse_methods, split_top_level

    assert split_top_level("uniform,static:weights=[0.3,0.7],mgda:grads=loop") == [
        "uniform",
        "static:weights=[0.3,0.7]",
        "mgda:grads=loop",
    ]
    specs, _ = parse_methods(["uniform,static:weights=[0.3,0.7]"])
    assert specs[1].options == {"weights": [0.3, 0.7]}
    result = runner.invoke(app, ["ablate", str(write_recipe(tiny_recipe)), "--methods", "static:weights=[0.5", "--synthetic"])
    assert result.exit_code == 1 and "broken YAML" in result.output and "Traceback" not in result.output


def test_ablate_times_bf16_steps_and_refuses_fp16(tiny_recipe, write_recipe, tmp_path: Path) -> None:
    """`train.precision` applies to the timed steps (autocast around the forward and the losses) and is recorded."""
    recipe = write_recipe(tiny_recipe)
    args = ["ablate", str(recipe), "--synthetic", *FAST, "--methods", "uniform,mgda-ub", "--out", str(tmp_path)]
    result = runner.invoke(app, [*args, "--set", "train.precision=bf16"])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ablation-multifashion-cpu.json").read_text())
    assert payload["precision"] == "bf16" and all(m["median_ms"] > 0 for m in payload["methods"])
    result = runner.invoke(app, [*args, "--set", "train.precision=fp16"])
    assert result.exit_code == 1 and "fp32 and bf16" in result.output and "Traceback" not in result.output
