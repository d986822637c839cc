"""DB-MTL (Lin et al., 2023; LibMTL's DB_MTL) against a hand computation of LibMTL's algorithm (log-losses,
EMA with beta / k^beta_sigma, every EMA gradient rescaled to the largest norm, summed), its defining scale
invariance, checkpointing, non-finite steps, and training through the CLI at both levels."""

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
from mtlcli.methods.db_mtl import DbMtl
from mtlcli.models import MultiTaskModel

CPU = torch.device("cpu")
LEVELS = [("representation", {}), ("shared", {"grads": "loop"}), ("shared", {"grads": "batched"})]


pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)


def db_mtl(num_tasks: int = 3, **options: Any) -> DbMtl:
    method = build("db-mtl", **options)
    assert isinstance(method, DbMtl)
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


def _reference(model: MultiTaskModel, batches, level: str, beta: float = 0.9, sigma: float = 0.5, scales=(1.0, 10.0, 0.1)):
    """LibMTL's DB_MTL written out with per-task autograd: the gradients of every parameter and the weights, per step."""
    shared = model.shared_parameters()
    heads = [model.task_parameters(n) for n in "abc"]
    m = None
    out = []
    for k, batch in enumerate(batches, start=1):
        z, losses = _losses(model, *batch, list(scales))
        logs = [torch.log(loss + 1e-8) for loss in losses]
        if level == "shared":
            g = torch.stack(
                [torch.cat([d.reshape(-1) for d in torch.autograd.grad(lg, shared, retain_graph=True)]) for lg in logs]
            )[:, None]
        else:
            g = torch.stack([torch.autograd.grad(lg, z, retain_graph=True)[0] for lg in logs])  # [T, B, F]
        if m is None:
            m = torch.zeros_like(g)
        n = g.shape[1]
        beta_k = beta / k**sigma
        m_n = beta_k * m[:, :n] + (1 - beta_k) * g  # the usual EMA form of LibMTL's g + beta_k (m - g)
        m = m.clone()
        m[:, :n] = m_n
        norms = torch.stack([torch.linalg.vector_norm(row) for row in m_n])
        alpha = norms.max() / (norms + 1e-8)
        for t in range(3):  # DB-MTL's balance: every rescaled EMA gradient has the largest norm
            torch.testing.assert_close(torch.linalg.vector_norm(alpha[t] * m_n[t]), norms.max())
        v = sum(alpha[t] * m_n[t] for t in range(3))
        if level == "shared":
            sizes = [p.numel() for p in shared]
            enc = [part.view_as(p) for part, p in zip(v[0].split(sizes), shared, strict=True)]
        else:
            enc = list(torch.autograd.grad(z, shared, grad_outputs=v, retain_graph=True))
        head = [torch.autograd.grad(logs[t], heads[t], retain_graph=True) for t in range(3)]
        grads = [*enc, *[g_ for h in head for g_ in h]]
        weights = alpha * (1 - beta_k) / (torch.stack(losses).detach() + 1e-8)
        out.append((grads, weights))
    return out


@pytest.mark.parametrize(("level", "options"), LEVELS)
def test_three_steps_match_libmtls_algorithm_by_hand(level: str, options: dict) -> None:
    """Three batches (the last smaller, as an epoch's last batch), the EMA mixing them; beta, sigma non-default too."""
    for beta, sigma in ((0.9, 0.5), (0.6, 1.0)):
        model = _model()
        batches = _batches([8, 8, 5])
        expected = _reference(model, batches, level, beta, sigma)
        method = db_mtl(level=level, beta=beta, beta_sigma=sigma, **options)
        for k, (batch, (grads, weights)) in enumerate(zip(batches, expected, strict=True), start=1):
            got = method.backward(_step(model, batch))
            order = [*model.shared_parameters(), *[p for n in "abc" for p in model.task_parameters(n)]]
            assert len(order) == len(list(model.parameters()))
            for p, g in zip(order, grads, strict=True):
                torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(got, weights, rtol=1e-10, atol=0)
            assert not got.requires_grad and int(method.state_dict()["step"]) == k
        assert method.ema.shape == ((3, 8, 4) if level == "representation" else (3, 1, 24))  # z: 8 x 4; 24 weights


def test_the_first_step_is_a_tenth_of_the_balanced_gradients() -> None:
    """No bias correction (LibMTL): m = (1 - beta) g at step 1, the update is sum_t (max ||m|| / ||m_t||) m_t, m_t = 0.1 g_t."""
    model = _model()
    (batch,) = _batches([6])
    method = db_mtl(level="shared")
    method.backward(_step(model, batch))
    shared = [p.grad.clone() for p in model.shared_parameters()]
    _z, losses = _losses(model, *batch, [1.0, 10.0, 0.1])
    g = [
        torch.cat(
            [d.reshape(-1) for d in torch.autograd.grad(torch.log(lo + 1e-8), model.shared_parameters(), retain_graph=True)]
        )
        for lo in losses
    ]
    norms = torch.stack([gt.norm() for gt in g])
    v = sum((0.1 * norms.max() / (0.1 * norms[t] + 1e-8)) * 0.1 * g[t] for t in range(3))  # alpha's eps: 1e-8
    torch.testing.assert_close(torch.cat([s.reshape(-1) for s in shared]), v, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(("level", "options"), LEVELS)
def test_scaling_a_loss_changes_nothing(level: str, options: dict) -> None:
    """DB-MTL's defining property: L_b -> 10 L_b shifts log L_b by log 10, so every gradient is the same (the
    weight on the raw loss is 10 times smaller)."""
    batches = _batches([8, 8, 8, 5])
    runs = []
    for scales in ((1.0, 1.0, 1.0), (1.0, 10.0, 1.0), (10.0, 1.0, 0.1)):  # up to eps = 1e-8 in log(L + eps)
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        method = db_mtl(level=level, beta_sigma=0.5, **options)  # a decaying EMA keeps the eps of log(L + eps) small
        grads, weights = [], []
        for batch in batches:
            weights.append(method.backward(_step(model, batch, scales)))
            grads.append(_grads(model))
            opt.step()
        runs.append((grads, weights, method.state_dict(), scales))
    base_grads, base_weights, base_state, _ = runs[0]
    for grads, weights, state, scales in runs[1:]:
        for a, b in zip(base_grads, grads, strict=True):
            for x, y in zip(a, b, strict=True):
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7 * float(x.abs().max()))  # eps: 1e-8
        for a, b in zip(base_weights, weights, strict=True):
            torch.testing.assert_close(a, b * torch.tensor(scales), rtol=1e-6, atol=0)
        ema = base_state["ema"]
        torch.testing.assert_close(ema, state["ema"], rtol=1e-6, atol=1e-7 * float(ema.abs().max()))


def test_uniform_is_not_scale_invariant() -> None:
    """The contrast: with the mean of the raw losses, scaling a loss changes the shared gradient."""
    (batch,) = _batches([8])
    grads = []
    for scales in ((1.0, 1.0, 1.0), (1.0, 10.0, 1.0)):
        model = _model()
        build("uniform").backward(_step(model, batch, scales))
        grads.append(model.shared_parameters()[0].grad.clone())
    assert not torch.allclose(grads[0], grads[1], rtol=1e-3)


@pytest.mark.parametrize(("level", "options"), LEVELS[:2])
def test_state_round_trips_and_the_next_steps_are_identical(level: str, options: dict) -> None:
    batches = _batches([8, 8, 5, 8, 8, 5])
    model = _model()
    a = db_mtl(level=level, **options)
    for batch in batches[:3]:
        a.backward(_step(model, batch))
    assert set(a.state_dict()) == {"ema", "step"} and int(a.state_dict()["step"]) == 3
    b = db_mtl(level=level, **options)
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
    assert not torch.equal(saved["ema"], a.ema)  # state_dict is a copy, not a view


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize(("level", "options"), LEVELS[:2])
def test_a_non_finite_step_leaves_the_ema_alone_and_still_shows(bad: float, level: str, options: dict) -> None:
    batches = _batches([8, 8, 8, 8])
    model = _model()
    a, twin = db_mtl(level=level, **options), db_mtl(level=level, **options)
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
    # the next step is as if the bad one never happened
    wa, wt = a.backward(_step(model, batches[3])), twin.backward(_step(copy.deepcopy(model), batches[3]))
    assert torch.equal(wa, wt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), twin.state_dict().values(), strict=True))


def test_step_skipped_restores_the_state_from_before_the_step() -> None:
    batches = _batches([8, 8, 5])
    model = _model()
    method = db_mtl()
    method.backward(_step(model, batches[0]))
    before = method.state_dict()
    method.backward(_step(model, batches[1]))
    assert not torch.equal(before["ema"], method.ema)
    method.step_skipped()
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    method.step_skipped()  # a second call changes nothing
    assert all(torch.equal(before[k], method.state_dict()[k]) for k in before)


def test_options_and_repr() -> None:
    from mtlcli.errors import MtlError
    from mtlcli.methods import option_problems

    assert repr(build("db-mtl")) == "DbMtl(level='shared', grads='loop', beta=0.9, beta_sigma=0.0)"
    assert repr(build("db-mtl", level="shared", grads="batched")) == (
        "DbMtl(level='shared', grads='batched', beta=0.9, beta_sigma=0.0)"
    )
    assert option_problems("db-mtl", {"level": "shared", "grads": "loop", "beta": 0.5, "beta_sigma": 1.0}) == []
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("db-mtl", level="representation", grads="loop")
    with pytest.raises(MtlError, match="beta"):
        build("db-mtl", beta=1.5)
    with pytest.raises(MtlError, match="does not apply to db-mtl"):
        build("db-mtl", head_grads="raw")


@pytest.mark.parametrize("sets", [["method.level=shared", "method.grads=batched"], ["method.level=shared"]])
def test_trains_one_epoch_at_the_shared_level(sets: list[str], tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app
    from mtlcli.training import load_checkpoint

    torch.set_default_dtype(torch.float32)
    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", "db-mtl", "-q", *[a for s in sets for a in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == "db-mtl"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(math.isfinite(v) for m in metrics for v in m["alphas"].values())
    saved = load_checkpoint(run_dir / "last.pt")["method"]
    assert saved["ema"].shape[:2] == (2, 1) and int(saved["step"]) == 4  # 120 examples, batches of 32
