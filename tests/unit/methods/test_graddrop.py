"""GradDrop (Chen et al. 2020): the sign-dropout rule on hand cases, against TorchJD, and the step."""

from __future__ import annotations

import pytest
import torch

from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.graddrop import graddrop_combine, sign_purity
from tests.unit.methods.test_cagrad import _losses, _tiny_batch


def test_purity_on_hand_cases() -> None:
    g = torch.tensor([[1.0, -2.0, 3.0, 0.0, 1.0], [1.0, -2.0, -1.0, 0.0, -3.0]], dtype=torch.float64)
    # all positive: 1; all negative: 0; (1 + 2/4)/2 = 0.75; all zero: 1/2; (1 - 2/4)/2 = 0.25
    torch.testing.assert_close(sign_purity(g), torch.tensor([1.0, 0.0, 0.75, 0.5, 0.25], dtype=torch.float64))


def test_mask_rule_on_hand_cases() -> None:
    g = torch.tensor([[3.0, 3.0, 1.0, 1.0], [-1.0, -1.0, -3.0, -3.0]], dtype=torch.float64)  # P = 0.75, 0.75, 0.25, 0.25
    u = torch.tensor([0.5, 0.9, 0.1, 0.5], dtype=torch.float64)
    # P > U keeps the positive parts, P < U the negative ones
    torch.testing.assert_close(graddrop_combine(g, u), torch.tensor([3.0, -1.0, 1.0, -3.0], dtype=torch.float64))
    # leak lets that fraction of the dropped parts through
    torch.testing.assert_close(graddrop_combine(g, u, 0.25), torch.tensor([2.75, -0.25, 0.25, -2.75], dtype=torch.float64))
    torch.testing.assert_close(graddrop_combine(g, u, 1.0), g.sum(dim=0))
    # a tie P = U keeps neither sign (as TorchJD and LibMTL)
    torch.testing.assert_close(
        graddrop_combine(g, torch.full((4,), 0.75, dtype=torch.float64)),
        torch.tensor([0.0, 0.0, -3.0, -3.0], dtype=torch.float64),
    )


@pytest.mark.parametrize("seed", range(3))
def test_agreeing_signs_pass_unchanged(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    magnitudes = torch.rand(4, 50, generator=gen, dtype=torch.float64) + 0.1
    signs = torch.where(torch.rand(50, generator=gen) > 0.5, 1.0, -1.0).double()
    g = magnitudes * signs  # every task has the same sign at each element
    u = torch.rand(50, generator=gen, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(graddrop_combine(g, u), g.sum(dim=0), rtol=0, atol=0)


@pytest.mark.parametrize("leak", [0.0, 0.3])
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_torchjd_given_the_same_draws(seed: int, leak: float) -> None:
    from torchjd.aggregation import GradDrop as TorchJDGradDrop

    g = torch.randn(3, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.manual_seed(seed)
    theirs = TorchJDGradDrop(leak=torch.full((3,), leak, dtype=torch.float64))(g)
    torch.manual_seed(seed)  # TorchJD draws torch.rand(P.shape) from the global RNG
    u = torch.rand(40, dtype=torch.float64)
    torch.testing.assert_close(graddrop_combine(g, u, leak), theirs, rtol=1e-12, atol=1e-12)


def _step(method, seed: int = 0):
    model, x, y = _tiny_batch(seed)
    z, losses = _losses(model, x, y)
    weights = method.backward(Step.of(model, z, losses))
    return model, weights


def test_step_draws_are_seeded_checkpointed_and_undone_when_skipped() -> None:
    a, b = build("graddrop"), build("graddrop")
    torch.manual_seed(3)
    a.setup(2, torch.device("cpu"))
    b.setup(2, torch.device("cpu"))
    state = a.state_dict()
    model_a, weights = _step(a)
    model_b, _ = _step(b)
    assert torch.equal(weights, torch.ones(2))
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name
    drawn = a.uniform(10, torch.zeros(1))
    a.step_skipped()
    assert torch.equal(a.uniform(10, torch.zeros(1)), drawn)
    c = build("graddrop")
    c.load_state_dict(state)
    model_c, _ = _step(c)
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True))


def test_step_gives_the_encoder_the_masked_gradient_and_heads_their_own() -> None:
    method = build("graddrop", leak=0.2, mask="element")
    torch.manual_seed(9)
    method.setup(2, torch.device("cpu"))
    generator_state = method.state_dict()["generator"]
    model, _ = _step(method)
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    _, x, y = _tiny_batch(0)
    z, losses = _losses(model, x, y)
    z_grads = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    u = torch.rand(z_grads.shape[1], generator=torch.Generator().set_state(generator_state))
    combined = graddrop_combine(z_grads, u, 0.2).reshape(z.shape)
    params = dict(model.named_parameters())
    encoder = {n: p for n, p in params.items() if not n.startswith("heads.")}
    expected = dict(zip(encoder, torch.autograd.grad(z, list(encoder.values()), combined, retain_graph=True), strict=True))
    for name, p in params.items():
        if name.startswith("heads."):
            own = [torch.autograd.grad(loss, p, retain_graph=True, allow_unused=True)[0] for loss in losses]
            expected[name] = sum(g for g in own if g is not None)
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)


def test_options() -> None:
    assert repr(build("graddrop")) == "GradDrop(leak=0.0, mask='feature')"
    with pytest.raises(MtlError, match="mask"):
        build("graddrop", mask="pixel")
    with pytest.raises(MtlError, match="leak"):
        build("graddrop", leak=2.0)
    with pytest.raises(MtlError, match="level"):
        build("graddrop", level="shared")


def libmtl_graddrop(per_grads: torch.Tensor, rep: torch.Tensor, u: torch.Tensor, leak: float) -> torch.Tensor:
    """LibMTL's `GradDrop.backward` (median-research-group/LibMTL, commit 4336804, LibMTL/weighting/GradDrop.py)
    transcribed, its `torch.rand_like(P)` given as `u`: per_grads [T, B, F], rep [B, F] -> the gradient for rep."""
    task_num = per_grads.shape[0]
    inputs = rep.unsqueeze(0).repeat_interleave(task_num, dim=0)
    grads = (per_grads * inputs.sign()).sum(1)
    big_p = 0.5 * (1 + grads.sum(0) / (grads.abs().sum(0) + 1e-7))
    m = big_p.gt(u).unsqueeze(0).repeat_interleave(task_num, dim=0) * grads.gt(0) + big_p.lt(u).unsqueeze(
        0
    ).repeat_interleave(task_num, dim=0) * grads.lt(0)
    m = m.unsqueeze(1).repeat_interleave(per_grads.size()[1], dim=1)
    return (per_grads * (leak + (1 - leak) * m)).sum(0)


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_the_default_step_is_libmtls_per_feature_graddrop(leak: float) -> None:
    """Issue 16: the default mask is the paper's and LibMTL's, one sign choice per feature from batch sums."""
    method = build("graddrop", **({"leak": leak} if leak else {}))
    torch.manual_seed(5)
    method.setup(2, torch.device("cpu"))
    generator_state = method.state_dict()["generator"]
    model, _ = _step(method)
    got = {name: p.grad.clone() for name, p in model.named_parameters() if not name.startswith("heads.")}
    model.zero_grad()
    _, x, y = _tiny_batch(0)
    z, losses = _losses(model, x, y)
    per_grads = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(z.shape[0], -1) for loss in losses])
    u = torch.rand(per_grads.shape[2], generator=torch.Generator().set_state(generator_state))
    combined = libmtl_graddrop(per_grads, z.detach().reshape(z.shape[0], -1), u, leak).reshape(z.shape)
    encoder = [p for name, p in model.named_parameters() if not name.startswith("heads.")]
    expected = torch.autograd.grad(z, encoder, combined)
    for (name, want) in zip(got, expected, strict=True):
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-7, msg=name)


def test_per_feature_masks_apply_to_every_example_of_the_feature() -> None:
    """Hand case: feature 0's batch sums agree (kept whole), feature 1's disagree; U picks the negative sign."""
    from mtlcli.methods.graddrop import graddrop_combine_per_feature

    z = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])  # B = 2 examples, F = 2 features
    g = torch.tensor([[[0.5, 2.0], [-0.5, -1.0]], [[1.0, -4.0], [-1.0, 1.0]]])  # [T, B, F]
    # feature 0: s = (0.5 + 0.5, 1 + 1) = (1, 2) > 0: P = 1, kept for every example
    # feature 1: s = (2 - 1, -4 + 1) = (1, -3): P = (1 - 2/4) / 2 = 0.25; U = 0.5 > P keeps the negative task (2)
    out = graddrop_combine_per_feature(g, z, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(out, torch.tensor([[1.5, -4.0], [-1.5, 1.0]]))
