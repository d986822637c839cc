"""MoCo (Fernando et al., ICLR 2023; LibMTL's MoCo) against a hand computation of LibMTL's algorithm (gradients
rescaled to the loss, tracking with beta / k^beta_sigma, one projected step on lambda with gamma / k^gamma_sigma,
update Y^T lambda), lambda on the simplex, tracking converging on a fixed batch, checkpointing, non-finite
steps, and training through the CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import project_simplex
from mtlcli.methods.moco import Moco
from mtlcli.models import MultiTaskModel

CPU = torch.device("cpu")
LEVELS = [("representation", {}), ("shared", {"grads": "loop"}), ("shared", {"grads": "batched"})]


pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)


def moco(num_tasks: int = 3, **options: Any) -> Moco:
    method = build("moco", **options)
    assert isinstance(method, Moco)
    method.setup(num_tasks, CPU)
    return method


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)

    @property
    def last_layer(self) -> nn.Module:
        return self.fc

    def forward(self, x):
        return torch.tanh(self.fc(x))


def _model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(_Encoder(), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1), "c": nn.Linear(4, 1)})


def _batches(sizes: list[int], seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 5, generator=gen), torch.randn(n, 3, generator=gen)) for n in sizes]


def _losses(model: MultiTaskModel, x: torch.Tensor, y: torch.Tensor, scales: list[float]):
    z, out = model(x)
    losses = [scales[i] * ((out[n].squeeze(1) - y[:, i]) ** 2).mean() for i, n in enumerate("abc")]
    return z, losses


def _step(model: MultiTaskModel, batch, scales=(1.0, 10.0, 0.1)) -> Step:
    model.zero_grad(set_to_none=True)
    z, losses = _losses(model, *batch, list(scales))
    return Step.of(model, z, losses)


def _grads(model: MultiTaskModel) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _reference(model, batches, level, beta=0.5, bs=0.5, gamma=0.1, gs=0.5, rho=0.0, projection="softmax"):
    """LibMTL's MoCo.backward written out with per-task autograd: every parameter's gradient and lambda, per step."""
    shared = model.shared_parameters()
    heads = [model.task_parameters(n) for n in "abc"]
    y, lambd = None, torch.full((3,), 1 / 3)
    out = []
    for k, batch in enumerate(batches, start=1):
        z, losses = _losses(model, *batch, [1.0, 10.0, 0.1])
        if level == "shared":
            g = torch.stack(
                [torch.cat([d.reshape(-1) for d in torch.autograd.grad(lo, shared, retain_graph=True)]) for lo in losses]
            )[:, None]
        else:
            g = torch.stack([torch.autograd.grad(lo, z, retain_graph=True)[0] for lo in losses])  # [T, B, F]
        g = torch.stack([g[t] / (g[t].norm() + 1e-8) * losses[t].detach() for t in range(3)])
        if y is None:
            y = torch.zeros_like(g)
        n = g.shape[1]
        y_n = y[:, :n] - (beta / k**bs) * (y[:, :n] - g)
        y = y.clone()
        y[:, :n] = y_n
        flat = y_n.reshape(3, -1)
        v = lambd - (gamma / k**gs) * (flat @ flat.T + rho * torch.eye(3)) @ lambd
        lambd = torch.softmax(v, -1) if projection == "softmax" else project_simplex(v)
        d = (lambd @ flat).reshape(y_n.shape[1:])
        if level == "shared":
            sizes = [p.numel() for p in shared]
            enc = [part.view_as(p) for part, p in zip(d[0].split(sizes), shared, strict=True)]
        else:
            enc = list(torch.autograd.grad(z, shared, grad_outputs=d, retain_graph=True))
        head = [torch.autograd.grad(losses[t], heads[t], retain_graph=True) for t in range(3)]  # raw, as in LibMTL
        out.append(([*enc, *[g_ for h in head for g_ in h]], lambd.clone()))
    return out


@pytest.mark.parametrize(("level", "options"), LEVELS)
@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {"beta": 0.8, "beta_sigma": 1.0, "gamma": 0.5, "gamma_sigma": 0.0, "rho": 0.3},
        {"gamma": 2.0, "rho": 0.1, "projection": "simplex"},
    ],
)
def test_three_steps_match_libmtls_algorithm_by_hand(level: str, options: dict, hyper: dict) -> None:
    """Three batches (the last smaller, as an epoch's last batch); defaults, other hyperparameters, the paper's projection."""
    model = _model()
    batches = _batches([8, 8, 5])
    ref = {"bs": "beta_sigma", "gs": "gamma_sigma"}
    expected = _reference(model, batches, level, **{k: hyper[v] for k, v in ref.items() if v in hyper},
                          **{k: v for k, v in hyper.items() if k not in ref.values()})  # fmt: skip
    method = moco(level=level, **options, **hyper)
    order = [*model.shared_parameters(), *[p for n in "abc" for p in model.task_parameters(n)]]
    assert len(order) == len(list(model.parameters()))
    for k, (batch, (grads, lambd)) in enumerate(zip(batches, expected, strict=True), start=1):
        got = method.backward(_step(model, batch))
        for p, g in zip(order, grads, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got, lambd, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(method.lambd, lambd, rtol=1e-10, atol=1e-14)
        assert not got.requires_grad and int(method.state_dict()["step"]) == k
    assert method.y.shape == ((3, 8, 4) if level == "representation" else (3, 1, 24))


def test_the_first_step_by_hand() -> None:
    """Step 1 with defaults: y_t = 0.5 L_t g_t/||g_t||, lambda = softmax(1/3 - 0.1 Y Y^T 1/3), update Y^T lambda."""
    model = _model()
    (batch,) = _batches([6])
    method = moco()
    got = method.backward(_step(model, batch))
    shared = torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()])
    _z, losses = _losses(model, *batch, [1.0, 10.0, 0.1])
    g = [
        torch.cat([d.reshape(-1) for d in torch.autograd.grad(lo, model.shared_parameters(), retain_graph=True)]) for lo in losses
    ]
    y = torch.stack([0.5 * float(lo.detach()) * gt / (gt.norm() + 1e-8) for gt, lo in zip(g, losses, strict=True)])
    third = torch.full((3,), 1 / 3)
    lambd = torch.softmax(third - 0.1 * (y @ y.T) @ third, 0)
    torch.testing.assert_close(got, lambd, rtol=1e-10, atol=0)
    torch.testing.assert_close(shared, lambd @ y, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(torch.linalg.vector_norm(method.y[:, 0], dim=1), 0.5 * torch.stack(losses).detach())


@pytest.mark.parametrize("projection", ["softmax", "simplex"])
def test_lambda_stays_on_the_simplex(projection: str) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    method = moco(gamma=5.0, gamma_sigma=0.0, projection=projection)  # big steps: the projection does work
    zeros = 0
    for batch in _batches([8] * 12):
        weights = method.backward(_step(model, batch))
        opt.step()
        assert torch.equal(weights, method.lambd)
        assert (weights >= 0).all() and abs(float(weights.sum()) - 1) < 1e-12
        zeros += int((weights == 0).sum())
    if projection == "simplex":
        assert zeros > 0  # the Euclidean projection reaches the simplex's faces; softmax never does
    else:
        assert zeros == 0


@pytest.mark.parametrize("level", ["shared", "representation"])
def test_tracking_converges_to_the_scaled_gradient_on_a_fixed_batch(level: str) -> None:
    """Parameters fixed, the same batch every step: y_t -> L_t g_t / ||g_t|| (error prod_k (1 - beta_k) -> 0)."""
    model = _model()
    (batch,) = _batches([8])
    method = moco(level=level, beta=0.5, beta_sigma=0.5)
    for _ in range(60):
        method.backward(_step(model, batch))
    z, losses = _losses(model, *batch, [1.0, 10.0, 0.1])
    wrt = model.shared_parameters() if level == "shared" else [z]
    g = [torch.cat([d.reshape(-1) for d in torch.autograd.grad(lo, wrt, retain_graph=True)]) for lo in losses]
    target = torch.stack([float(lo.detach()) * gt / (gt.norm() + 1e-8) for gt, lo in zip(g, losses, strict=True)])
    error = float((method.y.reshape(3, -1) - target).norm() / target.norm())
    # prod_{k=1..60} (1 - 0.5/sqrt(k)) is about 1e-4
    assert error < 1e-3


@pytest.mark.parametrize(("level", "options"), LEVELS[:2])
def test_state_round_trips_and_the_next_steps_are_identical(level: str, options: dict) -> None:
    batches = _batches([8, 8, 5, 8, 8, 5])
    model = _model()
    a = moco(level=level, **options, rho=0.1)
    for batch in batches[:3]:
        a.backward(_step(model, batch))
    assert set(a.state_dict()) == {"y", "lambda", "step"} and int(a.state_dict()["step"]) == 3
    b = moco(level=level, **options, rho=0.1)
    b.load_state_dict(a.state_dict())
    twin = copy.deepcopy(model)
    for batch in batches[3:]:
        wa, wb = a.backward(_step(model, batch)), b.backward(_step(twin, batch))
        assert torch.equal(wa, wb)
        for x, y in zip(_grads(model), _grads(twin), strict=True):
            assert torch.equal(x, y)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    saved = a.state_dict()
    a.backward(_step(model, batches[0]))
    assert not torch.equal(saved["y"], a.y) and not torch.equal(saved["lambda"], a.lambd)  # copies, not views


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize(("level", "options"), LEVELS[:2])
def test_a_non_finite_step_leaves_the_state_alone_and_still_shows(bad: float, level: str, options: dict) -> None:
    batches = _batches([8, 8, 8, 8])
    model = _model()
    a, twin = moco(level=level, **options), moco(level=level, **options)
    for batch in batches[:2]:
        a.backward(_step(model, batch))
        twin.backward(_step(model, batch))
    before = a.state_dict()
    step = _step(model, batches[2])
    poisoned = Step.of(model, step.z, [step.parts[0], step.parts[1] * bad, step.parts[2]])
    weights = a.backward(poisoned)
    after = a.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.isfinite(weights[1]) and torch.isfinite(weights[[0, 2]]).all()  # the guard names task b
    assert not all(torch.isfinite(p.grad).all() for p in model.shared_parameters())  # and sees the gradients
    wa, wt = a.backward(_step(model, batches[3])), twin.backward(_step(copy.deepcopy(model), batches[3]))
    assert torch.equal(wa, wt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), twin.state_dict().values(), strict=True))


def test_step_skipped_restores_the_state_from_before_the_step() -> None:
    batches = _batches([8, 8, 5])
    model = _model()
    method = moco()
    method.backward(_step(model, batches[0]))
    before = method.state_dict()
    method.backward(_step(model, batches[1]))
    assert not torch.equal(before["y"], method.y) and not torch.equal(before["lambda"], method.lambd)
    method.step_skipped()
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    method.step_skipped()  # a second call changes nothing
    assert all(torch.equal(before[k], method.state_dict()[k]) for k in before)


def test_options_and_repr() -> None:
    from mtlcli.errors import MtlError
    from mtlcli.methods import option_problems

    assert repr(build("moco")) == (
        "Moco(level='shared', grads='loop', beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0, projection='softmax')"
    )
    good = {"level": "shared", "grads": "batched", "beta": 0.9, "gamma": 1.0, "rho": 0.5, "projection": "simplex"}
    assert option_problems("moco", good) == []
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("moco", level="representation", grads="loop")
    with pytest.raises(MtlError, match="beta"):
        build("moco", beta=1.5)
    with pytest.raises(MtlError, match="rho"):
        build("moco", rho=-1.0)
    with pytest.raises(MtlError, match="projection"):
        build("moco", projection="sparsemax")


@pytest.mark.parametrize("sets", [["method.grads=batched"], ["method.level=representation"]])
def test_trains_one_epoch(sets: list[str], tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app
    from mtlcli.training import load_checkpoint

    torch.set_default_dtype(torch.float32)
    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", "moco", "-q", *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == "moco"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(math.isfinite(v) for m in metrics for v in m["alphas"].values())
    saved = load_checkpoint(run_dir / "last.pt")["method"]
    assert saved["y"].shape[0] == 2 and int(saved["step"]) == 4  # 120 examples, batches of 32
    assert abs(float(saved["lambda"].sum()) - 1) < 1e-5
