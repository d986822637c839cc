"""Dynamic Weight Average and Random Loss Weighting: their weights, gradients, state and resume."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.models import MultiTaskModel
from mtlcli.training import Trainer, TrainingInterrupted, load_checkpoint
from tests.integration._reliability import assert_same_run, metrics, recipe, signal_at_step, trainer

CPU = torch.device("cpu")
FIXED = Step(model=None, z=None, losses=torch.ones(3, requires_grad=True))  # type: ignore[arg-type]


def dwa(num_tasks: int = 3, **options):
    method = build("dwa", **options)
    method.setup(num_tasks, CPU)
    return method


def by_hand(previous: list[float], last: list[float], temperature: float = 2.0) -> torch.Tensor:
    """Eq. 7 written out: K exp(w_k / T) / sum_i exp(w_i / T), w_k = L_k(t-1) / L_k(t-2)."""
    e = [math.exp(b / a / temperature) for a, b in zip(previous, last, strict=True)]
    return torch.tensor([len(e) * x / sum(e) for x in e])


# ---------------------------------------------------------------------------------------------- DWA
def test_dwa_is_uniform_ones_for_the_first_two_epochs() -> None:
    method = dwa()
    assert torch.equal(method.backward(FIXED), torch.ones(3))
    method.end_epoch(torch.tensor([1.0, 2.0, 4.0]))
    assert torch.equal(method.backward(FIXED), torch.ones(3))
    method.end_epoch(torch.tensor([0.5, 1.8, 4.4]))
    assert not torch.equal(method.backward(FIXED), torch.ones(3))


def test_dwa_weights_follow_equation_7_and_sum_to_k() -> None:
    method = dwa()
    epochs = [[1.0, 2.0, 4.0], [0.5, 1.8, 4.4], [0.45, 0.9, 4.0]]
    for losses in epochs[:2]:
        method.end_epoch(torch.tensor(losses))
    weights = method.backward(FIXED)
    torch.testing.assert_close(weights, by_hand(epochs[0], epochs[1]))
    assert abs(float(weights.sum()) - 3) < 1e-6
    assert weights.argmax() == 2 and weights.argmin() == 0  # the task whose loss fell least weighs most
    method.end_epoch(torch.tensor(epochs[2]))  # the window moves: epochs 2 and 3
    torch.testing.assert_close(method.backward(FIXED), by_hand(epochs[1], epochs[2]))


def test_dwa_temperature_limits() -> None:
    previous, last = [1.0, 2.0, 4.0], [0.5, 1.8, 4.4]
    for temperature, expected in ((1e9, torch.ones(3)), (1e-3, torch.tensor([0.0, 0.0, 3.0]))):
        method = dwa(temperature=temperature)
        method.end_epoch(torch.tensor(previous))
        method.end_epoch(torch.tensor(last))
        torch.testing.assert_close(method.backward(FIXED), expected, atol=1e-6, rtol=0)
    method = dwa(temperature=0.7)
    method.end_epoch(torch.tensor(previous))
    method.end_epoch(torch.tensor(last))
    torch.testing.assert_close(method.backward(FIXED), by_hand(previous, last, 0.7))
    with pytest.raises(MtlError, match="temperature"):
        build("dwa", temperature=0)


def test_dwa_falls_back_to_ones_on_a_zero_mean_loss() -> None:
    method = dwa()
    method.end_epoch(torch.tensor([0.0, 1.0, 1.0]))  # an epoch whose steps were all skipped
    method.end_epoch(torch.tensor([1.0, 1.0, 0.5]))
    assert torch.equal(method.backward(FIXED), torch.ones(3))


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


@pytest.mark.parametrize("name", ["dwa", "rlw"])
def test_backward_is_one_weighted_backward_of_the_returned_weights(name: str) -> None:
    model, step = _problem()
    method = build(name)
    method.setup(3, CPU)
    if name == "dwa":
        method.end_epoch(torch.tensor([1.0, 2.0, 4.0]))
        method.end_epoch(torch.tensor([0.5, 1.8, 4.4]))
    weights = method.backward(step())
    assert not weights.requires_grad
    got = _grads(model)
    s = step()
    torch.sum(weights * s.losses).backward()
    for a, b in zip(got, _grads(model), strict=True):
        torch.testing.assert_close(a, b)


def test_dwa_state_round_trips_to_identical_next_weights() -> None:
    a = dwa()
    for losses in ([1.0, 2.0, 4.0], [0.5, 1.8, 4.4], [0.45, 0.9, 4.0]):
        a.end_epoch(torch.tensor(losses))
    state = a.state_dict()
    assert set(state) == {"losses", "epochs"} and all(isinstance(v, torch.Tensor) for v in state.values())
    b = dwa()
    b.load_state_dict(state)
    assert torch.equal(b.backward(FIXED), a.backward(FIXED))
    for method in (a, b):
        method.end_epoch(torch.tensor([0.4, 0.8, 3.0]))
    assert torch.equal(b.backward(FIXED), a.backward(FIXED))
    c = dwa()  # after one epoch only: still ones once restored
    c.end_epoch(torch.tensor([1.0, 2.0, 4.0]))
    d = dwa()
    d.load_state_dict(c.state_dict())
    assert torch.equal(d.backward(FIXED), torch.ones(3))
    d.end_epoch(torch.tensor([0.5, 1.8, 4.4]))
    torch.testing.assert_close(d.backward(FIXED), by_hand([1.0, 2.0, 4.0], [0.5, 1.8, 4.4]))


# ---------------------------------------------------------------------------------------------- RLW
DISTRIBUTIONS = ["normal", "uniform", "dirichlet", "bernoulli", "constrained-bernoulli"]


def rlw(distribution: str = "normal", seed: int = 0):
    method = build("rlw", distribution=distribution)
    torch.manual_seed(seed)  # the trainer seeds torch with the run's seed before `setup`
    method.setup(3, CPU)
    return method


def draws(method, n: int) -> torch.Tensor:
    return torch.stack([method.backward(FIXED) for _ in range(n)])


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_rlw_weights(distribution: str) -> None:
    w = draws(rlw(distribution), 2000)
    assert w.shape == (2000, 3) and torch.all(w >= 0)
    if distribution == "bernoulli":  # raw 0/1 weights, never all zero
        assert set(w.unique().tolist()) == {0.0, 1.0} and torch.all(w.sum(1) >= 1)
    else:  # on the simplex
        torch.testing.assert_close(w.sum(1), torch.ones(2000))
    # symmetric in the tasks: every task weighs the same on average
    mean = {"bernoulli": 0.5 / (1 - 0.5**3)}.get(distribution, 1 / 3)  # E[x_k | x != 0] for Bernoulli(1/2)
    torch.testing.assert_close(w.mean(0), torch.full((3,), mean), atol=0.03, rtol=0)
    assert len({tuple(row) for row in w.tolist()}) >= 3  # they vary from step to step


def test_rlw_distribution_statistics() -> None:
    n = 20_000
    normal = draws(rlw("normal"), n)  # softmax of N(0, I): spread over the whole simplex interior
    assert float(normal.max()) > 0.9 and float(normal.min()) < 0.02
    dirichlet = draws(rlw("dirichlet"), n)  # softmax of a Dir(1) draw x in the simplex: w_k in [1/(2+e), e/(2+e)]
    assert float(dirichlet.min()) >= 1 / (2 + math.e) - 1e-6 and float(dirichlet.max()) <= math.e / (2 + math.e) + 1e-6
    log = torch.log(dirichlet.double())
    x = log - log.mean(1, keepdim=True) + 1 / 3  # the Dir(1) draw back: softmax is invertible up to a shift, and sum x = 1
    torch.testing.assert_close(x.mean(0), torch.full((3,), 1 / 3, dtype=x.dtype), atol=0.01, rtol=0)  # Dir(1): E x_k = 1/K
    torch.testing.assert_close(x.var(0), torch.full((3,), 2 / 36, dtype=x.dtype), atol=0.005, rtol=0)  # (K-1)/(K^2 (K+1))
    one_hot = draws(rlw("constrained-bernoulli"), n)
    assert torch.all(one_hot.sum(1) == 1) and torch.all((one_hot == 0) | (one_hot == 1))


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_rlw_is_deterministic_per_seed_and_resumes_exactly(distribution: str) -> None:
    assert torch.equal(draws(rlw(distribution, seed=1), 20), draws(rlw(distribution, seed=1), 20))
    assert not torch.equal(draws(rlw(distribution, seed=1), 20), draws(rlw(distribution, seed=2), 20))
    a = rlw(distribution, seed=1)
    draws(a, 7)
    state = a.state_dict()
    b = rlw(distribution, seed=99)
    b.load_state_dict(state)
    assert torch.equal(draws(b, 10), draws(a, 10))


def test_rlw_ignores_the_global_generator() -> None:
    a, b = rlw(seed=3), rlw(seed=3)
    first = a.backward(FIXED)
    torch.rand(100)  # other consumers of the global generator do not move the method's draws
    assert torch.equal(first, b.backward(FIXED))
    with pytest.raises(MtlError, match="distribution"):
        build("rlw", distribution="gamma")


# ------------------------------------------------------------------------------------------ resume
STEPS = 4  # 108 tiny training images in batches of 32


@pytest.mark.parametrize(("method", "stop_at"), [("dwa", 2 * STEPS), ("rlw", STEPS + 2)])
def test_three_epochs_equal_interrupted_plus_resumed(data_dir, tmp_path, method: str, stop_at: int) -> None:
    """DWA stopped at the end of epoch 2 (its epoch 3 weights come from the saved losses of 1 and 2);
    RLW stopped in the middle of epoch 2 (its generator resumes mid-sequence)."""
    raw = recipe(data_dir, tmp_path / "out", epochs=3)
    raw["method"] = {"name": method}
    reference = trainer(raw).run()
    first = trainer(raw)
    signal_at_step(first, stop_at)
    with pytest.raises(TrainingInterrupted) as info:
        first.run()
    assert first.run_dir is not None
    if method == "dwa":
        assert "at the end of epoch 2" in info.value.message
        assert [rec["epoch"] for rec in metrics(first.run_dir)] == [1, 2]
    Trainer.resume(first.run_dir, show_progress=False).run()
    assert_same_run(reference, first.run_dir)
    saved, expected = load_checkpoint(first.run_dir / "last.pt")["method"], load_checkpoint(reference / "last.pt")["method"]
    assert saved.keys() == expected.keys() and all(torch.equal(saved[k], expected[k]) for k in saved)
    alphas = [list(rec["alphas"].values()) for rec in metrics(reference)]
    if method == "dwa":  # the check has teeth: epoch 3 is weighted, epochs 1 and 2 are not
        assert alphas[0] == alphas[1] == [1.0, 1.0] and alphas[2] != [1.0, 1.0]
        assert abs(sum(alphas[2]) - 2) < 1e-5
