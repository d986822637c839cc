"""Partially labelled tasks: the masked losses, the metrics that skip missing labels, and what the methods do with
a batch where a task has no label at all (loss 0, zero gradient: nothing may become NaN or inf)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtlcli.methods import REGISTRY, build
from mtlcli.methods.base import Step
from mtlcli.models import MultiTaskModel
from mtlcli.models.mlp import MLPEncoder
from mtlcli.partial import MISSING_LABEL, masked_cross_entropy, masked_mse
from mtlcli.tasks import LOSSES, METRICS, Task


def test_masked_cross_entropy_is_the_mean_over_labelled_samples_only() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0], [0.5, 0.0, 0.0]])
    labels = torch.tensor([0, MISSING_LABEL, 2, MISSING_LABEL])
    by_hand = [-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))), -math.log(math.exp(3) / (2 * math.e + math.exp(3)))]
    assert float(masked_cross_entropy(logits, labels).detach()) == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def test_masked_mse_is_the_mean_over_finite_targets_only() -> None:
    pred = torch.tensor([[1.0], [2.0], [5.0]])
    target = torch.tensor([0.0, float("nan"), 3.0])
    assert float(masked_mse(pred, target)) == pytest.approx((1.0 + 4.0) / 2)


@pytest.mark.parametrize("loss", ["masked_cross_entropy", "masked_mse", "masked_l1"])
def test_a_batch_without_labels_gives_loss_zero_and_a_zero_gradient(loss: str) -> None:
    classes = loss == "masked_cross_entropy"
    pred = torch.randn(5, 3 if classes else 1, requires_grad=True)
    target = torch.full((5,), MISSING_LABEL) if classes else torch.full((5,), float("nan"))
    value = LOSSES[loss](pred, target)
    value.backward()
    assert float(value.detach()) == 0.0 and pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


def test_accuracy_and_rmse_count_labelled_samples_only() -> None:
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, MISSING_LABEL, 1])
    accuracy = METRICS["accuracy"]
    assert accuracy.read(accuracy.accumulator.state(logits, labels, 2), 2) == pytest.approx(200 / 3)
    rmse = METRICS["rmse"]
    state = rmse.accumulator.state(torch.tensor([[1.0], [4.0], [0.0]]), torch.tensor([0.0, float("nan"), 2.0]), 1)
    assert rmse.read(state, 1) == pytest.approx(math.sqrt((1 + 4) / 2))


def test_a_standardised_task_learns_standardised_values_and_is_measured_in_its_units() -> None:
    task = Task("age", "masked_mse", ("abs_error",), standardize=(30.0, 10.0), target="age", num_outputs=1)
    output = torch.tensor([[0.5], [-1.0], [0.0]])  # standardised predictions: 35, 20, 30 years
    target = torch.tensor([40.0, float("nan"), 25.0])
    assert float(task.compute_loss(output, target)) == pytest.approx(((0.5 - 1.0) ** 2 + (0.0 + 0.5) ** 2) / 2)
    mae = METRICS["abs_error"]
    assert mae.read(mae.accumulator.state(task.in_target_units(output), target, 1), 1) == pytest.approx((5 + 5) / 2)


# ----------------------------------------------------------------------------- the methods on an unlabelled task
def model() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(MLPEncoder(in_features=5, hidden=6, layers=2), {"a": nn.Linear(6, 3), "b": nn.Linear(6, 1)})


METHODS = ("uniform", "mgda-ub", "mgda", "famo", "gls", "dwa", "nash-mtl", "stch", "imtl-g")


@pytest.mark.parametrize("name", METHODS)
def test_methods_stay_finite_when_a_task_has_no_label_in_a_batch(name: str) -> None:
    net, method = model(), build(name)
    method.setup(2, torch.device("cpu"))
    optimizer = torch.optim.SGD([*net.parameters(), *method.parameters()], lr=0.05)
    generator = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(8, 5, generator=generator)
        labels = torch.randint(0, 3, (8,), generator=generator) if step % 2 else torch.full((8,), MISSING_LABEL)
        values = torch.randn(8, generator=generator) * 10

        def losses(x: torch.Tensor = x, labels: torch.Tensor = labels, values: torch.Tensor = values) -> tuple:
            z, out = net(x)
            return z, [masked_cross_entropy(out["a"], labels), masked_mse(out["b"], values)]

        optimizer.zero_grad(set_to_none=True)
        z, parts = losses()
        weights = method.backward(Step.of(net, z, parts))
        optimizer.step()
        method.after_update(lambda losses=losses: torch.stack(losses()[1]).detach())
        if step % 2:  # "epochs" where task a had no label at all (DWA and STCH divide by epoch losses)
            method.end_epoch(torch.tensor([0.0, 1.0]))
        assert torch.isfinite(weights).all(), (step, weights)
        assert all(torch.isfinite(p).all() for p in net.parameters())
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", ["mgda-ub", "mgda"])
@pytest.mark.parametrize("solver", ["min-norm-point", "frank-wolfe", "projected-gradient"])
def test_mgda_leaves_a_task_without_labels_out_and_trains_the_others(name: str, solver: str) -> None:
    """A zero gradient constrains no direction: it gets weight 0 (else it would be the min-norm point, weight 1,
    and no step would ever be taken on a batch where a task has no label), the others are solved for."""
    net, method = model(), build(name, solver=solver)
    method.setup(2, torch.device("cpu"))
    z, out = net(torch.randn(8, 5))
    parts = [masked_cross_entropy(out["a"], torch.full((8,), MISSING_LABEL)), masked_mse(out["b"], torch.randn(8))]
    weights = method.backward(Step.of(net, z, parts))
    assert weights.tolist() == pytest.approx([0.0, 1.0])
    assert any(p.grad is not None and p.grad.any() for p in net.encoder.parameters())


def test_min_norm_skips_still_tasks_only_when_asked() -> None:
    from mtlcli.methods.min_norm import min_norm

    gram = torch.tensor([[0.0, 0.0, 0.0], [0.0, 4.0, -2.0], [0.0, -2.0, 2.0]], dtype=torch.float64)
    assert min_norm(gram).tolist() == pytest.approx([1.0, 0.0, 0.0])  # the hull's min-norm point: 0
    w = min_norm(gram, skip_still=True)
    assert w[0] == 0 and float(w @ gram @ w) == pytest.approx(min(float(v @ gram @ v) for v in (
        torch.tensor([0.0, a, 1 - a], dtype=torch.float64) for a in torch.linspace(0, 1, 1001).tolist())), abs=1e-6)
    assert min_norm(torch.zeros(2, 2), skip_still=True).tolist() == pytest.approx([0.5, 0.5])


NO_UPDATE = {"mgda-unconstrained", "gls", "famo"}  # README, "A dataset from a table"


@pytest.mark.parametrize("name", [n for n in REGISTRY if n != "grid"])
def test_which_methods_make_no_update_on_a_batch_where_a_task_has_no_label(name: str) -> None:
    """Every method stays finite; the ones README names leave the model unchanged, the others train task b."""
    net, method = model(), build(name, **({"weights": [0.5, 0.5]} if name == "static" else {}))
    method.setup(2, torch.device("cpu"))
    optimizer = torch.optim.SGD([*net.parameters(), *method.parameters()], lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    generator = torch.Generator().manual_seed(2)
    x, values = torch.randn(8, 5, generator=generator), torch.randn(8, generator=generator) * 3
    z, out = net(x)
    labels = torch.full((8,), MISSING_LABEL)

    def losses_on(rows: slice) -> list[torch.Tensor]:  # MoDo and SDMGrad take two halves of the batch
        return [masked_cross_entropy(out["a"][rows], labels[rows]), masked_mse(out["b"][rows], values[rows])]

    weights = method.backward(Step.of(net, z, losses_on(slice(None)), losses_on))
    optimizer.step()
    assert torch.isfinite(weights).all() and all(torch.isfinite(p).all() for p in net.parameters())
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(net.parameters(), before, strict=True))
    assert (moved == 0.0) == (name in NO_UPDATE), moved
