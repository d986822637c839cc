"""MoDo and SDMGrad against their defining equations: the weights' step by hand on a 3 x 3 (cross) Gram matrix,
weights on the simplex, state carried between steps and through a checkpoint, the fixed points, the two halves
of the batch (`Step.samples`) and what a step writes into the gradients, dropped steps, and a batch too small."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from mtlcli.errors import MtlError, RecipeError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import min_norm
from mtlcli.methods.modo import MoDo, modo_step
from mtlcli.methods.sdmgrad import SDMGrad, sdmgrad_w
from tests.unit.methods.test_conformance import TASKS, batches, small_model, small_step, task_losses

pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)
CPU = torch.device("cpu")
CROSS = [[2.0, 0.5, -0.3], [0.4, 1.0, 0.1], [-0.2, 0.2, 3.0]]  # a cross Gram matrix: not symmetric
LOSSES = torch.ones(3)


def _built(name: str, **options: Any) -> MoDo | SDMGrad:
    method = build(name, **options)
    assert isinstance(method, (MoDo, SDMGrad))
    method.setup(3, CPU)
    return method


def _random_grams(seed: int, count: int = 20) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.1, 1.0, 10.0])
    return [
        (torch.randn(3, 7, generator=gen) * scales[:, None]) @ (torch.randn(3, 7, generator=gen) * scales[:, None]).T
        for _ in range(count)
    ]


# ---------------------------------------------------------------- MoDo
def test_modo_step_by_hand_on_a_3x3_gram() -> None:
    """lambda_1 = P(1/3 - gamma (G 1/3 + rho 1/3)): row sums of G are 2.2, 1.5, 3.0."""
    gram = torch.tensor(CROSS)
    v = 1 / 3 - 0.1 * (torch.tensor([2.2, 1.5, 3.0]) / 3 + 0.1 / 3)  # interior: P shifts by (1 - sum v) / 3
    expected = v + (1 - v.sum()) / 3
    assert (expected > 0).all()
    torch.testing.assert_close(_built("modo").weights(LOSSES, gram), expected, rtol=0, atol=1e-15)
    # gamma 3: v = (1/3 - 2.3, 1/3 - 1.6, 1/3 - 3.1); the projection keeps the two largest, theta = (v_0 + v_1 - 1) / 2
    v = torch.tensor([1 / 3 - 2.3, 1 / 3 - 1.6, 1 / 3 - 3.1])
    theta = (v[0] + v[1] - 1) / 2
    torch.testing.assert_close(
        _built("modo", gamma=3.0).weights(LOSSES, gram), torch.stack([v[0] - theta, v[1] - theta, torch.tensor(0.0)])
    )
    torch.testing.assert_close(_built("modo", gamma=3.0).weights(LOSSES, gram), torch.tensor([0.15, 0.85, 0.0]))


def test_modo_carries_lambda_between_steps_and_stays_on_the_simplex() -> None:
    method = _built("modo")
    previous = torch.full((3,), 1 / 3)
    for gram in _random_grams(0):
        w = method.weights(LOSSES, gram)
        torch.testing.assert_close(w, modo_step(previous, gram, 0.1, 0.1))
        assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
        torch.testing.assert_close(method.state_dict()["lambda"], w)
        previous = w


def test_modo_fixed_point_is_the_regularised_min_norm_point() -> None:
    """For G = J J^T the iteration converges to argmin 1/2 lambda^T (G + rho I) lambda on the simplex, which it keeps."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        jac = torch.randn(3, 7, generator=gen)
        gram = jac @ jac.T / 7  # symmetric PSD, eigenvalues ~ 1
        lambd = torch.full((3,), 1 / 3)
        for _ in range(20_000):
            lambd = modo_step(lambd, gram, 0.1, 0.1)
        best = min_norm(gram + 0.1 * torch.eye(3))
        torch.testing.assert_close(lambd, best, rtol=0, atol=1e-7)
        torch.testing.assert_close(modo_step(lambd, gram, 0.1, 0.1), lambd, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- SDMGrad
def test_sdmgrad_step_by_hand_on_a_3x3_gram() -> None:
    """Two momentum steps (lr 0.1: both stay inside the simplex, where P shifts by (1 - sum) / 3), then the weights."""
    gram = torch.tensor(CROSS)
    scale = torch.tensor([2.0 + 1e-4, 1.0 + 1e-4, 3.0 + 1e-4]).sqrt().mean()
    a = gram / scale**2
    w0 = torch.full((3,), 1 / 3)
    g1 = a @ (w0 + 0.3 / 3)
    v1 = w0 - 0.1 * g1
    w1 = v1 + (1 - v1.sum()) / 3
    g2 = a @ (w1 + 0.3 / 3)
    v2 = w1 - 0.1 * (0.5 * g1 + g2)
    w2 = v2 + (1 - v2.sum()) / 3
    assert (w1 > 0).all() and (w2 > 0).all()
    method = _built("sdmgrad", niter=2, w_lr=0.1)
    weights = method.weights(LOSSES, gram)
    torch.testing.assert_close(method.state_dict()["w"], w2)
    torch.testing.assert_close(weights, 3 * (w2 + 0.1) / 1.3)  # reduction sum: (T w + lambda) / (1 + lambda)
    mean = _built("sdmgrad", niter=2, w_lr=0.1, reduction="mean").weights(LOSSES, gram)
    torch.testing.assert_close(mean, (w2 + 0.1) / 1.3)


def test_sdmgrad_carries_w_between_steps_and_stays_on_the_simplex() -> None:
    method = _built("sdmgrad")
    kept = torch.full((3,), 1 / 3)
    for gram in _random_grams(2):
        weights = method.weights(LOSSES, gram)
        kept = sdmgrad_w(kept, gram, lambda_reg=0.3, niter=20, lr=10.0, momentum=0.5, scale_eps=1e-4)
        torch.testing.assert_close(method.state_dict()["w"], kept)
        assert (kept >= 0).all() and abs(float(kept.sum()) - 1) < 1e-12
        assert abs(float(weights.sum()) - 3) < 1e-12 and (weights >= 3 * 0.1 / 1.3 - 1e-15).all()


def test_sdmgrad_fixed_point_satisfies_the_kkt_conditions() -> None:
    """The limit of w minimises 1/2 (w + l w~)^T A (w + l w~) on the simplex (A = G / s^2, G symmetric PSD): the
    gradient A (w + l w~) is smallest, and equal, on the support of w; the iteration keeps it."""
    for gram in _random_grams(3, count=5):
        gram = gram @ gram.T
        w = torch.full((3,), 1 / 3)
        for _ in range(200):
            w = sdmgrad_w(w, gram, lambda_reg=0.3, niter=20, lr=0.5, momentum=0.5, scale_eps=1e-4)
        scale = (gram.diagonal() + 1e-4).sqrt().mean()
        grad = gram / scale**2 @ (w + 0.1)
        support = w > 1e-9
        assert float(grad[support].max() - grad[support].min()) < 1e-8
        assert float(grad.min()) >= float(grad[support].min()) - 1e-8
        again = sdmgrad_w(w, gram, lambda_reg=0.3, niter=20, lr=0.5, momentum=0.5, scale_eps=1e-4)
        torch.testing.assert_close(again, w, rtol=0, atol=1e-9)


def test_sdmgrad_is_scale_normalised_and_handles_negative_diagonals() -> None:
    """A = G / s^2 makes w independent of the gradients' scale (up to scale_eps); a negative diagonal of a cross
    Gram matrix counts as 0 in s instead of making it NaN."""
    gram = torch.tensor(CROSS)
    w = torch.full((3,), 1 / 3)
    one = sdmgrad_w(w, gram, lambda_reg=0.3, niter=20, lr=10.0, momentum=0.5, scale_eps=1e-12)
    torch.testing.assert_close(one, sdmgrad_w(w, 1e4 * gram, lambda_reg=0.3, niter=20, lr=10.0, momentum=0.5, scale_eps=1e-12))
    negative = torch.tensor([[-1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.3, 2.0]])
    assert torch.isfinite(sdmgrad_w(w, negative, lambda_reg=0.3, niter=20, lr=10.0, momentum=0.5, scale_eps=1e-4)).all()


# ---------------------------------------------------------------- the two samples and the step
def test_step_samples_are_the_halves_of_the_batch() -> None:
    model = small_model()
    (x, y), *_ = batches()
    step = small_step(model, x[:15], {t: v[:15] for t, v in y.items()})
    parts, shares = step.samples(2)
    assert shares == [7 / 15, 8 / 15]
    for part, rows in zip(parts, (slice(0, 7), slice(7, 15)), strict=True):
        _, expected = task_losses(model, x[rows], {t: v[rows] for t, v in y.items()})
        torch.testing.assert_close(part.losses, torch.stack(expected))
    torch.testing.assert_close(sum(s * p.losses for s, p in zip(shares, parts, strict=True)), step.losses)
    with pytest.raises(MtlError, match="cannot be split into 2 samples"):
        small_step(model, x[:1], {t: v[:1] for t, v in y.items()}).samples(2)
    z, losses = task_losses(model, x, y)
    with pytest.raises(MtlError, match="losses_on"):
        Step.of(model, z, losses).samples(2)


def _half_grads(model, x, y, wrt) -> list[torch.Tensor]:
    """Per half of the batch, its task gradients [T, n] w.r.t. `wrt` (a list of tensors, flattened)."""
    out = []
    for rows in (slice(0, 8), slice(8, None)):
        z, losses = task_losses(model, x[rows], {t: v[rows] for t, v in y.items()})
        targets = wrt(z)
        rows_of = [torch.autograd.grad(loss, targets, retain_graph=True) for loss in losses]
        out.append(torch.stack([torch.cat([g.reshape(-1) for g in grads]) for grads in rows_of]))
    return out


@pytest.mark.parametrize("grads", ["loop", "batched"])
def test_modo_step_on_the_shared_parameters(grads: str) -> None:
    """G_12 = J_1 J_2^T of the halves; the encoder gets lambda^T (J_1 + J_2) / 2, the heads their raw batch gradients."""
    model = small_model()
    (x, y), *_ = batches()
    shared = list(model.encoder.parameters())
    first, second = _half_grads(model, x, y, lambda z: shared)
    lambd = modo_step(torch.full((3,), 1 / 3), first @ second.T, 0.1, 0.1)
    method = _built("modo", grads=grads)
    weights = method.backward(small_step(model, x, y))
    torch.testing.assert_close(weights, lambd)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in shared]), lambd @ (first + second) / 2)
    fresh = copy.deepcopy(model)
    for p in fresh.parameters():
        p.grad = None
    _, losses = task_losses(fresh, x, y)
    for t, loss in zip(TASKS, losses, strict=True):
        loss.backward(inputs=list(fresh.heads[t].parameters()))
    for t in TASKS:
        for a, b in zip(model.heads[t].parameters(), fresh.heads[t].parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad)


def test_the_representation_level_uses_row_summed_z_gradients() -> None:
    """G_12 from each half's dL/dz summed over its rows; the encoder gets one backward of lambda^T dL/dz (batch)."""
    model = small_model()
    (x, y), *_ = batches()
    first, second = _half_grads(model, x, y, lambda z: [z])
    summed = [g.reshape(3, 8, -1).sum(dim=1) for g in (first, second)]
    lambd = modo_step(torch.full((3,), 1 / 3), summed[0] @ summed[1].T, 0.1, 0.1)
    method = _built("modo", level="representation")
    weights = method.backward(small_step(model, x, y))
    torch.testing.assert_close(weights, lambd)
    other = copy.deepcopy(model)
    for p in other.parameters():
        p.grad = None
    _, losses = task_losses(other, x, y)
    sum(w * loss for w, loss in zip(lambd, losses, strict=True)).backward(inputs=list(other.encoder.parameters()))
    for a, b in zip(model.encoder.parameters(), other.encoder.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_sdmgrad_clips_the_shared_update_only() -> None:
    model = small_model()
    (x, y), *_ = batches()
    unclipped = copy.deepcopy(model)
    w = _built("sdmgrad", max_norm=1e-3).backward(small_step(model, x, y))
    raw = _built("sdmgrad", max_norm=0.0).backward(small_step(unclipped, x, y))
    norm = torch.cat([p.grad.reshape(-1) for p in model.encoder.parameters()]).norm()
    torch.testing.assert_close(norm, torch.tensor(1e-3))
    torch.testing.assert_close(w * torch.cat([p.grad.reshape(-1) for p in unclipped.encoder.parameters()]).norm() / 1e-3, raw)
    for a, b in zip(model.heads.parameters(), unclipped.heads.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_state_goes_through_a_checkpoint_and_a_dropped_step_is_undone(name: str) -> None:
    model = small_model()
    data = batches()
    method = _built(name)
    for x, y in data[:2]:
        method.backward(small_step(model, x, y))
    saved = copy.deepcopy(method.state_dict())
    resumed = _built(name)
    resumed.load_state_dict(saved)
    key = method.state_key
    torch.testing.assert_close(resumed.state_dict()[key], saved[key])
    assert not torch.equal(saved[key], torch.full((3,), 1 / 3))
    x, y = data[2]
    ours = method.backward(small_step(copy.deepcopy(model), x, y))
    theirs = resumed.backward(small_step(copy.deepcopy(model), x, y))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    method.step_skipped()
    torch.testing.assert_close(method.state_dict()[key], saved[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_a_non_finite_gradient_gets_a_nan_weight(name: str) -> None:
    model = small_model()
    (x, y), *_ = batches()
    y = {**y, "b": y["b"].clone()}
    y["b"][3] = float("inf")
    method = _built(name)
    weights = method.backward(small_step(model, x, y))
    assert torch.isnan(weights[1]) and not torch.isnan(weights[[0, 2]]).any()
    method.step_skipped()
    torch.testing.assert_close(method.state_dict()[method.state_key], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_a_batch_of_one_is_a_recipe_problem(name: str, tiny_recipe: dict[str, Any]) -> None:
    from mtlcli.recipe import validate

    tiny_recipe["method"] = {"name": name}
    tiny_recipe["train"]["batch_size"] = 1
    with pytest.raises(RecipeError, match=f"train.batch_size: {name} splits each batch into 2 samples"):
        validate(tiny_recipe)
    tiny_recipe["train"]["batch_size"] = 2
    assert validate(tiny_recipe).method.name == name


def test_the_weights_agree_with_torchjds_weightings() -> None:
    """TorchJD 0.18's `MoDoWeighting` and `SDMGradWeighting` (stateful, on the cross Gram matrix) over 20 steps:
    MoDo's defaults; SDMGrad with `reduction: mean` and the smallest scale_eps (TorchJD normalises by
    mean_t sqrt(max(G_tt, 0))^2 + 1e-8), on cross Gram matrices of two noisy samples of one Jacobian, of norm ~ 1."""
    torchjd = pytest.importorskip("torchjd.aggregation")
    modo, theirs_modo = _built("modo"), torchjd.MoDoWeighting(gamma=0.1, rho=0.1)
    sdm = _built("sdmgrad", reduction="mean", scale_eps=1e-12)
    theirs_sdm = torchjd.SDMGradWeighting(lr=10.0, momentum=0.5, n_iter=20, lambda_=0.3)
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        jac = torch.randn(3, 7, generator=gen) * torch.tensor([[0.3], [1.0], [3.0]]) / 3
        gram = (jac + 0.3 * torch.randn(3, 7, generator=gen)) @ (jac + 0.3 * torch.randn(3, 7, generator=gen)).T
        torch.testing.assert_close(modo.weights(LOSSES, gram), theirs_modo(gram), rtol=0, atol=1e-12)
        torch.testing.assert_close(sdm.weights(LOSSES, gram), theirs_sdm(gram), rtol=0, atol=1e-6)
