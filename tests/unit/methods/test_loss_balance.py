"""Methods that learn loss scales or weights: their fixed points and invariants."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.models import MultiTaskModel


def optimise_scale(name: str, losses: list[float], steps: int = 3000, lr: float = 0.05):
    """Minimise the method's objective in s alone, on fixed losses (no network)."""
    method = build(name)
    method.setup(len(losses), torch.device("cpu"))
    opt = torch.optim.SGD(method.parameters(), lr=lr)
    fixed = torch.tensor(losses)
    for _ in range(steps):
        opt.zero_grad()
        method.backward(Step(model=None, z=None, losses=fixed))  # type: ignore[arg-type]
        opt.step()
    return method, fixed


@pytest.mark.parametrize("losses", [[0.01, 1.0, 50.0], [2.3, 2.3]])
def test_imtl_l_reaches_unit_scaled_losses(losses: list[float]) -> None:
    method, fixed = optimise_scale("imtl-l", losses)
    torch.testing.assert_close(torch.exp(method.s.detach()) * fixed, torch.ones(len(losses)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("losses", [[0.01, 1.0, 50.0], [2.3, 2.3]])
def test_uncertainty_reaches_its_classification_fixed_point(losses: list[float]) -> None:
    """exp(-s) L + s/2 is stationary at exp(-s) L = 1/2 (Kendall et al.'s classification form)."""
    method, fixed = optimise_scale("uncertainty", losses)
    torch.testing.assert_close(torch.exp(-method.s.detach()) * fixed, torch.full((len(losses),), 0.5), rtol=1e-4, atol=1e-4)


def test_learned_scales_are_the_reported_weights_and_round_trip() -> None:
    method, _ = optimise_scale("imtl-l", [0.5, 4.0], steps=10)
    weights = method.backward(Step(model=None, z=None, losses=torch.tensor([0.5, 4.0])))  # type: ignore[arg-type]
    torch.testing.assert_close(weights, torch.exp(method.s.detach()))
    other = build("imtl-l")
    other.setup(2, torch.device("cpu"))
    other.load_state_dict(method.state_dict())
    torch.testing.assert_close(other.s, method.s)


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)

    @property
    def last_layer(self) -> nn.Module:
        return self.fc

    def forward(self, x):
        return torch.tanh(self.fc(x))


def _fixed_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = MultiTaskModel(_Encoder(), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1), "c": nn.Linear(4, 1)})
    x = torch.randn(16, 5)
    targets = torch.randn(16, 3)
    scales = torch.tensor([1.0, 10.0, 0.1])  # very different gradient magnitudes

    def step():
        model.zero_grad(set_to_none=True)
        z, out = model(x)
        losses = torch.stack([((out[n].squeeze(1) - targets[:, i]) ** 2).mean() for i, n in enumerate("abc")]) * scales
        return Step(model, z, losses)

    return model, step


def test_gradnorm_weights_stay_positive_and_sum_to_t() -> None:
    model, step = _fixed_problem()
    method = build("gradnorm", alpha=1.5, lr=0.5)
    method.setup(3, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(200):
        method.backward(step())
        opt.step()  # the problem changes, so the training rates r_t move
        w = method.w.detach()
        assert torch.all(w > 0) and abs(float(w.sum()) - 3) < 1e-5
    assert float(w.max() / w.min()) > 2  # and they did move


def test_gradnorm_with_alpha_zero_equalises_weighted_gradient_norms() -> None:
    _, step = _fixed_problem()
    method = build("gradnorm", alpha=0.0, lr=0.02)
    method.setup(3, torch.device("cpu"))
    raw = method.grad_norms(step())
    assert float(raw.max() / raw.min()) > 10  # far from balanced at the start
    for _ in range(700):
        method.backward(step())
    weighted = method.w.detach() * method.grad_norms(step())
    assert float(weighted.max() / weighted.min()) < 1.05
    # the fixed point: w_t proportional to 1 / ||grad_W L_t||, summing to T
    expected = 3 * (1 / raw) / (1 / raw).sum()
    torch.testing.assert_close(method.w.detach(), expected, rtol=0.05, atol=0.0)


def test_gradnorm_state_round_trips_and_resumes_identically() -> None:
    _, step = _fixed_problem()
    a = build("gradnorm", lr=0.1)
    a.setup(3, torch.device("cpu"))
    for _ in range(5):
        a.backward(step())
    b = build("gradnorm", lr=0.1)
    b.setup(3, torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert not math.isnan(float(b.initial_losses[0]))
    for _ in range(3):
        torch.testing.assert_close(a.backward(step()), b.backward(step()))
    torch.testing.assert_close(a.w, b.w)


def test_static_weights_are_validated_and_applied() -> None:
    from mtlcli.errors import MtlError

    with pytest.raises(MtlError, match="sum to 1"):
        build("static", weights=[0.5, 0.6])
    with pytest.raises(MtlError, match=">= 0"):
        build("static", weights=[1.5, -0.5])
    with pytest.raises(MtlError, match="3 weights given for 2 tasks"):
        build("static", weights=[0.2, 0.3, 0.5]).setup(2, torch.device("cpu"))
    method = build("static", weights=[0.25, 0.75])
    method.setup(2, torch.device("cpu"))
    losses = torch.tensor([2.0, 4.0], requires_grad=True)
    weights = method.backward(Step(model=None, z=None, losses=losses))  # type: ignore[arg-type]
    assert weights.tolist() == [0.25, 0.75] and losses.grad.tolist() == [0.25, 0.75]


def test_gradnorm_weights_survive_a_non_finite_step() -> None:
    _, step = _fixed_problem()
    method = build("gradnorm")
    method.setup(3, torch.device("cpu"))
    method.backward(step())
    bad = step()
    bad.losses = bad.losses * torch.tensor([1.0, float("nan"), 1.0])
    method.backward(bad)
    assert torch.isfinite(method.w).all() and torch.isfinite(method.initial_losses).all()
    assert abs(float(method.w.detach().sum()) - 3) < 1e-5
