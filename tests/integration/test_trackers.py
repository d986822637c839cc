"""Experiment trackers (`output.trackers`): TensorBoard event files and MLflow's local file store, written by
`mtl train` on the tiny data and read back with the packages' own readers; a missing package is one error."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.recipe import validate
from mtlcli.results import variant_labels
from mtlcli.runs import Run
from mtlcli.training import Trainer
from tests.integration._reliability import recipe as tiny_recipe
from tests.integration._reliability import trainer

runner = CliRunner()
STEPS = 4  # 108 tiny training images in batches of 32


def train(path: Path, *args: str) -> Path:
    result = runner.invoke(app, ["train", str(path), "-q", *args])
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def scalars_of(record: dict[str, Any]) -> dict[str, float]:
    """What a tracker must hold for one metrics.jsonl line: every number at its key path joined by '/'."""
    out = {f"train/loss/{task}": v for task, v in record["train"]["loss"].items()}
    out |= {f"alphas/{task}": v for task, v in record["alphas"].items()}
    for split in ("val", "test"):
        out |= {f"{split}/{task}/{name}": v for task, metrics in record[split].items() for name, v in metrics.items()}
    keys = ("lr", "steps", "skipped_steps", "val_score", "epoch_seconds", "eval_seconds")
    keys += ("step_seconds_mean", "step_seconds_median")
    out |= {key: record[key] for key in keys}
    assert len(out) == 2 + 2 + 2 * 2 * 2 + len(keys)  # two tasks, accuracy and loss each: nothing left out
    return out


def flat_recipe(node: Any, prefix: str = "") -> dict[str, str]:
    """recipe.yaml as MLflow parameters: sections by key path, a list of sections by index, values as written."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat_recipe(value, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return {k: v for i, value in enumerate(node) for k, v in flat_recipe(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: node if isinstance(node, str) else json.dumps(node)}


def with_trackers(raw: dict[str, Any], trackers: list[str], epochs: int = 1) -> dict[str, Any]:
    raw["train"]["epochs"] = epochs
    raw["output"]["trackers"] = trackers
    return raw


@pytest.fixture
def mlflow_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLflow settings from the environment: the default store, output.dir/mlruns; what mtl sets is undone."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(key, "")  # restored to what it was afterwards, whatever training sets
        monkeypatch.delenv(key)


def read_tensorboard(directory: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def mlflow_client(run_dir: Path) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "mlflow.json").read_text())
    return MlflowClient(tracking_uri=saved["tracking_uri"]), saved["run_id"]


def test_tensorboard_holds_every_epoch_scalar_and_the_recipe(data_dir, tmp_path, write_recipe) -> None:
    run_dir = train(write_recipe(with_trackers(tiny_recipe(data_dir, tmp_path / "out"), ["tensorboard"])))
    events = read_tensorboard(run_dir / "tensorboard")
    [record] = records(run_dir)
    expected = scalars_of(record)
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, value in expected.items():
        [logged] = events.Scalars(tag)
        assert logged.step == 1
        assert logged.value == pytest.approx(value, rel=1e-6)  # event files hold float32
    [text] = events.Tensors("recipe/text_summary")
    shown = textwrap.dedent(text.tensor_proto.string_val[0].decode())
    assert yaml.safe_load(shown) == yaml.safe_load((run_dir / "recipe.yaml").read_text())

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["method.name"].string_value == "mgda-ub"
    assert hparams["optim.lr"].number_value == 0.05
    assert hparams["tasks.1.name"].string_value == "right"
    assert len(hparams) == len(flat_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text())))


def test_mlflow_holds_the_recipe_as_parameters_and_every_epoch_scalar(data_dir, tmp_path, write_recipe, mlflow_store) -> None:
    out = tmp_path / "out"
    run_dir = train(write_recipe(with_trackers(tiny_recipe(data_dir, out), ["mlflow", "tensorboard"], epochs=2)))
    saved = json.loads((run_dir / "mlflow.json").read_text())
    assert saved["tracking_uri"] == (out / "mlruns").resolve().as_uri()
    client, run_id = mlflow_client(run_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
    assert client.get_experiment(run.info.experiment_id).name == "multifashion"
    assert run.data.tags["mtl.run_dir"] == str(run_dir.resolve()) and run.data.tags["mtl.method"] == "mgda-ub"
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert run.data.params == flat_recipe(recipe)
    assert run.data.params["optim.lr"] == "0.05" and run.data.params["output.trackers"] == '["mlflow", "tensorboard"]'
    lines = records(run_dir)
    for key in scalars_of(lines[0]):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(rec["epoch"], pytest.approx(scalars_of(rec)[key], rel=1e-12)) for rec in lines], key
    assert set(run.data.metrics) == set(scalars_of(lines[0]))
    assert (run_dir / "tensorboard").is_dir()  # both trackers at once


def test_resume_appends_to_the_same_tensorboard_dir_and_mlflow_run(data_dir, tmp_path, write_recipe, mlflow_store, monkeypatch):
    path = write_recipe(with_trackers(tiny_recipe(data_dir, tmp_path / "out"), ["tensorboard", "mlflow"], epochs=2))
    monkeypatch.setenv("MTL_SIGNAL_AT_STEP", str(STEPS + 2))  # SIGTERM in epoch 2: epoch 1 is logged and saved
    result = runner.invoke(app, ["train", str(path), "-q"])
    assert result.exit_code != 0 and "resume with" in result.output, result.output
    monkeypatch.delenv("MTL_SIGNAL_AT_STEP")
    [run_dir] = [p for p in (tmp_path / "out").iterdir() if p.name != "mlruns"]
    client, run_id = mlflow_client(run_dir)
    assert client.get_run(run_id).info.status == "KILLED"

    result = runner.invoke(app, ["train", "--resume", str(run_dir), "-q"])
    assert result.exit_code == 0, result.output
    lines = records(run_dir)
    assert [rec["epoch"] for rec in lines] == [1, 2]
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run_id  # the same MLflow run
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"
    for key, value in scalars_of(lines[1]).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(1, pytest.approx(scalars_of(lines[0])[key])), (2, pytest.approx(value))], key
    events = read_tensorboard(run_dir / "tensorboard")
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per session, one dir
    for key in ("train/loss/left", "alphas/right", "val/left/accuracy", "val_score"):
        logged = [(s.step, s.value) for s in events.Scalars(key)]
        assert logged == [(rec["epoch"], pytest.approx(scalars_of(rec)[key], rel=1e-6)) for rec in lines], key
    assert len(events.Tensors("recipe/text_summary")) == 1  # the recipe once, from the first session


def test_a_crash_after_an_unsaved_epoch_logs_that_epoch_again_on_resume(data_dir, tmp_path, mlflow_store) -> None:
    """A crash in epoch 4 with last.pt at epoch 2: epoch 3 is trained and logged again. TensorBoard shows each epoch
    once (the resumed session purges what came after its checkpoint); MLflow keeps both values of epoch 3."""
    raw = with_trackers(tiny_recipe(data_dir, tmp_path / "out", checkpoint_every=2), ["tensorboard", "mlflow"], epochs=4)
    first = trainer(raw)

    def crash(module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if module.training and first.global_step == 3 * STEPS:
            raise RuntimeError("the machine went away")

    first.model.register_forward_hook(crash)
    with pytest.raises(RuntimeError, match="went away"):
        first.run()
    assert first.run_dir is not None
    run_dir = first.run_dir
    before = records(run_dir)
    assert [rec["epoch"] for rec in before] == [1, 2, 3]
    client, run_id = mlflow_client(run_dir)
    assert client.get_run(run_id).info.status == "FAILED"

    Trainer.resume(run_dir, console=Console(quiet=True), show_progress=False).run()
    after = records(run_dir)
    assert [rec["epoch"] for rec in after] == [1, 2, 3, 4]
    key = "val/left/loss"
    events = read_tensorboard(run_dir / "tensorboard")
    expected = [(rec["epoch"], pytest.approx(rec["val"]["left"]["loss"], rel=1e-6)) for rec in after]
    assert [(s.step, s.value) for s in events.Scalars(key)] == expected
    history = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
    assert [(step, value) for step, _, value in history] == [
        (1, before[0]["val"]["left"]["loss"]), (2, before[1]["val"]["left"]["loss"]),
        (3, before[2]["val"]["left"]["loss"]), (3, after[2]["val"]["left"]["loss"]), (4, after[3]["val"]["left"]["loss"]),
    ]  # fmt: skip
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("trackers", "missing", "extras"),
    [(["tensorboard"], ["tensorboard"], "tensorboard"), (["mlflow"], ["mlflow"], "mlflow"),
     (["tensorboard", "mlflow"], ["tensorboard", "mlflow"], "tensorboard,mlflow")],
)  # fmt: skip
def test_a_missing_package_is_one_error_naming_the_extra(
    trackers, missing, extras, data_dir, tmp_path, write_recipe, monkeypatch
) -> None:
    for package in missing:
        monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError, as if not installed
    result = runner.invoke(app, ["train", str(write_recipe(with_trackers(tiny_recipe(data_dir, tmp_path / "out"), trackers)))])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"pip install 'mtlcli[{extras}]'" in result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"mtlcli[{extras}]" in error and "not installed" in error
    assert not (tmp_path / "out").exists()  # nothing trained, no run directory


def test_a_missing_package_stops_a_grid_sweep_before_its_directory(data_dir, tmp_path, write_recipe, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    path = write_recipe(with_trackers(tiny_recipe(data_dir, tmp_path / "out"), ["mlflow"]))
    result = runner.invoke(app, ["train", str(path), "--method", "grid"])
    assert result.exit_code == 1 and "pip install 'mtlcli[mlflow]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_unknown_tracker_is_a_recipe_problem_with_a_suggestion(data_dir, tmp_path, write_recipe) -> None:
    raw = with_trackers(tiny_recipe(data_dir, tmp_path / "out"), ["tensorbord", "wandb"])
    result = runner.invoke(app, ["train", str(write_recipe(raw))])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "output.trackers: unknown tracker 'tensorbord' (did you mean 'tensorboard'?); choose one of: tensorboard, mlflow" in (
        result.output
    )
    assert validate(with_trackers(tiny_recipe(data_dir, tmp_path), "mlflow")).output.trackers == ["mlflow"]  # type: ignore[arg-type]


def test_mlflow_errors_are_one_line_naming_the_store(data_dir, tmp_path, write_recipe, mlflow_store, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "elsewhere").as_uri())  # a file store MLflow refuses by default
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    result = runner.invoke(app, ["train", str(write_recipe(with_trackers(tiny_recipe(data_dir, tmp_path / "out"), ["mlflow"])))])
    assert result.exit_code == 1 and "Traceback" not in result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert f"MLflow ({(tmp_path / 'elsewhere').as_uri()}), opening the tracking store" in error
    assert all(not p.read_text() for p in (tmp_path / "out").glob("*/metrics.jsonl"))  # stopped before the first epoch


def test_runs_differing_only_in_trackers_are_one_setting(tmp_path) -> None:
    base = tiny_recipe(tmp_path, tmp_path)
    runs = [Run(path=tmp_path / str(i), recipe=with_trackers(json.loads(json.dumps(base)), t), metrics=[], summary=None)
            for i, t in enumerate([["tensorboard"], ["mlflow"], ["mlflow"]])]  # fmt: skip
    runs[2].recipe["optim"]["lr"] = 0.01  # what does tell runs apart still shows
    labels = variant_labels(runs)
    assert [labels[run.path] for run in runs] == ["mgda-ub (optim.lr=0.05)", "mgda-ub (optim.lr=0.05)", "mgda-ub (optim.lr=0.01)"]
