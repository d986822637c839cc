"""The level shell and the shared-parameter gradients (mtlcli.methods._levels, _shared_params) against closed forms
on a linear model: J = dL/dtheta_sh row by row, each head's own gradient, the update at each level with fixed
weights, gradient accumulation, and the distributed path (a fake job of two ranks)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mtlcli.methods import _levels, _shared_params
from mtlcli.methods._levels import level_step
from mtlcli.methods._representation import _accumulate, _take
from mtlcli.methods._shared_params import (
    _flat,
    _write_row,
    apply_shared_update,
    gram_step_on_shared_parameters,
    grouped_gram_step_on_shared_parameters,
    head_weights_for,
    shared_grads,
)
from tests.unit.methods.linear_tasks import LinearTasks

FIXED = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)


@dataclass
class At:
    level: str
    grads: str | None
    head_grads: str


def recording(seen: list):
    def weights(losses: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        seen.append((losses.clone(), gram.clone()))
        return FIXED.clone()

    return weights


def assert_update(tasks: LinearTasks, shared_w: torch.Tensor, head_w: torch.Tensor | None, offset: float = 0.0) -> None:
    want = tasks.closed_form()
    encoder = torch.einsum("t,tij->ij", shared_w, want.encoder) + offset
    torch.testing.assert_close(tasks.model.encoder.weight.grad, encoder, rtol=1e-12, atol=1e-12)
    for t in range(3):
        scale = 1.0 if head_w is None else float(head_w[t])
        weight, bias = tasks.head(t).weight.grad, tasks.head(t).bias.grad
        if want.weight[t] is None:
            assert weight is None or torch.equal(weight, torch.full_like(weight, offset))
        else:
            torch.testing.assert_close(weight, scale * want.weight[t] + offset, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bias, scale * want.bias[t] + offset, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["loop", "batched"])
@pytest.mark.parametrize("ignoring", [False, True])
def test_shared_grads_are_the_closed_form(mode: str, ignoring: bool) -> None:
    tasks = LinearTasks(1, ignoring=ignoring)
    got = shared_grads(tasks.step(), mode)
    want = tasks.closed_form()
    torch.testing.assert_close(got.jacobian, want.encoder.reshape(3, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.gram(), want.gram_shared(), rtol=1e-12, atol=1e-12)
    for t in range(3):
        weight, bias = got.head_grads[t]
        if want.weight[t] is None:
            assert weight is None
        else:
            torch.testing.assert_close(weight, want.weight[t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bias, want.bias[t], rtol=1e-12, atol=1e-12)


def test_rows_of_the_jacobian_follow_the_parameter_order() -> None:
    """Two shared tensors, one of which a task does not reach: its block of that task's row is zero."""
    tasks = LinearTasks(2)
    extra = torch.nn.Parameter(torch.tensor([1.5, -2.0], dtype=torch.float64))
    tasks.model.encoder.register_parameter("extra", extra)
    step = tasks.step()
    step.parts = (step.parts[0] + 3.0 * extra.sum(), step.parts[1], step.parts[2] + (extra * extra).sum())
    step.losses = torch.stack(step.parts)
    want = tasks.closed_form().encoder.reshape(3, -1)
    names = [n for n, _ in tasks.model.encoder.named_parameters()]
    extra_rows = torch.tensor([[3.0, 3.0], [0.0, 0.0], [3.0, -4.0]], dtype=torch.float64)
    blocks = {"weight": want, "extra": extra_rows}
    expected = torch.cat([blocks[n] for n in names], dim=1)
    for mode in ("loop", "batched"):
        torch.testing.assert_close(shared_grads(step, mode).jacobian, expected, rtol=1e-12, atol=1e-12)


def test_an_unknown_grads_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^unknown grads mode 'vmap'; choose loop or batched$"):
        shared_grads(LinearTasks(3).step(), "vmap")  # type: ignore[arg-type]


@pytest.mark.parametrize("grads", [None, "loop", "batched"])
@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
@pytest.mark.parametrize("ignoring", [False, True])
def test_the_shared_level_step(grads: str | None, head_grads: str, ignoring: bool) -> None:
    tasks = LinearTasks(4, ignoring=ignoring)
    seen: list = []
    alpha = level_step(tasks.step(), recording(seen), At("shared", grads, head_grads))
    assert torch.equal(alpha, FIXED)
    ((losses, gram),) = seen
    want = tasks.closed_form()
    torch.testing.assert_close(gram, want.gram_shared(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(losses, want.losses, rtol=1e-12, atol=1e-12)
    assert_update(tasks, FIXED, FIXED if head_grads == "weighted" else None)


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
def test_the_representation_level_step(head_grads: str) -> None:
    tasks = LinearTasks(5, ignoring=True)
    seen: list = []
    alpha = level_step(tasks.step(), recording(seen), At("representation", None, head_grads))
    assert torch.equal(alpha, FIXED)
    torch.testing.assert_close(seen[0][1], tasks.closed_form().gram_z(), rtol=1e-12, atol=1e-12)
    assert_update(tasks, FIXED, FIXED if head_grads == "weighted" else None)


def test_no_grads_mode_means_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    modes = []
    real = _shared_params.shared_grads
    monkeypatch.setattr(_shared_params, "shared_grads", lambda step, mode="loop": modes.append(mode) or real(step, mode))
    for grads in (None, "batched", "loop"):
        level_step(LinearTasks(6).step(), recording([]), At("shared", grads, "raw"))
    assert modes == ["loop", "batched", "loop"]
    assert _levels.gram_step_on_shared_parameters is _shared_params.gram_step_on_shared_parameters


@pytest.mark.parametrize("grads", ["loop", "batched"])
@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
def test_shared_update_accumulates_onto_existing_grad(grads: str, head_grads: str) -> None:
    tasks = LinearTasks(7, ignoring=True)
    for p in tasks.model.parameters():
        p.grad = torch.full_like(p, 0.5)
    held = {n: p.grad for n, p in tasks.model.named_parameters()}
    gram_step_on_shared_parameters(tasks.step(), recording([]), grads=grads, head_grads=head_grads)
    assert all(p.grad is held[n] for n, p in tasks.model.named_parameters())
    assert_update(tasks, FIXED, FIXED if head_grads == "weighted" else None, offset=0.5)


def test_weights_with_a_graph_and_another_dtype() -> None:
    tasks = LinearTasks(8)
    step = tasks.step()
    weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float32, requires_grad=True)
    apply_shared_update(step, shared_grads(step, "loop"), weights * 1.0, head_weights=weights * 2.0)
    assert_update(tasks, weights.detach().double(), 2 * weights.detach().double())
    assert weights.grad is None


def test_head_weights_for() -> None:
    assert head_weights_for(FIXED, "weighted") is FIXED
    assert head_weights_for(FIXED, "raw") is None


def test_accumulate_copies_and_take_adopts() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    g = torch.tensor([1.0, 2.0])
    _accumulate(p, g)
    g.add_(10.0)  # the caller's tensor (a view of batched gradients) may change later: .grad must not
    assert p.grad.tolist() == [1.0, 2.0]
    _accumulate(p, torch.tensor([0.5, 0.5]))
    assert p.grad.tolist() == [1.5, 2.5]
    q = torch.nn.Parameter(torch.zeros(2))
    fresh = torch.tensor([3.0, 4.0], requires_grad=True) * 1.0
    _take(q, fresh)
    assert q.grad.tolist() == [3.0, 4.0] and not q.grad.requires_grad
    _take(q, torch.tensor([1.0, 1.0]))
    assert q.grad.tolist() == [4.0, 5.0]


class TwoRanks:
    """A rank of a 2-process job whose other rank computed the same Jacobian (so the sum doubles it)."""

    active = True
    world = 2

    def __init__(self) -> None:
        self.summed: list[tuple[int, ...]] = []

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        self.summed.append(tuple(tensor.shape))
        return tensor.mul_(2)


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
def test_across_ranks_the_jacobian_is_summed_and_each_rank_writes_its_share(
    monkeypatch: pytest.MonkeyPatch, head_grads: str
) -> None:
    job = TwoRanks()
    monkeypatch.setattr(_shared_params.distributed, "current", lambda: job)
    tasks = LinearTasks(9)
    step = tasks.step()
    step.summed = step.losses.detach() * 2  # the losses of both ranks, summed once by the trainer
    seen: list = []
    alpha = gram_step_on_shared_parameters(step, recording(seen), grads="loop", head_grads=head_grads)
    assert torch.equal(alpha, FIXED)
    assert job.summed == [(3, 4 * 3)]  # J [T, P], before its Gram matrix
    want = tasks.closed_form()
    torch.testing.assert_close(seen[0][1], 4 * want.gram_shared(), rtol=1e-12, atol=1e-12)  # (2J)(2J)^T
    torch.testing.assert_close(seen[0][0], 2 * want.losses, rtol=1e-12, atol=1e-12)
    # each rank writes alpha / 2 of the summed J (the trainer's all-reduce adds the two halves); heads: alpha or raw
    assert_update(tasks, FIXED, FIXED if head_grads == "weighted" else None)


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_across_ranks_the_losses_travel_in_the_jacobians_all_reduce(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    job = TwoRanks()
    monkeypatch.setattr(_shared_params.distributed, "current", lambda: job)
    tasks = LinearTasks(9)
    step = tasks.step()
    seen: list = []
    gram_step_on_shared_parameters(step, recording(seen), grads=mode, head_grads="raw")
    assert job.summed == [(3 * 12 + 3,)]  # J [T, P] and the T losses after it: one all-reduce, J not copied
    want = tasks.closed_form()
    torch.testing.assert_close(seen[0][0], 2 * want.losses, rtol=1e-12, atol=1e-12)
    assert step.summed is not None and torch.equal(step.summed, seen[0][0])  # kept for the trainer
    torch.testing.assert_close(seen[0][1], 4 * want.gram_shared(), rtol=1e-12, atol=1e-12)
    assert_update(tasks, FIXED, None)


def test_a_shared_parameter_no_task_reaches_has_a_zero_block() -> None:
    tasks = LinearTasks(10)
    unused = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    tasks.model.encoder.register_parameter("unused", unused)
    names = [n for n, _ in tasks.model.encoder.named_parameters()]
    blocks = {"weight": tasks.closed_form().encoder.reshape(3, -1), "unused": torch.zeros(3, 6, dtype=torch.float64)}
    expected = torch.cat([blocks[n] for n in names], dim=1)
    for mode in ("loop", "batched"):
        got = shared_grads(tasks.step(), mode).jacobian
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_shared_grads_default_to_the_loop() -> None:
    tasks = LinearTasks(11)
    torch.testing.assert_close(shared_grads(tasks.step()).jacobian, tasks.closed_form().encoder.reshape(3, -1))


@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_the_graph_is_kept_for_later_backwards(mode: str) -> None:
    tasks = LinearTasks(12)
    step = tasks.step()
    shared_grads(step, mode)
    step.losses.sum().backward()  # e.g. a method's own parameters, or the trainer's: the graph is still there
    want = tasks.closed_form()
    torch.testing.assert_close(tasks.model.encoder.weight.grad, want.encoder.sum(dim=0), rtol=1e-12, atol=1e-12)


def test_gradients_that_do_not_match_the_parameters_are_an_error() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="zip"):
        _flat((torch.ones(2),), params)
    with pytest.raises(ValueError, match="zip"):
        _write_row(torch.zeros(5), (torch.ones(2),), params)
    step = LinearTasks(13).step()
    grads = shared_grads(step, "loop")
    with pytest.raises(ValueError, match="zip"):
        apply_shared_update(step, type(grads)(grads.jacobian, grads.head_grads[:2]), FIXED, head_weights=None)
    step = LinearTasks(13).step()
    grads = shared_grads(step, "loop")
    fewer = [grads.head_grads[0][:1], *grads.head_grads[1:]]
    with pytest.raises(ValueError, match="zip"):
        apply_shared_update(step, type(grads)(grads.jacobian, fewer), FIXED, head_weights=FIXED)


def test_flat_concatenates_per_parameter_gradients_with_zeros_for_the_missing() -> None:
    params = [torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)), torch.nn.Parameter(torch.zeros(1, 3))]
    got = _flat((torch.tensor([1.0, 2.0], dtype=torch.float64), None), params)
    assert got.tolist() == [1.0, 2.0, 0.0, 0.0, 0.0] and got.dtype == torch.float64
    batched = _flat((None, torch.arange(6.0).reshape(2, 1, 3)), params, (2,))
    assert batched.tolist() == [[0.0, 0.0, 0.0, 1.0, 2.0], [0.0, 0.0, 3.0, 4.0, 5.0]]


GROUPED = torch.tensor([[0.2, 0.3, 0.5], [1.0, -1.0, 2.0]], dtype=torch.float64)  # [K, T]: one row per block


@pytest.mark.parametrize("world", [1, 2])
def test_the_grouped_step_gives_each_block_of_columns_its_own_weights(monkeypatch: pytest.MonkeyPatch, world: int) -> None:
    """J's 12 columns cut into blocks of 5 and 7: each block's Gram matrix, block k of the update sum_t w[k, t] g_t
    [block k], heads raw, the size-weighted mean returned; across two ranks J is summed and each writes half."""
    tasks = LinearTasks(14)
    step = tasks.step()
    if world == 2:
        job = TwoRanks()
        monkeypatch.setattr(_shared_params.distributed, "current", lambda: job)
        step.summed = step.losses.detach() * 2
    seen: list[torch.Tensor] = []

    def weights(losses: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
        seen.append(grams.clone())
        return GROUPED.clone()

    alpha = grouped_gram_step_on_shared_parameters(step, weights, [5, 7], grads="loop")
    want = tasks.closed_form()
    jac = want.encoder.reshape(3, -1)
    blocks = (world * jac[:, :5], world * jac[:, 5:])
    torch.testing.assert_close(seen[0], torch.stack([b @ b.T for b in blocks]), rtol=1e-12, atol=1e-12)
    update = torch.cat([GROUPED[0] @ jac[:, :5], GROUPED[1] @ jac[:, 5:]]).view(4, 3)
    torch.testing.assert_close(tasks.model.encoder.weight.grad, update, rtol=1e-12, atol=1e-12)
    for t in range(3):
        torch.testing.assert_close(tasks.head(t).weight.grad, want.weight[t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tasks.head(t).bias.grad, want.bias[t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alpha, (5 * GROUPED[0] + 7 * GROUPED[1]) / 12, rtol=1e-14, atol=1e-15)


def test_the_grouped_step_flags_non_finite_gradients() -> None:
    tasks = LinearTasks(15)
    tasks.x[0, 0] = float("nan")  # every task's gradient is NaN
    alpha = grouped_gram_step_on_shared_parameters(tasks.step(), lambda losses, grams: GROUPED.clone(), [5, 7], grads="loop")
    assert torch.isnan(alpha).all()
