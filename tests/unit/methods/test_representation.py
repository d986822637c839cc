"""Gradients on the shared representation z (mtlcli.methods._representation) against closed forms on a linear
model: a task whose loss ignores z, gradients that accumulate onto a `.grad` already there, the normalisations by
their definition (a zero gradient and a zero loss included) and the distributed sum of the Gram matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlcli.methods import _representation
from mtlcli.methods._representation import (
    apply_representation_update,
    gram_step_on_representation,
    normalize_gram,
    representation_grads,
    summed_gram_and_losses,
)
from mtlcli.methods.min_norm import min_norm
from tests.unit.methods.linear_tasks import LinearTasks

FIXED = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)


def fixed_weights(losses: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    return FIXED.clone()


def test_representation_grads_are_the_closed_form() -> None:
    tasks = LinearTasks(1)
    grads = representation_grads(tasks.step())
    want = tasks.closed_form()
    torch.testing.assert_close(grads.z_grads, want.z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads.gram(), want.gram_z(), rtol=1e-12, atol=1e-12)
    for t in range(3):
        weight, bias = grads.head_grads[t]
        torch.testing.assert_close(weight, want.weight[t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bias, want.bias[t], rtol=1e-12, atol=1e-12)


def test_a_task_whose_loss_ignores_z_has_a_zero_row() -> None:
    tasks = LinearTasks(2, ignoring=True)
    grads = representation_grads(tasks.step())
    assert grads.z_grads.shape == (3, 5 * 4)
    assert torch.equal(grads.z_grads[2], torch.zeros(20, dtype=torch.float64))
    assert grads.head_grads[2][0] is None  # its head's weight is not reached either
    torch.testing.assert_close(grads.head_grads[2][1], tasks.closed_form().bias[2])
    assert torch.equal(grads.gram()[2], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
@pytest.mark.parametrize("ignoring", [False, True])
def test_the_step_gives_every_parameter_its_closed_form_gradient(head_grads: str, ignoring: bool) -> None:
    tasks = LinearTasks(3, ignoring=ignoring)
    want = tasks.closed_form()
    seen = []
    alpha = gram_step_on_representation(
        tasks.step(), lambda losses, g: seen.append((losses, g)) or FIXED.clone(), head_grads=head_grads
    )
    assert torch.equal(alpha, FIXED) and not alpha.requires_grad
    ((losses, gram),) = seen
    torch.testing.assert_close(gram, want.gram_z(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses, want.losses, rtol=1e-12, atol=1e-12)
    encoder = tasks.model.encoder.weight.grad
    torch.testing.assert_close(encoder, torch.einsum("t,tij->ij", FIXED, want.encoder), rtol=1e-12, atol=1e-12)
    for t in range(3):
        scale = float(FIXED[t]) if head_grads == "weighted" else 1.0
        weight, bias = tasks.head(t).weight.grad, tasks.head(t).bias.grad
        if want.weight[t] is None:
            assert weight is None
        else:
            torch.testing.assert_close(weight, scale * want.weight[t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bias, scale * want.bias[t], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
def test_gradients_accumulate_onto_existing_grad(head_grads: str) -> None:
    """Like autograd's backward, the update adds to a `.grad` that already holds a value (gradient accumulation)."""
    tasks = LinearTasks(4)
    before = {}
    for name, p in tasks.model.named_parameters():
        p.grad = torch.full_like(p, 0.25)
        before[name] = p.grad
    gram_step_on_representation(tasks.step(), fixed_weights, head_grads=head_grads)
    fresh = LinearTasks(4)
    gram_step_on_representation(fresh.step(), fixed_weights, head_grads=head_grads)
    new = dict(fresh.model.named_parameters())
    for name, p in tasks.model.named_parameters():
        assert p.grad is before[name]  # in place
        torch.testing.assert_close(p.grad, new[name].grad + 0.25, rtol=1e-12, atol=1e-12, msg=name)


def test_the_update_takes_weights_that_carry_a_graph_and_another_dtype() -> None:
    tasks = LinearTasks(5)
    want = tasks.closed_form()
    step = tasks.step()
    grads = representation_grads(step)
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float32, requires_grad=True)
    apply_representation_update(step, grads, weights * 1.0, head_grads="weighted")
    expected = torch.einsum("t,tij->ij", weights.detach().double(), want.encoder)
    torch.testing.assert_close(tasks.model.encoder.weight.grad, expected, rtol=1e-12, atol=1e-12)
    assert weights.grad is None


def test_a_non_finite_gradient_is_flagged_and_never_reaches_the_weighting() -> None:
    tasks = LinearTasks(6)
    step = tasks.step()
    step.parts = (step.parts[0], step.parts[1] * math.nan, step.parts[2])
    seen = []
    alpha = gram_step_on_representation(step, lambda losses, g: seen.append(g) or FIXED.clone(), head_grads="weighted")
    assert torch.isfinite(seen[0]).all() and torch.equal(seen[0][1], torch.zeros(3, dtype=torch.float64))
    assert math.isnan(alpha[1]) and alpha[0] == 0 and alpha[2] == 0


# ------------------------------------------------------------------------------------------------------------
# normalisations, by their definition: the Gram matrix of g_t / c_t


def normalised_gram(jac: np.ndarray, losses: np.ndarray, normalization: str) -> np.ndarray:
    norms = np.linalg.norm(jac, axis=1)
    divisor = {"none": np.ones(len(jac)), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    scaled = np.stack([row / c if np.any(row) else row for row, c in zip(jac, divisor, strict=True)])
    return scaled @ scaled.T


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_normalisations_by_definition(normalization: str) -> None:
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(4, 6)) * np.array([[1e-3], [1.0], [10.0], [1e3]])
    losses = np.array([0.1, 2.0, 0.5, 30.0])
    got = normalize_gram(torch.tensor(jac @ jac.T), torch.tensor(losses), normalization)
    np.testing.assert_allclose(got.numpy(), normalised_gram(jac, losses, normalization), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_zero_gradient_or_zero_loss_stays_a_zero_vector(normalization: str, dtype: torch.dtype) -> None:
    """g_t = 0 (e.g. a dense task with no valid pixel in the batch: loss 0, gradient 0) stays 0 after dividing by any
    c_t > 0: its row of the Gram matrix is 0, not NaN; the min-norm point is then 0 (a Pareto-stationary step), with
    all the weight on that task, and is not reported as a non-finite gradient."""
    jac = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [3.0, -1.0, 1.0]], dtype=dtype)
    losses = torch.tensor([0.0, 1.5, 2.0], dtype=dtype)
    got = normalize_gram(jac @ jac.T, losses, normalization)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], torch.zeros(3, dtype=dtype)) and torch.equal(got[:, 0], torch.zeros(3, dtype=dtype))
    expected = normalised_gram(jac.double().numpy(), losses.double().numpy(), normalization)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5)
    assert min_norm(got).tolist() == [1.0, 0.0, 0.0]


def test_none_leaves_the_gram_matrix_alone_and_unknown_is_refused() -> None:
    gram = torch.tensor([[4.0, 1.0], [1.0, 9.0]])
    assert normalize_gram(gram, torch.tensor([math.nan, 0.0]), "none") is gram
    with pytest.raises(ValueError, match=r"^unknown normalization 'l1'$"):
        normalize_gram(gram, torch.ones(2), "l1")


def test_normalisation_uses_the_losses_without_their_graph() -> None:
    losses = torch.tensor([2.0, 4.0], dtype=torch.float64, requires_grad=True)
    gram = torch.tensor([[4.0, 2.0], [2.0, 16.0]], dtype=torch.float64)
    got = normalize_gram(gram, losses, "loss")
    assert not got.requires_grad
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.25], [0.25, 1.0]], dtype=torch.float64))
    got = normalize_gram(gram, torch.tensor([2.0, 4.0], dtype=torch.float32), "loss+")  # losses cast to G's dtype
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor([[1 / 4, 2 / 64], [2 / 64, 1 / 16]], dtype=torch.float64))


# ------------------------------------------------------------------------------------------------------------
# across ranks


class FakeJob:
    """A rank of a 2-process job whose other rank holds `other_gram` and `other_losses` (what the sums add)."""

    active = True
    world = 2

    def __init__(self, other_gram: torch.Tensor, other_losses: torch.Tensor) -> None:
        self.other_gram, self.other_losses = other_gram, other_losses
        self.calls: list[str] = []

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls.append("sum_")
        return tensor.add_(self.other_gram)

    def sum_gram_and_losses(self, gram: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append("sum_gram_and_losses")
        return gram + self.other_gram, losses + self.other_losses


def test_one_process_reads_its_own_gram_and_losses() -> None:
    step = LinearTasks(7).step()
    gram = torch.eye(3, dtype=torch.float64)
    got_gram, got_losses = summed_gram_and_losses(step, gram)
    assert got_gram is gram
    torch.testing.assert_close(got_losses, step.losses.detach())


def test_across_ranks_the_gram_matrix_and_the_losses_are_summed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    other_gram, other_losses = torch.full((3, 3), 10.0, dtype=torch.float64), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    job = FakeJob(other_gram, other_losses)
    monkeypatch.setattr(_representation.distributed, "current", lambda: job)
    step = LinearTasks(7).step()
    gram = torch.eye(3, dtype=torch.float64)
    got_gram, got_losses = summed_gram_and_losses(step, gram.clone())
    assert job.calls == ["sum_gram_and_losses"]
    torch.testing.assert_close(got_gram, gram + other_gram)
    torch.testing.assert_close(got_losses, step.losses.detach() + other_losses)
    assert step.summed is got_losses  # kept for the trainer: not all-reduced again
    # losses already summed this step (by the trainer or another method): only the Gram matrix is summed
    job.calls.clear()
    got_gram, again = summed_gram_and_losses(step, gram.clone())
    assert job.calls == ["sum_"] and again is got_losses
    torch.testing.assert_close(got_gram, gram + other_gram)


def test_a_task_that_ignores_z_but_reaches_its_head() -> None:
    tasks = LinearTasks(8)
    step = tasks.step()
    weight = tasks.head(2).weight
    step.parts = (*step.parts[:2], 0.5 * (weight * weight).sum())  # no z, no bias: only the head's weight
    grads = representation_grads(step)
    assert torch.equal(grads.z_grads[2], torch.zeros(20, dtype=torch.float64))
    torch.testing.assert_close(grads.head_grads[2][0], weight.detach())
    assert grads.head_grads[2][1] is None
    torch.testing.assert_close(grads.z_grads[:2], tasks.closed_form().z[:2], rtol=1e-12, atol=1e-12)


def test_the_update_weights_the_heads_by_default() -> None:
    tasks = LinearTasks(9)
    want = tasks.closed_form()
    step = tasks.step()
    apply_representation_update(step, representation_grads(step), FIXED)
    for t in range(3):
        torch.testing.assert_close(tasks.head(t).bias.grad, FIXED[t] * want.bias[t], rtol=1e-12, atol=1e-12)


def test_gradients_that_do_not_match_the_tasks_are_an_error() -> None:
    step = LinearTasks(10).step()
    grads = representation_grads(step)
    fewer_tasks = type(grads)(grads.z_grads, grads.head_grads[:2])
    with pytest.raises(ValueError, match="zip"):
        apply_representation_update(step, fewer_tasks, FIXED, head_grads="raw")
    step = LinearTasks(10).step()
    grads = representation_grads(step)
    fewer_params = type(grads)(grads.z_grads, [grads.head_grads[0][:1], *grads.head_grads[1:]])
    with pytest.raises(ValueError, match="zip"):
        apply_representation_update(step, fewer_params, FIXED, head_grads="raw")


def test_a_zero_loss_in_float32_with_a_float64_gram() -> None:
    """The losses are cast to the Gram matrix's dtype before the clamp: float64's tiny is 0 in float32."""
    jac = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    for normalization in ("loss", "loss+"):
        got = normalize_gram(jac @ jac.T, torch.tensor([0.0, 2.0], dtype=torch.float32), normalization)
        assert torch.isfinite(got).all() and torch.equal(got[0], torch.zeros(2, dtype=torch.float64))
