"""Non-finite numbers: a NaN/inf loss or gradient stops training naming the task and the step, keeping the
last good checkpoint; `train.on_nonfinite: skip` drops the step (no parameter or optimiser change) and
counts it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.training import NonFiniteError, Trainer, load_checkpoint
from mtlcli.training import loop as loop_module
from tests.integration._reliability import recipe, trainer

STEPS = 4


def poison_task(t: Trainer, task: str, steps: set[int], value: float = math.nan) -> None:
    """Make `task`'s head output `value` at the given training steps (so its loss is non-finite)."""

    def hook(module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if module.training and t.global_step + 1 in steps:
            return out * value
        return None

    t.model.heads[task].register_forward_hook(hook)


def test_nan_loss_stops_naming_task_and_step_and_keeps_last_good_checkpoint(data_dir, tmp_path) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=3))
    poison_task(t, "right", {STEPS + 2})  # epoch 2, batch 2
    with pytest.raises(NonFiniteError) as info:
        t.run()
    err = info.value
    assert err.step == STEPS + 2 and err.tasks == ["right"]
    assert "non-finite loss at step 6 (epoch 2, batch 2): task 'right' loss is nan" in err.message
    assert "'left'" not in err.message
    assert err.hint is not None and f"{t.run_dir / 'last.pt'} (end of epoch 1), is kept" in err.hint
    state = load_checkpoint(t.run_dir / "last.pt")
    assert state["position"]["epoch"] == 2 and state["position"]["batch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [json.loads(line)["epoch"] for line in (t.run_dir / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (t.run_dir / "summary.json").exists()


def test_inf_gradient_stops_naming_the_parameter(data_dir, tmp_path) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=1))
    weight = t.model.heads["left"].fc1.weight
    name = next(n for n, p in t.model.named_parameters() if p is weight)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * math.inf if t.global_step + 1 == 3 else grad

    weight.register_hook(hook)
    with pytest.raises(NonFiniteError, match=rf"non-finite gradient at step 3 \(epoch 1, batch 3\) in {name}"):
        t.run()
    assert not (t.run_dir / "last.pt").exists()


def test_cli_prints_one_clear_line_and_exits_non_zero(data_dir, tmp_path, write_recipe, monkeypatch) -> None:
    real = loop_module.make_model
    calls = {"n": 0}

    def poisoned(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real(*args, **kwargs)

        def hook(module: torch.nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
            if module.training:
                calls["n"] += 1
                if calls["n"] == 2:
                    return out * math.inf
            return out

        model.heads["left"].register_forward_hook(hook)
        return model

    monkeypatch.setattr(loop_module, "make_model", poisoned)
    path = write_recipe(recipe(data_dir, tmp_path / "out", epochs=1))
    result = CliRunner().invoke(app, ["train", str(path), "-q"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "Error: non-finite loss at step 2 (epoch 1, batch 2): task 'left' loss is" in " ".join(result.output.split())
    assert "no checkpoint had been written yet" in " ".join(result.output.split())


def test_skip_drops_bad_steps_counts_them_and_finishes(data_dir, tmp_path) -> None:
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=2, on_nonfinite="skip"))
    poison_task(t, "right", {2, 3})
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(module: torch.nn.Module, _args: Any) -> None:
        if module.training:
            snapshots[t.global_step + 1] = {k: v.clone() for k, v in module.state_dict().items()}
            snapshots[-(t.global_step + 1)] = {id(p): {k: v.clone() for k, v in s.items()} for p, s in t.optimizer.state.items()}

    t.model.register_forward_pre_hook(snapshot)
    steps = []
    t.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    run_dir = t.run()
    # steps 2 and 3 were dropped: the model and optimiser state before steps 3 and 4 equal those before step 2
    for key, value in snapshots[2].items():
        assert torch.equal(value, snapshots[4][key]), key
    for p, state in snapshots[-2].items():
        for k, v in state.items():
            assert torch.equal(v, snapshots[-4][p][k])
    assert len(steps) == 2 * STEPS - 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [2, 0]
    assert all(math.isfinite(v) for r in records for v in r["train"]["loss"].values())
    assert json.loads((run_dir / "summary.json").read_text())["skipped_steps"] == 2


def test_guard_on_cuda_stop_defers_the_check_without_a_per_step_sync() -> None:
    """The device-side record (used on CUDA under `stop`) keeps the first bad step and its losses."""
    from mtlcli.training import NonFiniteGuard

    p = torch.nn.Parameter(torch.zeros(2))
    guard = NonFiniteGuard(["a", "b"], [("w", p)], torch.device("cpu"), "stop")
    guard.immediate = False  # what a CUDA device selects
    p.grad = torch.ones(2)
    assert guard.observe(1, torch.tensor([1.0, 2.0]), "x") is True
    guard.check(lambda s: f"batch {s}")
    assert guard.observe(2, torch.tensor([1.0, math.inf]), "x") is True  # recorded, not raised
    assert guard.observe(3, torch.tensor([math.nan, 1.0]), "x") is True  # a later bad step is not the first
    with pytest.raises(NonFiniteError, match=r"step 2 \(batch 2\): task 'b' loss is inf"):
        guard.check(lambda s: f"batch {s}")


def test_guard_flags_each_parameter_and_ignores_those_without_gradients() -> None:
    from mtlcli.training import NonFiniteGuard

    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    guard = NonFiniteGuard(["t"], [("a", a), ("b", b), ("c", c)], torch.device("cpu"), "stop")
    a.grad, c.grad = torch.tensor([1e38, -1e38, 0.0]), torch.tensor([1.0, -math.inf, 0.0])  # b has none
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 7 \(here\) in c;"):
        guard.observe(7, torch.tensor([0.5]), "here")
    c.grad = torch.ones(3)
    assert guard.observe(8, torch.tensor([0.5]), "here") is True  # huge but finite is fine
    empty = NonFiniteGuard(["t"], [], torch.device("cpu"), "skip")
    assert empty.observe(1, torch.tensor([0.5]), "x") is True
    assert empty.observe(2, torch.tensor([math.nan]), "x") is False


def test_deferred_check_as_on_cuda_names_the_first_bad_step_and_saves_nothing_poisoned(data_dir, tmp_path) -> None:
    """On CUDA under `stop` the flag is read only at refreshes and epoch ends: the bad step has been
    applied by then, so nothing more may be saved; the error still names the first bad step."""
    t = trainer(recipe(data_dir, tmp_path / "out", epochs=3))
    t.guard.immediate = False  # what a CUDA device selects under `stop`
    poison_task(t, "left", {STEPS + 2, STEPS + 3})
    with pytest.raises(NonFiniteError, match=r"step 6 \(epoch 2, batch 2\): task 'left' loss is nan"):
        t.run()
    assert t.global_step == 2 * STEPS  # it ran on to the end-of-epoch check ...
    state = load_checkpoint(t.run_dir / "last.pt")  # ... but saved nothing after the bad step
    assert state["position"]["epoch"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert [json.loads(line)["epoch"] for line in (t.run_dir / "metrics.jsonl").read_text().splitlines()] == [1]


def test_skipped_steps_leave_gradnorm_weights_and_their_optimiser_untouched(data_dir, tmp_path) -> None:
    """GradNorm updates its own weights inside backward; a step the trainer drops must undo that too."""
    raw = recipe(data_dir, tmp_path / "out", epochs=1, on_nonfinite="skip")
    raw["method"] = {"name": "gradnorm"}
    t = trainer(raw)
    poison_task(t, "right", {2, 3})
    states: dict[int, dict[str, Any]] = {}

    def snapshot(module: torch.nn.Module, _args: Any) -> None:
        if module.training:
            state = t.method.state_dict()
            states[t.global_step + 1] = {
                "w": state["w"].clone(),
                "initial": state["initial_losses"].clone(),
                "adam": {k: v.clone() for k, v in state["optimizer"]["state"].get(0, {}).items()},
            }

    t.model.register_forward_pre_hook(snapshot)
    t.run()
    before, after = states[2], states[4]  # steps 2 and 3 dropped: the state before 4 is the state before 2
    assert torch.equal(before["w"], after["w"]) and torch.equal(before["initial"], after["initial"])
    assert before["adam"].keys() == after["adam"].keys()
    assert all(torch.equal(before["adam"][k], after["adam"][k]) for k in before["adam"])
    assert not torch.equal(states[1]["w"], states[2]["w"])  # an applied step does move them


@pytest.mark.parametrize("method", ["mgda-ub", "mgda", "imtl-g"])
def test_a_non_finite_task_gradient_is_named_not_hidden_by_the_solver(data_dir, tmp_path, method: str) -> None:
    """A finite loss with a non-finite gradient makes the Gram matrix non-finite: the weights come back
    NaN for that task (not silently uniform) and the guard names the task and the step."""
    raw = recipe(data_dir, tmp_path / "out", epochs=1)
    raw["method"] = {"name": method}
    t = trainer(raw)

    def hook(module: torch.nn.Module, _args: Any, out: torch.Tensor) -> None:
        if module.training and t.global_step + 1 == 3:
            out.register_hook(lambda g: g * math.inf)

    t.model.heads["right"].register_forward_hook(hook)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient at step 3 \(epoch 1, batch 3\) of task 'right'"):
        t.run()
