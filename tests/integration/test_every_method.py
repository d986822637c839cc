"""Every method trains one epoch on tiny data through the CLI; its state survives the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.methods import REGISTRY, build
from mtlcli.training import load_checkpoint

runner = CliRunner()
PER_STEP = [name for name in REGISTRY if name != "grid"]
EXTRA = {"static": ["--set", "method.weights=[0.3, 0.7]"], "mgda": ["--set", "method.grads=batched"]}
LEARNED = {
    "uncertainty": "s", "imtl-l": "s", "imtl": "s", "gradnorm": "w", "famo": "w", "excess-mtl": "weights",
    "modo": "lambda", "sdmgrad": "w",
}  # fmt: skip


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("method", PER_STEP)
def test_method_trains_and_its_state_round_trips(method: str, tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", method, "-q", *EXTRA.get(method, [])])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == method
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(list(m["alphas"].values()))).all() for m in metrics)

    saved = load_checkpoint(run_dir / "last.pt")["method"]
    fresh = build(method, **saved_options(run_dir))
    fresh.setup(2, torch.device("cpu"))
    before = fresh.state_dict()
    fresh.load_state_dict(saved)
    assert _equal(fresh.state_dict(), saved)
    if method in LEARNED:  # training moved the learnt state away from its initial value, and it was saved
        assert not torch.equal(before[LEARNED[method]], saved[LEARNED[method]])
    if method == "single-task":  # two networks, nothing shared: twice the encoder parameters; eval rebuilds them
        assert summary["parameters"] > 2 * 21_000
        result = runner.invoke(app, ["eval", str(run_dir), "--split", "test", "--json"])
        assert result.exit_code == 0, result.output


def saved_options(run_dir: Path) -> dict:
    method = yaml.safe_load((run_dir / "recipe.yaml").read_text())["method"]
    return {k: v for k, v in method.items() if k != "name"}


def test_grid_writes_one_run_per_point_and_marks_the_best(tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", "grid", "--set", "method.points=3", "-q"])
    assert result.exit_code == 0, result.output
    sweep = Path(result.stdout.strip().splitlines()[-1])
    grid = json.loads((sweep / "grid.json").read_text())
    assert [r["weights"] for r in grid["runs"]] == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    scores = [r["val_score"] for r in grid["runs"]]
    assert grid["best"]["val_score"] == max(scores) and sum(r["best"] for r in grid["runs"]) == 1
    for run in grid["runs"]:
        summary = json.loads((sweep / run["run"] / "summary.json").read_text())
        assert summary["method"] == "static" and summary["method_options"] == {"weights": run["weights"]}
        assert summary.get("grid_best", False) == run["best"]


def test_static_weights_must_match_the_tasks(tiny_recipe, write_recipe) -> None:
    recipe = write_recipe(tiny_recipe)
    result = runner.invoke(app, ["train", str(recipe), "--method", "static", "--set", "method.weights=[0.2, 0.3, 0.5]"])
    assert result.exit_code == 1
    assert "method.weights: 3 weights for 2 tasks" in result.output  # a recipe problem, found before training


@pytest.mark.parametrize(
    "method",
    ["uncertainty", "gradnorm", "imtl", "pcgrad", "famo", "rlw", "imtl-g", "gradvac:groups=layer", "modo", "sdmgrad"],
)
def test_interrupted_run_resumes_exactly_with_the_method_state(method: str, tiny_recipe) -> None:
    """Stop in the middle of epoch 2 (as SIGTERM does), resume from last.pt: same final model and method state as
    an uninterrupted run, so the method's state really went through the checkpoint."""
    import signal

    from mtlcli.recipe import validate
    from mtlcli.training import Trainer, TrainingInterrupted

    tiny_recipe["train"]["epochs"] = 2
    name, _, option = method.partition(":")  # NAME or NAME:OPTION=VALUE
    tiny_recipe["method"] = {"name": name, **dict([option.split("=")] if option else [])}
    recipe = validate(tiny_recipe)
    straight = Trainer(recipe, show_progress=False)
    straight.run()

    interrupted = Trainer(recipe, show_progress=False)
    backward, calls = interrupted.method.backward, []
    stop_at = straight.global_step // 2 + 1

    def stop_mid_epoch_two(step):
        calls.append(1)
        if len(calls) == stop_at:
            signal.raise_signal(signal.SIGTERM)
        return backward(step)

    interrupted.method.backward = stop_mid_epoch_two  # type: ignore[method-assign]
    with pytest.raises(TrainingInterrupted):
        interrupted.run()
    assert interrupted.run_dir is not None
    resumed = Trainer.resume(interrupted.run_dir, show_progress=False)
    assert resumed.position.epoch == 2 and 0 < resumed.position.batch < straight.global_step // 2
    resumed.run()
    assert _equal(resumed.method.state_dict(), straight.method.state_dict())
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
