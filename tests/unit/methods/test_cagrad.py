"""CAGrad against its definition: d maximises min_i g_i . d over the ball ||d - g_0|| <= c ||g_0||.

The certificate is duality: any simplex w bounds every d of the ball by F(w) = g_w . g_0 + r ||g_w||,
so a d in the ball with min_i g_i . d = F(w) is optimal (and w optimal for the dual).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.cagrad import cagrad_weights, solve_cagrad
from mtlcli.models import build_model
from tests.unit.methods.matrices import KINDS, jacobian

SCALES = (1e-6, 1.0, 1e6)
CASES = [(kind, t, scale) for kind in KINDS for t in (2, 3, 5, 10, 40) for scale in SCALES if (kind, t) != ("duplicated", 2)]


def direction(jac: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray | None]:
    """d (rescale 0) and the dual optimum w, from the Gram matrix only."""
    solution = solve_cagrad(jac @ jac.T, c)
    return solution.alpha @ jac, solution.w


def dual_value(jac: np.ndarray, w: np.ndarray, c: float) -> float:
    g0 = jac.mean(axis=0)
    gw = w @ jac
    return float(gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw))


def unit(jac: np.ndarray) -> float:
    """||g_0|| max_i ||g_i||: the scale of g_i . d for d in the ball."""
    return float(np.linalg.norm(jac.mean(axis=0)) * np.linalg.norm(jac, axis=1).max())


def pareto_stationary(t: int, dim: int = 30, *, seed: int) -> np.ndarray:
    """Gradients with 0 on a face of their hull: g_1 = 0, or two opposite ones among others."""
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(t, dim))
    if seed % 2:
        jac[0] = 0.0
    else:
        jac[1] = -rng.uniform(0.3, 3.0) * jac[0]
    return jac


@pytest.mark.parametrize(("kind", "t", "scale"), CASES)
def test_dual_solution_satisfies_its_optimality_conditions(kind: str, t: int, scale: float) -> None:
    c = 0.4
    jac = jacobian(kind, t, seed=t, scale=scale)
    gram = jac @ jac.T
    solution = solve_cagrad(gram, c)
    w = solution.w
    assert w is not None and np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    g0 = jac.mean(axis=0)
    gw_norm = float(np.linalg.norm(w @ jac))
    floor = 1e-12 * unit(jac)
    if solution.t == 0.0:  # g_w* = 0 (Pareto-stationary tasks, the ball reaches the cone): value 0
        assert gw_norm <= 1e-6 * np.linalg.norm(jac, axis=1).max()
        return
    # grad F(w) = G 1/T + r G w / ||g_w||: equal and minimal on the support (convex problem on the simplex)
    grad = gram.mean(axis=1) + c * np.linalg.norm(g0) * (gram @ w) / gw_norm
    support = w > 1e-12
    level = grad[support].mean()
    assert np.all(np.abs(grad[support] - level) <= 1e-8 * unit(jac) + floor)
    assert np.all(grad >= level - 1e-8 * unit(jac) - floor)


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0, 3.0])
@pytest.mark.parametrize(("kind", "t", "scale"), [case for case in CASES if case[1] in (2, 5, 40) and case[2] != 1e6])
def test_direction_maximises_the_worst_task_decrease_over_the_ball(kind: str, t: int, scale: float, c: float) -> None:
    jac = jacobian(kind, t, seed=t + 1, scale=scale)
    d, w = direction(jac, c)
    g0 = jac.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    assert np.linalg.norm(d - g0) <= radius * (1 + 1e-9)
    worst = float(np.min(jac @ d))
    # duality certificate: no point of the ball does better than F(w), and d reaches it
    assert w is not None
    assert abs(dual_value(jac, w, c) - worst) <= 1e-9 * unit(jac)
    # sampled points of the ball (on its sphere and inside) never beat d
    rng = np.random.default_rng(t)
    u = rng.normal(size=(2000, jac.shape[1]))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    radii = radius * np.concatenate([np.ones(1000), rng.uniform(size=1000) ** (1 / jac.shape[1])])
    samples = g0 + radii[:, None] * u
    assert np.min(samples @ jac.T, axis=1).max() <= worst + 1e-12 * unit(jac)


@pytest.mark.parametrize("c", [0.4, 1.0, 3.0])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("t", [2, 3, 6])
def test_pareto_stationary_tasks_get_an_optimal_finite_direction(t: int, seed: int, c: float) -> None:
    """0 on a face of the hull: g_w* may be 0 (any d of the ball with g_i . d >= 0 is optimal; we take the
    one nearest g_0) or not; either way d is in the ball, optimal, and its coefficients stay bounded."""
    jac = pareto_stationary(t, seed=seed)
    solution = solve_cagrad(jac @ jac.T, c)
    assert np.all(np.isfinite(solution.alpha)) and np.abs(solution.alpha).max() < 1e3
    d = solution.alpha @ jac
    g0 = jac.mean(axis=0)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) * (1 + 1e-9)
    assert solution.w is not None
    assert abs(dual_value(jac, solution.w, c) - float(np.min(jac @ d))) <= 1e-9 * unit(jac)
    if seed % 2:  # g_1 = 0: the ball lies where g_2.. decrease, so the whole ball is optimal: d = g_0 (the authors')
        np.testing.assert_allclose(solution.alpha, np.full(t, 1 / t), atol=1e-12)


def test_brute_force_on_the_simplex_finds_nothing_better() -> None:
    """T = 2 and 3: F on a fine grid of the simplex never drops below F(w*)."""
    for t, n in ((2, 20001), (3, 601)):
        for seed in range(3):
            jac = jacobian("random", t, seed=seed, dim=6)
            _, w = direction(jac, 0.4)
            assert w is not None
            if t == 2:
                grid = np.stack([np.linspace(0, 1, n), 1 - np.linspace(0, 1, n)], axis=1)
            else:
                i, j = np.triu_indices(n)  # i <= j: w = (i, j - i, n - 1 - j) / (n - 1)
                grid = np.stack([i, j - i, n - 1 - j], axis=1) / (n - 1)
            g0 = jac.mean(axis=0)
            gw = grid @ jac
            values = gw @ g0 + 0.4 * np.linalg.norm(g0) * np.linalg.norm(gw, axis=1)
            assert dual_value(jac, w, 0.4) <= values.min() + 1e-12 * unit(jac)


def test_c_zero_gives_the_mean_gradient() -> None:
    for kind in KINDS:
        gram = torch.tensor((lambda j: j @ j.T)(jacobian(kind, 7, seed=3)))
        for rescale in (0, 1, 2):
            np.testing.assert_array_equal(cagrad_weights(gram, 0.0, rescale).numpy(), np.full(7, 1 / 7))


def test_degenerate_gram_matrices_give_the_mean() -> None:
    """G = 0 and g_0 = 0 (radius 0: the ball is the point g_0); rescaled like any other update."""
    zero = torch.zeros(4, 4, dtype=torch.float64)
    np.testing.assert_array_equal(cagrad_weights(zero, 0.4, rescale=0).numpy(), np.full(4, 0.25))
    np.testing.assert_allclose(cagrad_weights(zero).numpy(), np.full(4, 0.25 / 1.16), rtol=1e-15)
    jac = jacobian("random", 2, seed=0)
    jac[1] = -jac[0]
    np.testing.assert_allclose(cagrad_weights(torch.tensor(jac @ jac.T), 0.4, rescale=0).numpy(), [0.5, 0.5], atol=1e-12)


def test_a_single_task_is_scaled_by_one_plus_c() -> None:
    gram = torch.tensor([[4.0]], dtype=torch.float64)
    assert float(cagrad_weights(gram, 0.4, rescale=0)) == pytest.approx(1.4)
    assert float(cagrad_weights(gram, 0.4, rescale=1)) == pytest.approx(1.4 / 1.16)


@pytest.mark.parametrize("t", [3, 5, 10])
@pytest.mark.parametrize("kind", KINDS)
def test_permutation_equivariance(kind: str, t: int) -> None:
    jac = jacobian(kind, t, seed=5 * t)
    perm = np.random.default_rng(t).permutation(t)
    d, _ = direction(jac, 0.4)
    d_perm, _ = direction(jac[perm], 0.4)
    np.testing.assert_allclose(d_perm, d, atol=1e-8 * np.linalg.norm(jac, axis=1).max())
    if kind == "random":  # full rank: the coefficients are unique and permute with the tasks
        alpha = solve_cagrad(jac @ jac.T, 0.4).alpha
        np.testing.assert_allclose(solve_cagrad(jac[perm] @ jac[perm].T, 0.4).alpha, alpha[perm], atol=1e-9)


@pytest.mark.parametrize("factor", [1e-8, 1e-3, 1e5])
def test_weights_are_invariant_to_the_scale_of_the_gradients(factor: float) -> None:
    gram = torch.tensor((lambda j: j @ j.T)(jacobian("random", 6, seed=1)))
    np.testing.assert_allclose(cagrad_weights(factor * gram).numpy(), cagrad_weights(gram).numpy(), rtol=1e-9)


def test_rescale_divides_by_one_plus_c_squared_or_one_plus_c() -> None:
    gram = torch.tensor((lambda j: j @ j.T)(jacobian("random", 4, seed=2)))
    raw = cagrad_weights(gram, 0.6, rescale=0)
    torch.testing.assert_close(cagrad_weights(gram, 0.6, rescale=1), raw / 1.36)
    torch.testing.assert_close(cagrad_weights(gram, 0.6, rescale=2), raw / 1.6)
    torch.testing.assert_close(build("cagrad", c=0.6).weights(torch.ones(4), gram), raw / 1.36)


@pytest.mark.parametrize("c", [0.1, 0.4, 1.0])
@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_agrees_with_torchjd(t: int, c: float) -> None:
    """torchjd's CAGradWeighting: same weights 1/T + (r/||g_w||) w, no rescale (our rescale 0); it solves on
    the Gramian divided by its trace (alpha is scale-invariant) with Clarabel's default accuracy, so it agrees
    to ~1e-4; ours is certified optimal to ~1e-12 by the duality tests above. Needs `torchjd[cagrad]`."""
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    from torchjd.aggregation import CAGradWeighting

    for seed in range(2):
        jac = jacobian("random", t, seed=seed, dim=60)
        gram = torch.tensor(jac @ jac.T)
        theirs = CAGradWeighting(c=c, norm_eps=0.0)(gram).numpy()
        ours = cagrad_weights(gram, c, rescale=0).numpy()
        d = ours @ jac
        assert np.linalg.norm(theirs @ jac - d) <= 1e-3 * np.linalg.norm(d)
        np.testing.assert_allclose(ours, theirs, atol=1e-3 * np.abs(ours).max())
        assert np.min(jac @ d) >= np.min(jac @ (theirs @ jac)) - 1e-3 * unit(jac)


def test_options_defaults_and_validation() -> None:
    method = build("cagrad")
    o = method.options
    assert (o.c, o.rescale, o.level, o.grads, o.head_grads) == (0.4, 1, "shared", None, "raw")
    assert repr(method) == "Cagrad(c=0.4, rescale=1, level='shared', grads='loop', head_grads='raw')"
    assert "grads='batched'" in repr(build("cagrad", level="shared", grads="batched"))
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("cagrad", level="representation", grads="batched")
    with pytest.raises(MtlError, match="rescale"):
        build("cagrad", rescale=3)
    with pytest.raises(MtlError, match="c"):
        build("cagrad", c=-0.1)


def _tiny_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        encoder="multilenet", num_classes={"left": 10, "right": 10}, input_shape=(1, 28, 28), options={"dropout": 0.0}
    )
    return model, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8, 2))


def _losses(model, x, y):
    z, out = model(x)
    return z, [F.cross_entropy(out["left"], y[:, 0]), F.cross_entropy(out["right"], y[:, 1])]


@pytest.mark.parametrize("head_grads", ["raw", "weighted"])
@pytest.mark.parametrize(("level", "grads"), [("representation", None), ("shared", "loop"), ("shared", "batched")])
def test_step_gives_every_parameter_its_cagrad_gradient(level: str, grads: str | None, head_grads: str) -> None:
    model, x, y = _tiny_batch()
    options = {"level": level, "head_grads": head_grads, **({"grads": grads} if grads else {})}
    z, losses = _losses(model, x, y)
    alpha = build("cagrad", **options).backward(Step.of(model, z, losses))
    got = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    z, losses = _losses(model, x, y)
    params = dict(model.named_parameters())
    shared = model.shared_parameters()
    wrt = [z] if level == "representation" else shared
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, wrt, retain_graph=True)]) for loss in losses]
    jac = torch.stack(rows).double()
    expected_alpha = cagrad_weights(jac @ jac.T, 0.4, 1).to(alpha.dtype)
    torch.testing.assert_close(alpha, expected_alpha, rtol=1e-4, atol=1e-6)
    per_task = [torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True) for loss in losses]
    for i, (name, p) in enumerate(params.items()):
        g = [per_task[t][i] if per_task[t][i] is not None else torch.zeros_like(p) for t in range(2)]
        own = head_grads == "raw" and name.startswith("heads.")
        expected = g[0] + g[1] if own else alpha[0] * g[0] + alpha[1] * g[1]
        torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-7, msg=name)


def test_representation_level_backpropagates_the_encoder_once() -> None:
    model, x, y = _tiny_batch()
    calls = []
    model.encoder.conv1.weight.register_hook(lambda grad: calls.append(1))
    z, losses = _losses(model, x, y)
    build("cagrad", level="representation").backward(Step.of(model, z, losses))
    assert len(calls) == 1


def test_shared_level_trains_through_the_cli(tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app

    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", "cagrad", "-q", "--set", "method.level=shared", "--set", "method.grads=batched"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == "cagrad"
    assert summary["method_options"]["level"] == "shared" and summary["method_options"]["grads"] == "batched"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(list(m["alphas"].values())).all() for m in metrics)
