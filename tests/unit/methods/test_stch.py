"""STCH: the scalarised loss, its gradient, the mu limits, the warm-up and reference point, state round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.stch import stch_objective, stch_weights
from mtlcli.models import MultiTaskModel
from mtlcli.training import load_checkpoint

CPU = torch.device("cpu")
NADIR = [2.0, 0.5, 10.0]


def stch(num_tasks: int = 3, **options):
    method = build("stch", **options)
    method.setup(num_tasks, CPU)
    return method


def past_warmup(nadir: list[float] = NADIR, **options):
    """A method whose warm-up (warmup_epoch=1: epochs 0 and 1) is over, the nadir being epoch 1's mean losses."""
    method = stch(**{"warmup_epoch": 1, **options})
    method.end_epoch(torch.tensor([9.0, 9.0, 9.0]))
    method.end_epoch(torch.tensor(nadir))
    return method


def libmtl_reference(losses: torch.Tensor, nadir: torch.Tensor, mu: float) -> torch.Tensor:
    """LibMTL's expression: the log-normalised losses shifted by their detached max, T mu log sum exp(./mu)."""
    losses = torch.log(losses / nadir + 1e-20)
    reg = losses - torch.max(losses.data).detach()
    return mu * torch.log(torch.sum(torch.exp(reg / mu))) * losses.shape[0]


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(5, 4), nn.Tanh())
    model = MultiTaskModel(encoder, {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1), "c": nn.Linear(4, 1)})
    x, targets = torch.randn(16, 5), torch.randn(16, 3)
    scales = torch.tensor([1.0, 10.0, 0.1])

    def step() -> Step:
        model.zero_grad(set_to_none=True)
        z, out = model(x)
        return Step.of(model, z, [((out[n].squeeze(1) - targets[:, i]) ** 2).mean() * scales[i] for i, n in enumerate("abc")])

    return model, step


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_the_loss_is_the_formula_by_hand() -> None:
    losses, nadir, mu = [1.0, 0.8, 12.0], NADIR, 0.5
    normalised = [math.log(a / n) for a, n in zip(losses, nadir, strict=True)]
    by_hand = 3 * mu * math.log(sum(math.exp(v / mu) for v in normalised))
    got = stch_objective(torch.tensor(losses, dtype=torch.float64), torch.tensor(nadir, dtype=torch.float64), mu)
    assert float(got) == pytest.approx(by_hand, rel=1e-12)
    # LibMTL's value differs by the detached shift T max_t l_t only
    ref = libmtl_reference(torch.tensor(losses, dtype=torch.float64), torch.tensor(nadir, dtype=torch.float64), mu)
    assert float(ref) == pytest.approx(by_hand - 3 * max(normalised), rel=1e-12)


@pytest.mark.parametrize("mu", [0.05, 1.0, 20.0])
def test_weights_are_the_derivative_of_the_objective(mu: float) -> None:
    losses = torch.tensor([1.0, 0.8, 12.0], dtype=torch.float64, requires_grad=True)
    nadir = torch.tensor(NADIR, dtype=torch.float64)
    (grad,) = torch.autograd.grad(libmtl_reference(losses, nadir, mu), losses)
    torch.testing.assert_close(stch_weights(losses, nadir, mu), grad)


@pytest.mark.parametrize("warm", [True, False])
def test_the_gradient_is_that_of_the_reference_expression(warm: bool) -> None:
    model, step = _problem()
    method = stch(warmup_epoch=1) if warm else past_warmup(mu=0.3)
    assert method.warming_up is warm
    weights = method.backward(step())
    assert not weights.requires_grad and weights.shape == (3,)
    got = _grads(model)
    losses = step().losses
    reference = torch.log(losses + 1e-20).sum() if warm else libmtl_reference(losses, torch.tensor(NADIR), 0.3)
    reference.backward()
    for a, b in zip(got, _grads(model), strict=True):
        torch.testing.assert_close(a, b)
    # one weighted backward of the returned (effective) weights
    s = step()
    torch.sum(weights * s.losses).backward()
    for a, b in zip(got, _grads(model), strict=True):
        torch.testing.assert_close(a, b)


def test_small_mu_approaches_the_tchebycheff_max() -> None:
    losses = torch.tensor([1.0, 0.8, 12.0], dtype=torch.float64)  # L / n: 0.5, 1.6 (worst), 1.2
    nadir = torch.tensor(NADIR, dtype=torch.float64)
    normalised = torch.log(losses / nadir)
    value = stch_objective(losses, nadir, 1e-3)
    assert float(value) == pytest.approx(3 * float(normalised.max()), abs=1e-6)
    weights = stch_weights(losses, nadir, 1e-3)
    # the gradient concentrates on the worst task: d(T log(L_1/n_1))/dL_1 = T / L_1
    torch.testing.assert_close(weights, torch.tensor([0.0, 3 / 0.8, 0.0], dtype=torch.float64), atol=1e-12, rtol=1e-9)
    method = past_warmup(mu=1e-3)
    w = method.backward(Step(model=None, z=None, losses=losses.float().requires_grad_()))  # type: ignore[arg-type]
    assert int(w.argmax()) == 1 and float(w[0] + w[2]) < 1e-6


def test_large_mu_approaches_the_mean_of_the_normalised_losses() -> None:
    losses = torch.tensor([1.0, 0.8, 12.0], dtype=torch.float64)
    nadir = torch.tensor(NADIR, dtype=torch.float64)
    normalised = torch.log(losses / nadir)
    mu = 1e5
    smooth_max = stch_objective(losses, nadir, mu) / 3  # mu logsumexp(l / mu)
    assert float(smooth_max - mu * math.log(3)) == pytest.approx(float(normalised.mean()), abs=1e-4)
    # the weights tend to those of sum_t log(L_t / n_t): 1 / L_t (uniform on the normalised losses)
    torch.testing.assert_close(stch_weights(losses, nadir, mu), 1 / losses, rtol=1e-4, atol=0)


def test_warmup_trains_on_log_losses_and_sets_the_nadir_after_epoch_warmup_epoch() -> None:
    method = stch(warmup_epoch=2)
    losses = torch.tensor([1.0, 0.8, 12.0], requires_grad=True)
    fixed = Step(model=None, z=None, losses=losses)  # type: ignore[arg-type]
    for epoch, means in enumerate(([5.0, 5.0, 5.0], [4.0, 4.0, 4.0], NADIR)):  # epochs 0, 1, 2 = warmup_epoch
        assert method.warming_up
        torch.testing.assert_close(method.backward(fixed), 1 / losses.detach())
        method.end_epoch(torch.tensor(means))
        assert method.epochs == epoch + 1
    assert not method.warming_up  # epoch 3 = warmup_epoch + 1 is the first STCH epoch
    torch.testing.assert_close(method.state_dict()["nadir"], torch.tensor(NADIR))
    torch.testing.assert_close(method.backward(fixed), stch_weights(losses, torch.tensor(NADIR), 1.0))
    method.end_epoch(torch.tensor([0.1, 0.1, 0.1]))  # later epochs leave the reference point alone
    torch.testing.assert_close(method.state_dict()["nadir"], torch.tensor(NADIR))


def test_warmup_zero_uses_the_first_epoch_and_an_unusable_epoch_defers_the_nadir() -> None:
    method = stch(warmup_epoch=0)
    method.end_epoch(torch.tensor([0.0, 1.0, 1.0]))  # every step skipped: no reference point yet
    assert method.warming_up
    method.end_epoch(torch.tensor([1.0, float("nan"), 1.0]))
    assert method.warming_up
    method.end_epoch(torch.tensor(NADIR))
    assert not method.warming_up
    torch.testing.assert_close(method.state_dict()["nadir"], torch.tensor(NADIR))


def test_options_are_validated() -> None:
    assert stch().options.mu == 1.0 and stch().options.warmup_epoch == 4  # LibMTL's defaults
    with pytest.raises(MtlError):
        build("stch", mu=0)
    with pytest.raises(MtlError):
        build("stch", warmup_epoch=-1)


def test_state_round_trips_to_identical_weights() -> None:
    fixed = Step(model=None, z=None, losses=torch.tensor([1.0, 0.8, 12.0], requires_grad=True))  # type: ignore[arg-type]
    for epochs in (1, 3):  # inside the warm-up, and after it
        a = stch(warmup_epoch=1, mu=0.4)
        for e in range(epochs):
            a.end_epoch(torch.tensor(NADIR) * (e + 1))
        state = a.state_dict()
        assert set(state) == {"nadir", "recorded", "epochs"} and all(isinstance(v, torch.Tensor) for v in state.values())
        b = stch(warmup_epoch=1, mu=0.4)
        b.load_state_dict(state)
        assert b.warming_up == a.warming_up and b.epochs == a.epochs
        assert torch.equal(b.backward(fixed), a.backward(fixed))
        for method in (a, b):
            method.end_epoch(torch.tensor([0.4, 0.8, 3.0]))
        assert torch.equal(b.backward(fixed), a.backward(fixed))
        assert not b.warming_up


def test_trains_past_the_warmup_through_the_cli(tiny_recipe, write_recipe) -> None:
    """warmup_epoch=0, 2 epochs: epoch 0 warms up and sets the nadir to its mean losses, epoch 1 runs STCH."""
    tiny_recipe["train"]["epochs"] = 2
    tiny_recipe["method"] = {"name": "stch", "warmup_epoch": 0, "mu": 0.5}
    result = CliRunner().invoke(app, ["train", str(write_recipe(tiny_recipe)), "-q"])
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2
    state = load_checkpoint(run_dir / "last.pt")["method"]
    assert bool(state["recorded"]) and int(state["epochs"]) == 2
    first = torch.tensor(list(metrics[0]["train"]["loss"].values()))
    torch.testing.assert_close(state["nadir"].float(), first.float())
    assert all(math.isfinite(v) and v > 0 for v in metrics[1]["alphas"].values())
