"""Nash-MTL against its definition: alpha > 0 with G alpha = 1/alpha, i.e. every task's share g_t . d = 1/alpha_t."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlcli.errors import MtlError
from mtlcli.methods import build
from mtlcli.methods.nash_mtl import _RIDGE, nash_mtl_weights, solve_nash
from tests.unit.methods.matrices import jacobian

SCALES = (1e-6, 1.0, 1e6)
# kinds where no positive combination of the gradients is 0, so G alpha = 1/alpha has a solution
SOLVABLE = ("random", "duplicated", "parallel", "collinear")
CASES = [(kind, t, s) for kind in SOLVABLE for t in (2, 3, 5, 10, 40) for s in SCALES if (kind, t) != ("duplicated", 2)]


def residual(gram: np.ndarray, alpha: np.ndarray, ridge: float = 0.0) -> float:
    """max_t |alpha_t ((G + ridge diag(G)) alpha)_t - 1|: scale-free."""
    g = gram + ridge * np.diag(gram.diagonal())
    return float(np.max(np.abs(alpha * (g @ alpha) - 1)))


@pytest.mark.parametrize(("kind", "t", "scale"), CASES)
def test_solution_satisfies_g_alpha_equals_one_over_alpha(kind: str, t: int, scale: float) -> None:
    jac = jacobian(kind, t, seed=t, scale=scale)
    gram = jac @ jac.T
    alpha = solve_nash(gram)
    assert np.all(alpha > 0)
    assert residual(gram, alpha, _RIDGE) <= 1e-8  # Newton is exact on the ridged system (round-off in G alpha)
    bound = _RIDGE * float(np.max(alpha**2 * gram.diagonal()))  # what the ridge costs on G itself
    assert residual(gram, alpha) <= 1e-8 + 1.01 * bound
    assert bound <= 1e-6


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [2, 3, 7, 20, 40])
@pytest.mark.parametrize("scale", SCALES)
def test_random_positive_definite_grams(t: int, seed: int, scale: float) -> None:
    """G = A A^T + eps I, seeded, across scales: G alpha = 1/alpha to relative 1e-8."""
    rng = np.random.default_rng(100 * t + seed)
    a = rng.normal(size=(t, t))
    gram = scale * (a @ a.T + 1e-3 * np.eye(t))
    alpha = solve_nash(gram)
    np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-7)


@pytest.mark.parametrize("t", [2, 5, 40])
def test_each_task_share_of_the_update_is_one_over_its_weight(t: int) -> None:
    """The bargaining property: g_t . d = 1/alpha_t, hence ||d||^2 = alpha . (1/alpha) = T."""
    jac = jacobian("random", t, seed=3, dim=80)
    alpha = solve_nash(jac @ jac.T)
    d = alpha @ jac
    np.testing.assert_allclose(jac @ d, 1 / alpha, rtol=1e-7)
    assert float(d @ d) == pytest.approx(t, rel=1e-7)


@pytest.mark.parametrize("t", [3, 6, 40])
def test_permutation_equivariance(t: int) -> None:
    jac = jacobian("random", t, seed=t, dim=80)
    perm = np.random.default_rng(t).permutation(t)
    np.testing.assert_allclose(solve_nash(jac[perm] @ jac[perm].T), solve_nash(jac @ jac.T)[perm], rtol=1e-9)


@pytest.mark.parametrize("c", [1e-4, 0.3, 7.0, 1e5])
def test_scaling_one_gradient_by_c_scales_its_weight_by_one_over_c(c: float) -> None:
    jac = jacobian("random", 5, seed=2)
    alpha = solve_nash(jac @ jac.T)
    scaled = jac.copy()
    scaled[1] *= c
    expected = alpha.copy()
    expected[1] /= c
    np.testing.assert_allclose(solve_nash(scaled @ scaled.T), expected, rtol=1e-8)


def test_known_solutions() -> None:
    # orthogonal gradients: alpha_t = 1/||g_t||
    np.testing.assert_allclose(solve_nash(np.diag([4.0, 1.0, 0.25])), [0.5, 1.0, 2.0], rtol=1e-9)  # ridge: 1e-10
    # identical gradients g: alpha_t (T alpha_t ||g||^2) = 1 -> alpha_t = 1/(sqrt(T) ||g||)
    np.testing.assert_allclose(solve_nash(np.full((4, 4), 9.0)), np.full(4, 1 / 6), rtol=1e-9)


def test_degenerate_grams() -> None:
    np.testing.assert_array_equal(solve_nash(np.zeros((3, 3))), np.zeros(3))
    np.testing.assert_array_equal(solve_nash(np.full((2, 2), np.nan)), np.zeros(2))
    gram = np.diag([4.0, 0.0, 1.0])  # a zero gradient takes no part in the bargaining
    np.testing.assert_allclose(solve_nash(gram), [0.5, 0.0, 1.0], rtol=1e-9)
    # Pareto-stationary (g_2 = -g_1): no solution without the ridge; finite, and the update stays bounded
    gram = np.array([[1.0, -1.0], [-1.0, 1.0]])
    alpha = solve_nash(gram)
    assert np.all(np.isfinite(alpha)) and np.all(alpha > 0)
    assert float(alpha @ gram @ alpha) <= 2.0
    torch.testing.assert_close(nash_mtl_weights(torch.zeros(2, 2)), torch.zeros(2))


def test_max_norm_clips_the_combined_update() -> None:
    jac = jacobian("random", 4, seed=1)
    gram = torch.tensor(jac @ jac.T)
    raw = nash_mtl_weights(gram)
    assert float(raw @ gram @ raw) == pytest.approx(4.0, rel=1e-7)  # ||d|| = sqrt(T) before clipping
    clipped = nash_mtl_weights(gram, max_norm=1.0)
    torch.testing.assert_close(clipped, raw / 2)
    torch.testing.assert_close(nash_mtl_weights(gram, max_norm=5.0), raw)
    torch.testing.assert_close(build("nash-mtl").weights(torch.ones(4), gram), clipped)


@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_agrees_with_the_reference_cvxpy_solver(t: int) -> None:
    """TorchJD's NashMTL (the authors' CCP sequence of ECOS problems, max_norm 0 for the raw alpha): it stops at
    ||G_n alpha - 1/alpha|| < 1e-3 on the normalised Gram, so it agrees to ~1e-3 relative; ours is exact to
    ~1e-12 (tests above). At T = 40 its 20 CCP rounds end far from the fixed point (alpha off by up to ~60%):
    there we only check that ours solves G alpha = 1/alpha better. Needs `torchjd[nash_mtl]` (cvxpy, ecos)."""
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    from torchjd.aggregation import NashMTL

    for seed in range(2):
        jac = jacobian("random", t, seed=seed, dim=60) / 10
        theirs = NashMTL(n_tasks=t, max_norm=0.0).weighting(torch.tensor(jac)).numpy()
        ours = solve_nash(jac @ jac.T)
        if t <= 10:
            np.testing.assert_allclose(ours, theirs, rtol=2e-2)
        assert residual(jac @ jac.T, ours) <= 1e-8 <= residual(jac @ jac.T, theirs) + 1e-8


def test_update_weights_every_reuses_alpha_and_the_state_round_trips() -> None:
    grams = [torch.tensor((lambda j: j @ j.T)(jacobian("random", 3, seed=s))) for s in range(7)]
    losses = torch.ones(3)
    method = build("nash-mtl", update_weights_every=3, max_norm=0.0)
    method.setup(3, torch.device("cpu"))
    got = [method.weights(losses, g) for g in grams[:4]]
    torch.testing.assert_close(got[0], nash_mtl_weights(grams[0]))
    torch.testing.assert_close(got[1], got[0])
    torch.testing.assert_close(got[2], got[0])
    torch.testing.assert_close(got[3], nash_mtl_weights(grams[3]))
    state = method.state_dict()
    resumed = build("nash-mtl", update_weights_every=3, max_norm=0.0)
    resumed.setup(3, torch.device("cpu"))
    resumed.load_state_dict(state)
    for g in grams[4:]:  # steps 4, 5 reuse step 3's alpha, step 6 re-solves
        torch.testing.assert_close(resumed.weights(losses, g), method.weights(losses, g), rtol=0, atol=0)
    torch.testing.assert_close(resumed.weights(losses, grams[4]), nash_mtl_weights(grams[6]))
    assert resumed.state_dict()["step"] == 8
    # clipping uses the current Gram even when alpha is reused
    clipped = build("nash-mtl", update_weights_every=2)
    first = clipped.weights(losses, grams[0])
    second = clipped.weights(losses, 4 * grams[0])
    torch.testing.assert_close(second, first / 2)


def test_a_skipped_step_is_not_counted() -> None:
    grams = [torch.tensor((lambda j: j @ j.T)(jacobian("random", 3, seed=s))) for s in range(3)]
    method = build("nash-mtl", update_weights_every=2, max_norm=0.0)
    method.weights(torch.ones(3), grams[0])
    method.weights(torch.ones(3), grams[1])
    method.weights(torch.ones(3), grams[2])  # solved here, then dropped by the trainer
    method.step_skipped()
    assert method.step_count == 2
    torch.testing.assert_close(method.weights(torch.ones(3), grams[1]), nash_mtl_weights(grams[1]))


def test_options_defaults_and_validation() -> None:
    method = build("nash-mtl")
    o = method.options
    assert (o.update_weights_every, o.max_norm, o.level, o.grads, o.head_grads) == (1, 1.0, "shared", None, "weighted")
    assert repr(method) == ("NashMtl(update_weights_every=1, max_norm=1.0, level='shared', grads='loop', head_grads='weighted')")
    with pytest.raises(MtlError, match="update_weights_every"):
        build("nash-mtl", update_weights_every=0)
    with pytest.raises(MtlError, match="max_norm"):
        build("nash-mtl", max_norm=-1.0)
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("nash-mtl", level="representation", grads="batched")


def test_shared_level_trains_through_the_cli(tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app

    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", "nash-mtl", "-q", "--set", "method.level=shared", "--set", "method.grads=batched"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == "nash-mtl"
    assert summary["method_options"]["level"] == "shared"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(list(m["alphas"].values())).all() for m in metrics)
