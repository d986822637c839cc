"""GradVac (Wang et al. 2021) against hand computations, its defining properties, and TorchJD."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.gradvac import gradvac_coefficients
from mtlcli.methods.pcgrad import pcgrad_coefficients
from tests.unit.methods.matrices import KINDS, SCALES, jacobian
from tests.unit.methods.test_cagrad import _losses, _tiny_batch

S3 = 1 / math.sqrt(3)


def _coefficients(jac: np.ndarray, goals: np.ndarray, orders: list[list[int]], beta: float = 0.5):
    c, new = gradvac_coefficients(torch.tensor(jac @ jac.T), torch.tensor(goals), orders, beta)
    return c.numpy(), new.numpy()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_two_orthogonal_tasks_hand_computed() -> None:
    jac = np.eye(2)
    goals = np.array([[0.0, 0.5], [0.0, 0.0]])
    c, new = _coefficients(jac, goals, [[1], [0]])
    # task 0: cos 0 < 0.5, w = 1 (0.5 * 1 - 0) / (1 * sqrt(0.75)) = 1/sqrt(3); task 1: cos 0 >= 0, unchanged
    np.testing.assert_allclose(c, [[1, S3], [0, 1]], rtol=1e-15)
    np.testing.assert_allclose(new, [[0, 0.25], [0, 0]], atol=1e-15)  # goals move half-way to the cosines (0)
    assert _cos(c[0] @ jac, jac[1]) == pytest.approx(0.5, rel=1e-14)


def test_three_tasks_hand_computed_in_the_given_orders() -> None:
    jac = np.eye(3)
    goals = np.full((3, 3), 0.5)
    c, new = _coefficients(jac, goals, [[1, 2], [2, 0], [0, 1]])
    # g_0' = (1, 1/sqrt3, 0) (cos with g_1: 0.5), ||g_0'|| = 2/sqrt3; then cos(g_0', g_2) = 0:
    # w = (2/sqrt3)(0.5)/sqrt(0.75) = 2/3, g_0'' = (1, 1/sqrt3, 2/3): cos with g_2 is (2/3)/(4/3) = 0.5
    np.testing.assert_allclose(c, [[1, S3, 2 / 3], [2 / 3, 1, S3], [S3, 2 / 3, 1]], rtol=1e-14)
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_allclose(new[off], 0.25, rtol=1e-14)  # every measured cosine was 0
    assert _cos(c[0] @ jac, jac[2]) == pytest.approx(0.5, rel=1e-14)
    assert _cos(c[0] @ jac, jac[1]) < 0.5  # a later correction moves earlier pairs again (as the paper's loop)


@pytest.mark.parametrize("t", [2, 3, 5])
@pytest.mark.parametrize("seed", range(3))
def test_zero_goals_are_pcgrad(t: int, seed: int) -> None:
    jac = np.random.default_rng(seed).normal(size=(t, 4))
    orders = [[j for j in np.random.default_rng(seed + i).permutation(t).tolist() if j != i] for i in range(t)]
    c, _ = _coefficients(jac, np.zeros((t, t)), orders)
    np.testing.assert_allclose(c, pcgrad_coefficients(torch.tensor(jac @ jac.T), orders).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", range(6))
def test_a_pair_below_its_goal_is_moved_exactly_onto_it(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(2, 12)) * scale * np.array([[1.0], [7.0]])
    goals = rng.uniform(-0.9, 0.9, size=(2, 2))
    c, _ = _coefficients(jac, goals, [[1], [0]])
    for i, j in [(0, 1), (1, 0)]:
        before, after = _cos(jac[i], jac[j]), _cos(c[i] @ jac, jac[j])
        if before < goals[i, j]:
            assert after == pytest.approx(goals[i, j], abs=1e-10)
            assert c[i, i] == 1 and c[i, j] > 0  # only g_j is added
        else:
            np.testing.assert_array_equal(c[i], np.eye(2)[i])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [3, 6])
def test_the_last_pair_visited_ends_at_or_above_its_goal(kind: str, t: int) -> None:
    jac = jacobian(kind, t, seed=t)
    goals = np.random.default_rng(t).uniform(-0.5, 0.9, size=(t, t))
    orders = [[j for j in range(t) if j != i][::-1] for i in range(t)]
    c, _ = _coefficients(jac, goals, orders)
    assert np.isfinite(c).all()
    for i in range(t):
        j, moved = orders[i][-1], c[i] @ jac
        if np.linalg.norm(moved) < 1e-6 * np.linalg.norm(jac[i]):
            continue  # rank 1 and anti-parallel: the exact answer is g_i' = 0 (cosine undefined), as in the references
        assert _cos(moved, jac[j]) >= goals[i, j] - 1e-8


@pytest.mark.parametrize("beta", [0.0, 0.01, 0.5, 1.0])
def test_goals_are_an_ema_of_the_measured_cosines(beta: float) -> None:
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(2, 5))
    goals = rng.uniform(-0.5, 0.5, size=(2, 2))
    _, new = _coefficients(jac, goals, [[1], [0]], beta)
    phi = _cos(jac[0], jac[1])  # with T = 2 each pair is measured on the original gradients
    for i, j in [(0, 1), (1, 0)]:
        assert new[i, j] == pytest.approx((1 - beta) * goals[i, j] + beta * phi, abs=1e-14)
    assert new[0, 0] == goals[0, 0] and new[1, 1] == goals[1, 1]


def test_degenerate_gradients_give_finite_weights() -> None:
    jac = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 1e-300]])  # a zero gradient; phi_hat = 1 (unreachable) below
    goals = np.array([[0.0, 0.5, 1.0], [0.5, 0.0, 0.5], [1.0, 0.5, 0.0]])
    c, new = _coefficients(jac, goals, [[1, 2], [0, 2], [0, 1]])
    assert np.isfinite(c).all() and np.isfinite(new).all()
    np.testing.assert_array_equal(c[1], [0, 1, 0])  # ||g_1|| = 0: nothing to rotate
    np.testing.assert_array_equal(c[0], [1, 0, 0])  # g_1 = 0 cannot be added; goal 1 unreachable: skipped


def _torchjd_orders(t: int) -> list[list[int]]:
    """TorchJD's draws: per task, in task order, randperm(T - 1) over the other tasks (global RNG)."""
    orders = []
    for i in range(t):
        others = [j for j in range(t) if j != i]
        orders.append([others[k] for k in torch.randperm(t - 1).tolist()])
    return orders


@pytest.mark.parametrize("beta", [0.5, 0.01])
@pytest.mark.parametrize("t", [2, 3, 5, 8])
def test_agrees_with_torchjd_over_several_steps_given_the_same_orders(t: int, beta: float) -> None:
    from torchjd.aggregation import GradVacWeighting

    theirs_fn = GradVacWeighting(beta=beta)
    goals = torch.zeros(t, t, dtype=torch.float64)
    for step in range(4):
        jac = np.random.default_rng(10 * t + step).normal(size=(t, 6))  # dim < t for t = 8: many conflicts
        gram = torch.tensor(jac @ jac.T)
        torch.manual_seed(step)
        theirs = theirs_fn(gram)
        torch.manual_seed(step)
        c, goals = gradvac_coefficients(gram, goals, _torchjd_orders(t), beta)
        torch.testing.assert_close(c.sum(dim=0), theirs, rtol=1e-6, atol=1e-8)  # TorchJD adds eps = 1e-8
        torch.testing.assert_close(goals, theirs_fn._phi_t, rtol=1e-6, atol=1e-8)


def _grams(t: int, n: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(7)
    return [torch.tensor((j := rng.normal(size=(t, 5))) @ j.T, dtype=torch.float32) for _ in range(n)]


def test_runs_are_seeded_and_the_state_round_trips_exactly() -> None:
    a, b = build("gradvac"), build("gradvac")
    torch.manual_seed(123)
    a.setup(4, torch.device("cpu"))
    b.setup(4, torch.device("cpu"))
    grams = _grams(4, 6)
    first = [a.weights(torch.ones(4), g) for g in grams[:3]]
    assert all(torch.equal(x, b.weights(torch.ones(4), g)) for x, g in zip(first, grams[:3], strict=True))
    assert first[0].dtype == torch.float32
    state = a.state_dict()
    assert state["phi_hat"].shape == (4, 4) and state["phi_hat"].abs().sum() > 0
    rest = [a.weights(torch.ones(4), g) for g in grams[3:]]
    c = build("gradvac", beta=0.5)
    c.setup(4, torch.device("cpu"))
    c.load_state_dict(state)
    assert all(torch.equal(x, c.weights(torch.ones(4), g)) for x, g in zip(rest, grams[3:], strict=True))


def test_a_skipped_step_leaves_no_trace() -> None:
    a, b = build("gradvac"), build("gradvac")
    for m in (a, b):
        m.setup(3, torch.device("cpu"))
    grams = _grams(3, 3)
    a.weights(torch.ones(3), grams[0])
    b.weights(torch.ones(3), grams[0])
    a.weights(torch.ones(3), grams[1])
    a.step_skipped()
    assert torch.equal(a.weights(torch.ones(3), grams[2]), b.weights(torch.ones(3), grams[2]))
    assert torch.equal(a.phi_hat, b.phi_hat)


def test_options_defaults_and_validation() -> None:
    method = build("gradvac")
    o = method.options
    assert (o.beta, o.level, o.grads, o.head_grads) == (0.5, "shared", None, "raw")
    assert repr(method) == "GradVac(beta=0.5, level='shared', grads='loop', head_grads='raw')"
    assert "grads='batched'" in repr(build("gradvac", level="shared", grads="batched"))
    with pytest.raises(MtlError, match="beta"):
        build("gradvac", beta=1.5)
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("gradvac", level="representation", grads="loop")


@pytest.mark.parametrize(("level", "grads"), [("representation", None), ("shared", "loop"), ("shared", "batched")])
def test_step_gives_every_parameter_its_gradvac_gradient(level: str, grads: str | None) -> None:
    model, x, y = _tiny_batch()
    options = {"level": level, **({"grads": grads} if grads else {})}
    method = build("gradvac", **options)
    torch.manual_seed(5)
    method.setup(2, torch.device("cpu"))
    z, losses = _losses(model, x, y)
    alpha = method.backward(Step.of(model, z, losses))
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    z, losses = _losses(model, x, y)
    params = dict(model.named_parameters())
    wrt = [z] if level == "representation" else model.shared_parameters()
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, wrt, retain_graph=True)]) for loss in losses]
    jac = torch.stack(rows).double()
    c, goals = gradvac_coefficients(jac @ jac.T, torch.zeros(2, 2, dtype=torch.float64), [[1], [0]], 0.5)
    torch.testing.assert_close(alpha, c.sum(dim=0).to(alpha.dtype), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(method.phi_hat, goals, rtol=1e-4, atol=1e-6)
    per_task = [torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True) for loss in losses]
    for i, (name, p) in enumerate(params.items()):
        g = [per_task[t][i] if per_task[t][i] is not None else torch.zeros_like(p) for t in range(2)]
        expected = g[0] + g[1] if name.startswith("heads.") else alpha[0] * g[0] + alpha[1] * g[1]
        torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-7, msg=name)


def test_shared_level_trains_through_the_cli(tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app

    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", "gradvac", "-q", "--set", "method.level=shared", "--set", "method.grads=batched"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == "gradvac"
    assert summary["method_options"]["level"] == "shared"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(list(m["alphas"].values())).all() for m in metrics)


# ---------------------------------------------------------------- goals per parameter group (`groups`)
def _blocks(jac: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(jac, np.cumsum(sizes)[:-1], axis=1)


def _group_grams(jac: np.ndarray, sizes: list[int]) -> torch.Tensor:
    return torch.tensor(np.stack([b @ b.T for b in _blocks(jac, sizes)]))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", range(4))
def test_each_group_below_its_goal_is_moved_exactly_onto_it(seed: int, scale: float) -> None:
    """Per group k, cos(g_i'[k], g_j[k]) reaches the group's own goal when it was below it; other groups' goals and
    gradients play no part (two tasks: each visits one partner, so nothing moves the pair again)."""
    rng = np.random.default_rng(seed)
    sizes = [3, 7, 2, 5]  # (a block of 1 has cosines +-1 only: no goal in between is reachable)
    jac = rng.normal(size=(2, sum(sizes))) * scale * np.array([[1.0], [7.0]])
    goals = rng.uniform(-0.9, 0.9, size=(len(sizes), 2, 2))
    c, new = gradvac_coefficients(_group_grams(jac, sizes), torch.tensor(goals), [[1], [0]], 0.5)
    c, new = c.numpy(), new.numpy()
    below = 0
    for k, block in enumerate(_blocks(jac, sizes)):
        for i, j in [(0, 1), (1, 0)]:
            before = _cos(block[i], block[j])
            assert new[k, i, j] == pytest.approx(0.5 * goals[k, i, j] + 0.5 * before, abs=1e-12)
            if before < goals[k, i, j]:
                below += 1
                assert _cos(c[k, i] @ block, block[j]) == pytest.approx(goals[k, i, j], abs=1e-10)
            else:
                np.testing.assert_array_equal(c[k, i], np.eye(2)[i])
    assert below > 0


@pytest.mark.parametrize("t", [2, 3, 5])
def test_groups_are_vaccinated_independently_in_the_same_orders(t: int) -> None:
    """The batched form is each group's own [T, T] computation, with the orders shared; one group is `whole`."""
    rng = np.random.default_rng(t)
    sizes = [4, 2, 6]
    jac = rng.normal(size=(t, sum(sizes)))
    goals = rng.uniform(-0.5, 0.9, size=(len(sizes), t, t))
    orders = [[j for j in rng.permutation(t).tolist() if j != i] for i in range(t)]
    c, new = gradvac_coefficients(_group_grams(jac, sizes), torch.tensor(goals), orders, 0.3)
    for k, block in enumerate(_blocks(jac, sizes)):
        ck, nk = gradvac_coefficients(torch.tensor(block @ block.T), torch.tensor(goals[k]), orders, 0.3)
        torch.testing.assert_close(c[k], ck, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(new[k], nk, rtol=1e-13, atol=1e-14)


def test_parameter_groups_follow_libmtls_group_types() -> None:
    from mtlcli.methods._shared_params import parameter_groups
    from tests.unit.methods.test_conformance import small_model

    model = small_model()  # encoder Linear(5, 12), Tanh, Linear(12, 6), Tanh
    assert parameter_groups(model, "whole") == [150]
    assert parameter_groups(model, "layer") == [72, 78]
    assert parameter_groups(model, "matrix") == [60, 12, 72, 6]

    class Scaled(torch.nn.Module):  # a container holding a parameter of its own, besides its child's
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(3))
            self.inner = torch.nn.Linear(2, 3)

    model.encoder = torch.nn.Sequential(Scaled(), torch.nn.Linear(3, 4, bias=False))
    model.encoder[1].weight.requires_grad_(False)
    assert parameter_groups(model, "layer") == [3, 9]  # scale, then inner's weight and bias; frozen weights left out
    assert parameter_groups(model, "matrix") == [3, 6, 3]


def _train(options: dict, model: torch.nn.Module, steps: int = 4) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    from tests.unit.methods.test_conformance import batches, task_losses

    method = build("gradvac", **options)
    torch.manual_seed(3)
    method.setup(3, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = []
    for x, y in batches()[:steps]:
        opt.zero_grad(set_to_none=True)
        z, losses = task_losses(model, x, y)
        weights.append(method.backward(Step.of(model, z, losses)))
        opt.step()
    return weights, [p.detach().clone() for p in model.parameters()]


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("groups", ["layer", "matrix"])
def test_one_group_is_the_whole_gradient(groups: str) -> None:
    """An encoder with one parameter tensor: every group type is one group, and the steps are `whole`'s."""
    from mtlcli.models import MultiTaskModel
    from tests.unit.methods.test_conformance import TASKS

    def model() -> MultiTaskModel:
        torch.manual_seed(0)
        return MultiTaskModel(torch.nn.Linear(5, 6, bias=False), {t: torch.nn.Linear(6, 1) for t in TASKS})

    whole_weights, whole_params = _train({}, model())
    group_weights, group_params = _train({"groups": groups}, model())
    for a, b in zip(whole_weights + whole_params, group_weights + group_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert any((w - 1).abs().max() > 1e-6 for w in whole_weights)  # the goals did move the gradients


@pytest.mark.usefixtures("float64")
def test_group_goals_are_checkpointed_and_a_skipped_step_leaves_no_trace() -> None:
    from tests.unit.methods.test_conformance import batches, small_model, task_losses

    def step(method, model, x, y) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        z, losses = task_losses(model, x, y)
        return method.backward(Step.of(model, z, losses))

    data = batches()
    model = small_model()
    a, b, c = (build("gradvac", groups="layer") for _ in range(3))
    torch.manual_seed(11)
    for m in (a, b, c):
        m.setup(3, torch.device("cpu"))
    for x, y in data[:2]:
        step(a, model, x, y)
        step(c, model, x, y)
    assert a.phi_hat.shape == (2, 3, 3) and a.phi_hat.abs().sum() > 0
    step(a, model, *data[2])
    a.step_skipped()  # as if step 3 never ran: a is c again
    assert torch.equal(a.phi_hat, c.phi_hat)
    b.load_state_dict(a.state_dict())  # and b, resumed from a's checkpoint, continues as both
    rest = [[step(m, model, x, y) for x, y in data[2:]] for m in (a, b, c)]
    assert all(torch.equal(u, v) and torch.equal(u, w) for u, v, w in zip(*rest, strict=True))
    assert torch.equal(a.phi_hat, b.phi_hat)


@pytest.mark.usefixtures("float64")
def test_grouped_step_returns_the_size_weighted_mean_of_the_group_weights() -> None:
    from tests.unit.methods.test_conformance import batches, small_model, task_losses

    model = small_model()
    method = build("gradvac", groups="matrix")
    method.setup(3, torch.device("cpu"))
    recorded = []
    group_weights = method.group_weights
    method.group_weights = lambda losses, grams: recorded.append(group_weights(losses, grams)) or recorded[-1]
    x, y = batches()[0]
    z, losses = task_losses(model, x, y)
    alpha = method.backward(Step.of(model, z, losses))
    sizes = torch.tensor([60.0, 12.0, 72.0, 6.0])
    torch.testing.assert_close(alpha, sizes @ recorded[0] / sizes.sum(), rtol=1e-14, atol=1e-15)


def test_groups_options_and_their_recipe_problems() -> None:
    assert build("gradvac").options.groups == "whole"
    shown = "GradVac(beta=0.5, groups='layer', level='shared', grads='loop', head_grads='raw')"
    assert repr(build("gradvac", groups="layer")) == shown
    with pytest.raises(MtlError, match="groups: layer applies only at level shared"):
        build("gradvac", level="representation", groups="layer")
    with pytest.raises(MtlError, match="groups: matrix gives each group its own task weights"):
        build("gradvac", groups="matrix", head_grads="weighted")
    with pytest.raises(MtlError, match="groups"):
        build("gradvac", groups="block")
    build("gradvac", level="representation", groups="whole")
