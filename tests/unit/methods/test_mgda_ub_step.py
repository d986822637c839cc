"""An MGDA-UB step gives every parameter sum_t alpha_t dL_t (computed here independently)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import min_norm
from mtlcli.models import build_model


def _tiny_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        encoder="multilenet", num_classes={"left": 10, "right": 10}, input_shape=(1, 28, 28), options={"dropout": 0.0}
    )
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8, 2))
    return model, x, y


def _losses(model, x, y):
    z, out = model(x)
    return z, torch.stack([F.cross_entropy(out["left"], y[:, 0]), F.cross_entropy(out["right"], y[:, 1])])


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
@pytest.mark.parametrize("normalization", ["none", "l2", "loss+"])
def test_parameter_gradients_equal_alpha_weighted_task_gradients(head_grads: str, normalization: str) -> None:
    model, x, y = _tiny_batch()
    method = build("mgda-ub", head_grads=head_grads, normalization=normalization)
    z, losses = _losses(model, x, y)
    alpha = method.backward(Step(model, z, losses))
    assert torch.all(alpha >= 0) and abs(float(alpha.sum()) - 1) < 1e-6
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    # independently: alpha from the Gram matrix of dL_t/dz, then per-task parameter gradients
    model.zero_grad()
    z, losses = _losses(model, x, y)
    gz = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in range(2)])
    gram = gz @ gz.T
    norms = gram.diagonal().sqrt()
    scale = {"none": torch.ones(2), "l2": norms, "loss+": losses.detach() * norms}[normalization]
    expected_alpha = min_norm(gram / (scale[:, None] * scale[None, :]))
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-5, atol=1e-6)
    params = dict(model.named_parameters())
    per_task = [torch.autograd.grad(losses[t], list(params.values()), retain_graph=True, allow_unused=True) for t in range(2)]
    for i, (name, p) in enumerate(params.items()):
        g = [per_task[t][i] if per_task[t][i] is not None else torch.zeros_like(p) for t in range(2)]
        own = head_grads == "raw" and name.startswith("heads.")  # raw: each head gets its own loss gradient
        expected = g[0] + g[1] if own else alpha[0] * g[0] + alpha[1] * g[1]
        torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-7, msg=name)


def test_encoder_is_backpropagated_once(monkeypatch) -> None:
    """The representation trick: one backward through the encoder, whatever T."""
    model, x, y = _tiny_batch()
    calls = []
    model.encoder.conv1.weight.register_hook(lambda grad: calls.append(1))
    z, losses = _losses(model, x, y)
    build("mgda-ub").backward(Step(model, z, losses))
    assert len(calls) == 1


def test_uniform_is_the_mean_of_the_losses() -> None:
    model, x, y = _tiny_batch()
    z, losses = _losses(model, x, y)
    weights = build("uniform").backward(Step(model, z, losses))
    assert weights.tolist() == [0.5, 0.5]
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _, losses = _losses(model, x, y)
    losses.mean().backward()
    for g, p in zip(got, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)
