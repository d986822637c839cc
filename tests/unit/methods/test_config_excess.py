"""ConFIG and ExcessMTL against their defining equations, and their state and options.

ConFIG: g_c = (sum_i g_i . u) u with u the unit min-norm solution of U d = w (U the unit gradients): every task
gradient has the same positive cosine with g_c (w_i-proportional with a preference vector), ||g_c|| is the sum of
the projections, and the update is linear in a common scale of the gradients.
ExcessMTL: S += g^2, E_t = sum g_t^2 / sqrt(S_t + 1e-7), w <- T softmax(log w + eta E / E(0)) after a first step that
only sets E(0); the shared update is sum_t w_t g_t and each head gets its w_t-scaled gradient.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.config import config_weights
from mtlcli.methods.excess_mtl import exponentiated_update, weight_step
from tests.unit.methods.matrices import jacobian
from tests.unit.methods.test_conformance import TASKS, batches, small_model, task_losses

pytestmark = pytest.mark.usefixtures("float64")

# ----------------------------------------------------------------------------------------------- ConFIG


def _update(jac: torch.Tensor, pref: torch.Tensor | None = None) -> torch.Tensor:
    return config_weights(jac @ jac.T, pref) @ jac


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("t", [2, 3, 5, 10])
def test_config_has_equal_positive_cosines_and_the_projections_as_length(t: int, scale: float) -> None:
    jac = torch.tensor(jacobian("random", t, seed=t, scale=scale))
    update = _update(jac)
    cosines = (jac @ update) / (jac.norm(dim=1) * update.norm())
    assert float(cosines.min()) > 0
    torch.testing.assert_close(cosines, cosines.mean().expand(t), rtol=1e-9, atol=0)
    torch.testing.assert_close(update.norm(), (jac @ update / update.norm()).sum(), rtol=1e-9, atol=0)


def test_config_preference_vector_sets_the_ratios_of_the_cosines() -> None:
    jac = torch.tensor(jacobian("random", 4, seed=3))
    pref = torch.tensor([1.0, 2.0, 0.5, 3.0])
    update = _update(jac, pref)
    cosines = (jac @ update) / (jac.norm(dim=1) * update.norm())
    torch.testing.assert_close(cosines / cosines[0], pref / pref[0], rtol=1e-9, atol=0)
    torch.testing.assert_close(_update(jac, 7 * pref), update, rtol=1e-9, atol=0)  # only the ratios matter


def test_config_scaling_and_permutation() -> None:
    jac = torch.tensor(jacobian("random", 3, seed=5))
    update = _update(jac)
    torch.testing.assert_close(_update(1e3 * jac), 1e3 * update, rtol=1e-9, atol=0)  # linear under a common scale
    scaled = jac * torch.tensor([[10.0], [1.0], [1.0]])  # one task's scale moves the length, not the direction
    torch.testing.assert_close(_update(scaled) / _update(scaled).norm(), update / update.norm(), rtol=1e-9, atol=1e-12)
    assert float(_update(scaled).norm()) > float(update.norm())
    perm = torch.tensor([2, 0, 1])
    torch.testing.assert_close(_update(jac[perm]), update, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("kind", "t"), [("random", 3), ("random", 70), ("low-rank", 6), ("duplicated", 5), ("parallel", 3)])
def test_config_is_torchjds_aggregation(kind: str, t: int) -> None:
    """TorchJD's ConFIG (pinv of the unit gradients) on full-rank, wide (T > P), rank-deficient and rank-1 matrices."""
    from torchjd.aggregation import ConFIG

    jac = torch.tensor(jacobian(kind, t, seed=t))
    expected = ConFIG()(jac)
    torch.testing.assert_close(_update(jac), expected, rtol=1e-7, atol=1e-9 * float(expected.norm()))


def test_config_two_tasks_is_the_authors_orthogonal_component_form() -> None:
    """The authors' `ConFIG_update_double` (tum-pbs/ConFIG, commit 9486243, conflictfree/grad_operator.py, used by
    `ConFIGOperator` for two losses), transcribed: the bisector of the unit orthogonal components, with the
    projection length."""
    jac = torch.tensor(jacobian("random", 2, seed=11))
    g1, g2 = jac
    u1, u2 = g1 / g1.norm(), g2 / g2.norm()
    cos = u1 @ u2
    or1, or2 = g2 - g2.norm() * cos * u1, g1 - g1.norm() * cos * u2
    o1, o2 = or1 / or1.norm(), or2 / or2.norm()
    direction = (o2 @ u1) / (o1 @ u2) * o1 + o2
    unit = direction / direction.norm()
    torch.testing.assert_close(_update(jac), (jac @ unit).sum() * unit, rtol=1e-9, atol=1e-12)


def test_config_degenerate_grams() -> None:
    assert torch.equal(config_weights(torch.zeros(3, 3)), torch.zeros(3))
    jac = torch.tensor(jacobian("random", 3, seed=2))
    jac[1] = 0  # a zero gradient is left out (a zero unit row, as the reference's nan_to_num)
    update = _update(jac)
    torch.testing.assert_close(update, _update(jac[[0, 2]]), rtol=1e-9, atol=1e-12)
    collinear = torch.tensor(jacobian("collinear", 4, seed=1))  # 1e-6 from rank 1: equal cosines to ~1e-6
    cosines = collinear @ _update(collinear) / (collinear.norm(dim=1) * _update(collinear).norm())
    assert float(cosines.min()) > 1 - 1e-6
    with pytest.raises(ValueError, match="square"):
        config_weights(torch.ones(2, 3))


def test_config_options_and_repr() -> None:
    method = build("config")
    assert (method.options.level, method.options.head_grads, method.options.pref_vector) == ("shared", "raw", None)
    assert repr(method) == "Config(pref_vector=None, level='shared', grads='loop', head_grads='raw')"
    with pytest.raises(MtlError, match="pref_vector"):
        build("config", pref_vector=[1.0, -1.0])
    with pytest.raises(MtlError, match="pref_vector has 2 weights for 3 tasks"):
        build("config", pref_vector=[1.0, 2.0]).setup(3, torch.device("cpu"))
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("config", level="representation", grads="batched")


# ----------------------------------------------------------------------------------------------- ExcessMTL


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _run(method, model, data) -> list[torch.Tensor]:
    weights = []
    for x, y in data:
        model.zero_grad(set_to_none=True)
        z, losses = task_losses(model, x, y)
        weights.append(method.backward(Step.of(model, z, losses)))
    return weights


@pytest.mark.parametrize(("level", "grads"), [("shared", None), ("shared", "batched"), ("representation", None)])
def test_excess_mtl_follows_its_equations(level: str, grads: str | None) -> None:
    """Three steps on a fixed model, recomputed by hand from the per-task gradients (summed over the batch for z)."""
    model = small_model()
    method = build("excess-mtl", level=level, robust_step_size=0.5, **({"grads": grads} if grads else {}))
    method.setup(len(TASKS), torch.device("cpu"))
    squares, initial, weights = None, None, torch.ones(len(TASKS))
    for x, y in batches()[:3]:
        z, losses = task_losses(model, x, y)
        wrt = [z] if level == "representation" else list(model.encoder.parameters())
        rows = []
        for loss in losses:
            grads = torch.autograd.grad(loss, wrt, retain_graph=True)
            rows.append(grads[0].sum(0).reshape(-1) if level == "representation" else torch.cat([g.reshape(-1) for g in grads]))
        g = torch.stack(rows)
        squares = g**2 if squares is None else squares + g**2
        excess = (g**2 / torch.sqrt(squares + 1e-7)).sum(1)
        if initial is None:
            initial = excess
        else:
            weights = weights * torch.exp(0.5 * excess / initial)
            weights = weights / weights.sum() * len(TASKS)
        per_task = [torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True) for loss in losses]
        model.zero_grad(set_to_none=True)
        got = method.backward(Step.of(model, z, losses))
        torch.testing.assert_close(got, weights, rtol=1e-12, atol=0)
        for i, p in enumerate(model.parameters()):
            parts = [gt[i] if gt[i] is not None else torch.zeros_like(p) for gt in per_task]
            expected = sum(w * part for w, part in zip(weights, parts, strict=True))
            torch.testing.assert_close(p.grad, expected, rtol=1e-10, atol=1e-14)
    assert float((weights - 1).abs().max()) > 1e-3  # the weights moved
    assert method.tracked.ready()["squared_sum"].shape == (len(TASKS), 1, g.shape[1])


def test_excess_mtl_update_saturates_where_the_authors_exp_overflows() -> None:
    weights = exponentiated_update(torch.ones(3), torch.tensor([1e6, 1.0, 0.0]), 1.0)
    torch.testing.assert_close(weights, torch.tensor([3.0, 0.0, 0.0]))
    huge = exponentiated_update(torch.ones(2), torch.tensor([math.inf, 0.0]), 1.0)
    assert torch.isfinite(huge).all() and float(huge[0]) == 2.0
    authors = torch.ones(3) * torch.exp(torch.tensor([1e6, 1.0, 0.0]))
    assert torch.isnan(authors / authors.sum()).any()


def test_excess_mtl_a_zero_first_excess_risk_waits_for_a_positive_one() -> None:
    """The authors' E / E(0) is inf or NaN there; here the task's baseline is its first positive excess risk."""
    first, later = torch.tensor(True), torch.tensor(False)
    weights, initial = weight_step(torch.ones(3), torch.zeros(3), torch.tensor([2.0, 0.0, 4.0]), first=first, step_size=1.0)
    assert torch.equal(weights, torch.ones(3)) and torch.equal(initial, torch.tensor([2.0, 0.0, 4.0]))
    weights, initial = weight_step(weights, initial, torch.tensor([1.0, 0.0, 4.0]), first=later, step_size=1.0)
    torch.testing.assert_close(weights, 3 * torch.softmax(torch.tensor([0.5, 0.0, 1.0]), 0))
    weights, initial = weight_step(weights, initial, torch.tensor([1.0, 3.0, 4.0]), first=later, step_size=1.0)
    assert torch.equal(initial, torch.tensor([2.0, 3.0, 4.0]))  # E(0) of task 1 set now: its ratio is 1
    torch.testing.assert_close(weights, 3 * torch.softmax(torch.tensor([0.5, 0.0, 1.0]) + torch.tensor([0.5, 1.0, 1.0]), 0))


def test_excess_mtl_state_round_trips_and_the_next_steps_are_identical() -> None:
    data = batches() + batches(seed=2)
    a, model = build("excess-mtl", robust_step_size=1.0), small_model()
    a.setup(len(TASKS), torch.device("cpu"))
    _run(a, model, data[:3])
    saved = a.state_dict()
    assert set(saved) == {"squared_sum", "initial", "weights", "step"} and int(saved["step"]) == 3
    b = build("excess-mtl", robust_step_size=1.0)
    b.setup(len(TASKS), torch.device("cpu"))
    b.load_state_dict(copy.deepcopy(saved))
    twin = copy.deepcopy(model)
    for wa, wb in zip(_run(a, model, data[3:]), _run(b, twin, data[3:]), strict=True):
        assert torch.equal(wa, wb)
    assert all(torch.equal(x, y) for x, y in zip(_grads(model), _grads(twin), strict=True))
    assert not torch.equal(saved["squared_sum"], a.state_dict()["squared_sum"])  # state_dict is a copy


def test_excess_mtl_skipped_and_non_finite_steps_leave_the_state_alone() -> None:
    data = batches()
    method, model = build("excess-mtl"), small_model()
    method.setup(len(TASKS), torch.device("cpu"))
    _run(method, model, data[:2])
    before = method.state_dict()
    _run(method, model, data[2:3])
    assert not torch.equal(before["squared_sum"], method.state_dict()["squared_sum"])
    method.step_skipped()
    assert all(torch.equal(before[k], method.state_dict()[k]) for k in before)
    x, y = data[3]
    z, losses = task_losses(model, x, y)
    losses[1] = losses[1] * torch.tensor(math.nan)
    model.zero_grad(set_to_none=True)
    weights = method.backward(Step.of(model, z, losses))
    assert not torch.isfinite(weights).all()  # the trainer's guard sees it
    assert all(torch.equal(before[k], method.state_dict()[k]) for k in before)


def test_excess_mtl_options_and_repr() -> None:
    method = build("excess-mtl")
    assert repr(method) == "ExcessMtl(level='shared', grads='loop', robust_step_size=0.01)"
    assert "grads='batched'" in repr(build("excess-mtl", grads="batched"))
    with pytest.raises(MtlError, match="robust_step_size"):
        build("excess-mtl", robust_step_size=0.0)
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("excess-mtl", level="representation", grads="loop")
