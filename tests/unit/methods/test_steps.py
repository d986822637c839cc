"""A training step of every gradient-based method gives each parameter exactly the gradient its
definition prescribes, recomputed here independently with plain autograd on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlcli.methods import build
from mtlcli.methods._closed_form import imtl_g_weights
from mtlcli.methods._shared_params import shared_grads
from mtlcli.methods.base import Step
from mtlcli.methods.pcgrad import pcgrad_coefficients
from mtlcli.models import build_model

TASKS = {"a": 10, "b": 10, "c": 10}


def tiny(seed: int = 0, independent: bool = False):
    torch.manual_seed(seed)
    model = build_model(
        encoder="multilenet",
        num_classes=TASKS,
        input_shape=(1, 16, 16),
        options={"dropout": 0.0, "hidden": 8},
        independent=independent,
    )
    model = model.double()
    x = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (6, len(TASKS)))
    return model, x, y


def forward(model, x, y, scales=(1.0, 3.0, 0.2)):
    z, out = model(x)
    return z, torch.stack([k * F.cross_entropy(out[n], y[:, i]) for i, (n, k) in enumerate(zip(TASKS, scales, strict=True))])


def per_task_grads(model, x, y):
    """dL_t/dp for every parameter p (zeros where L_t does not reach p), and the losses."""
    z, losses = forward(model, x, y)
    params = dict(model.named_parameters())
    grads = []
    for t in range(len(TASKS)):
        g = torch.autograd.grad(losses[t], list(params.values()), retain_graph=True, allow_unused=True)
        grads.append({n: gi if gi is not None else torch.zeros_like(p) for (n, p), gi in zip(params.items(), g, strict=True)})
    zg = torch.stack([torch.autograd.grad(losses[t], z, retain_graph=True)[0].reshape(-1) for t in range(len(TASKS))])
    encoder = [n for n in params if n.startswith("encoder.")]
    shared = torch.stack([torch.cat([grads[t][n].reshape(-1) for n in encoder]) for t in range(len(TASKS))])
    return grads, losses.detach(), zg @ zg.T, shared @ shared.T


def run_step(method, model, x, y):
    model.zero_grad(set_to_none=True)
    z, losses = forward(model, x, y)
    weights = method.backward(Step(model, z, losses))
    return weights, {n: p.grad.clone() for n, p in model.named_parameters()}


def expected(grads, encoder_w, head_w):
    names = grads[0].keys()
    out = {}
    for n in names:
        w = encoder_w if n.startswith("encoder.") else head_w
        out[n] = sum(w[t] * grads[t][n] for t in range(len(grads)))
    return out


def assert_grads(got, want):
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-8, atol=1e-12, msg=n)


CASES = [
    ("mgda-ub", "z", {}),
    ("mgda-unconstrained", "z", {}),
    ("imtl-g", "z", {}),
    ("mgda", "shared", {"grads": "loop"}),
    ("mgda", "shared", {"grads": "batched"}),
    ("imtl-g-exact", "shared", {"grads": "loop"}),
    ("imtl-g-exact", "shared", {"grads": "batched"}),
]


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
@pytest.mark.parametrize(("name", "level", "options"), CASES)
def test_gram_methods_give_sum_alpha_t_grad_l_t(name: str, level: str, options: dict, head_grads: str) -> None:
    model, x, y = tiny()
    method = build(name, head_grads=head_grads, **options)
    method.setup(len(TASKS), torch.device("cpu"))
    weights, got = run_step(method, model, x, y)
    grads, losses, z_gram, shared_gram = per_task_grads(model, x, y)
    alpha = method.weights(losses, z_gram if level == "z" else shared_gram)
    torch.testing.assert_close(weights, alpha, rtol=1e-7, atol=1e-10)
    assert abs(float(alpha.sum()) - 1) < 1e-9
    ones = torch.ones(len(TASKS), dtype=torch.float64)
    assert_grads(got, expected(grads, alpha, alpha if head_grads == "weighted" else ones))


@pytest.mark.parametrize("method", ["mgda", "imtl-g-exact", "pcgrad"])
def test_loop_and_batched_grads_agree(method: str) -> None:
    model, x, y = tiny(3)
    z, losses = forward(model, x, y)
    step = Step(model, z, losses)
    loop, batched = shared_grads(step, "loop"), shared_grads(step, "batched")
    torch.testing.assert_close(loop.gram(), batched.gram(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(loop.jacobian, batched.jacobian, rtol=1e-10, atol=1e-14)
    for a, b in zip(loop.head_grads, batched.head_grads, strict=True):
        for ga, gb in zip(a, b, strict=True):
            torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-14)
    got = [run_step(build(method, grads=mode), model, x, y)[1] for mode in ("loop", "batched")]
    assert_grads(got[0], got[1])


def test_pcgrad_step_sums_projected_shared_grads_and_leaves_heads_raw() -> None:
    model, x, y = tiny(1)
    method = build("pcgrad")
    method.setup(len(TASKS), torch.device("cpu"))
    state = method.state_dict()
    _, got = run_step(method, model, x, y)
    method.load_state_dict(state)  # replay the same random orders
    orders = method.orders(len(TASKS))
    grads, _, _, shared_gram = per_task_grads(model, x, y)
    coeffs = pcgrad_coefficients(shared_gram, orders)
    ones = torch.ones(len(TASKS), dtype=torch.float64)
    assert_grads(got, expected(grads, coeffs.sum(dim=0), ones))


def test_imtl_hybrid_step_follows_algorithm_1() -> None:
    model, x, y = tiny(2)
    method = build("imtl")
    method.setup(len(TASKS), torch.device("cpu"))
    with torch.no_grad():
        method.s.copy_(torch.tensor([0.3, -1.0, 2.0]))
    method.s.data = method.s.data.double()
    weights, got = run_step(method, model, x, y)
    grads, losses, z_gram, _ = per_task_grads(model, x, y)
    scale = torch.exp(method.s.detach())
    alpha = imtl_g_weights(z_gram * scale[:, None] * scale[None, :])  # IMTL-G on grad_z (e^{s_t} L_t)
    torch.testing.assert_close(weights, alpha * scale, rtol=1e-7, atol=1e-10)
    assert_grads(got, expected(grads, alpha * scale, scale))  # heads: raw grads of the scaled losses
    torch.testing.assert_close(method.s.grad, scale * losses - 1)


def test_gls_gradient_weights_each_loss_by_its_reciprocal() -> None:
    model, x, y = tiny(4)
    weights, got = run_step(build("gls"), model, x, y)
    grads, losses, _, _ = per_task_grads(model, x, y)
    geometric = losses.prod() ** (1 / len(TASKS))
    want = geometric / (len(TASKS) * losses)
    torch.testing.assert_close(weights, want)
    assert_grads(got, expected(grads, want, want))


def test_single_task_networks_share_nothing() -> None:
    model, x, y = tiny(5, independent=True)
    method = build("single-task")
    weights, got = run_step(method, model, x, y)
    assert weights.tolist() == [1.0, 1.0, 1.0]
    grads, _, _, _ = per_task_grads(model, x, y)
    for t in range(len(TASKS)):
        for other in range(len(TASKS)):  # L_t reaches encoder `other` only if other == t
            reached = any(g.abs().sum() > 0 for n, g in grads[t].items() if n.startswith(f"encoder.encoders.{other}."))
            assert reached == (t == other)
    ones = torch.ones(len(TASKS), dtype=torch.float64)
    assert_grads(got, expected(grads, ones, ones))  # each network gets exactly its own task's gradient


@pytest.mark.parametrize(
    ("name", "options", "same_as", "its_options"),
    [
        ("mgda", {"level": "representation"}, "mgda-ub", {}),
        ("mgda", {"level": "representation", "normalization": "loss+"}, "mgda-ub", {"normalization": "loss+"}),
        ("imtl-g", {"level": "shared"}, "imtl-g-exact", {}),
        ("imtl-g", {"level": "shared", "grads": "batched"}, "imtl-g-exact", {"grads": "batched"}),
    ],
)
def test_one_name_at_both_levels_is_the_other_name(name: str, options: dict, same_as: str, its_options: dict) -> None:
    """`mgda` at the representation level is `mgda-ub`; `imtl-g` at the shared level is `imtl-g-exact`."""
    model, x, y = tiny()
    a_weights, a_grads = run_step(build(name, **options), model, x, y)
    b_weights, b_grads = run_step(build(same_as, **its_options), model, x, y)
    torch.testing.assert_close(a_weights, b_weights, rtol=1e-12, atol=1e-12)
    for n in a_grads:
        torch.testing.assert_close(a_grads[n], b_grads[n], rtol=1e-12, atol=1e-12, msg=n)


def test_batched_grads_need_the_shared_level() -> None:
    from mtlcli.errors import MtlError

    with pytest.raises(MtlError, match="batched applies only at level shared"):
        build("mgda", level="representation", grads="batched")
    with pytest.raises(MtlError, match="applies only at level shared"):
        build("imtl-g", grads="batched")
    assert repr(build("mgda", level="representation")).endswith("level='representation')")


def test_mgda_unconstrained_at_the_shared_level_equalises_projections_on_the_shared_gradients() -> None:
    model, x, y = tiny()
    _grads, _losses, _z_gram, shared_gram = per_task_grads(model, x, y)
    weights, _ = run_step(build("mgda-unconstrained", level="shared"), model, x, y)
    projections = shared_gram @ weights  # g . g_t for the affine-hull min-norm point g: all equal
    assert abs(float(weights.sum()) - 1.0) < 1e-10
    torch.testing.assert_close(projections, projections[0].expand_as(projections), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("name", "term"), [("uncertainty", 0.5), ("imtl-l", -1.0)])
def test_on_n_processes_each_rank_adds_1_over_n_of_the_scales_own_term(monkeypatch, name: str, term: float) -> None:
    """d/ds of uncertainty's s/2 and IMTL-L's -s: each of N ranks adds 1/N, so the all-reduced gradient is the batch's."""
    from mtlcli import distributed

    model, x, y = tiny(6)
    grads = {}
    for world in (1, 4):
        monkeypatch.setattr(distributed, "current", lambda world=world: distributed.Distributed(rank=0, world=world))
        method = build(name)
        method.setup(len(TASKS), torch.device("cpu"))
        with torch.no_grad():
            method.s.copy_(torch.tensor([0.3, -0.2, 0.1]))
        run_step(method, model, x, y)
        grads[world] = method.s.grad.clone()
    torch.testing.assert_close(grads[1] - grads[4], torch.full((3,), term * (1 - 1 / 4), dtype=grads[1].dtype))
