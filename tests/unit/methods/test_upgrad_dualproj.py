"""UPGrad and DualProj (Quinton & Rey 2024, TorchJD) against their definitions: projections onto the dual
cone {x : J x >= 0} of the task gradients, from the Gram matrix G = J J^T only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from mtlcli.errors import MtlError
from mtlcli.methods import build, option_problems
from mtlcli.methods._dual_cone import _block_pivoting, _project, kkt_violation, prepared_gram, project_weights
from tests.unit.methods.matrices import KINDS, jacobian
from tests.unit.methods.test_steps import TASKS, assert_grads, expected, per_task_grads, run_step, tiny

METHODS = ["upgrad", "dualproj"]
SCALES = (1e-6, 1.0, 1e6)
REGS = (0.0, 1e-4)  # exact projections, and TorchJD's default regularisation
CASES = [(kind, t) for kind in KINDS for t in (2, 3, 5, 10, 40) if (kind, t) != ("duplicated", 2)]


def weights(method: str, jac: np.ndarray, **options) -> np.ndarray:
    m = build(method, **options)
    return m.weights(torch.ones(len(jac), dtype=torch.float64), torch.tensor(jac @ jac.T)).numpy()


def direction(method: str, jac: np.ndarray, **options) -> np.ndarray:
    return weights(method, jac, **options) @ jac


def relative_floor(jac: np.ndarray, w: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """tol ||g_j|| sum_k |w_k| ||g_k||: the round-off scale of (J d)_j for d = J^T w."""
    norms = np.linalg.norm(jac, axis=1)
    return tol * norms * float(np.abs(w) @ norms)


# --- the projection QP: min_{w >= u} w^T G w / 2, KKT ------------------------------------------------------


def check_kkt(g: np.ndarray, u: np.ndarray, w: np.ndarray, tol: float = 1e-9) -> None:
    norms = np.sqrt(np.diag(g))
    scale = norms * float(np.abs(w) @ norms)
    gw = g @ w
    assert np.all(w >= u - 1e-12 * np.abs(w).max())  # dual feasibility: v = w - u >= 0
    assert np.all(gw >= -tol * scale)  # primal feasibility: J (J^T w) >= 0
    assert np.all(np.abs((w - u) * gw) <= tol * scale * np.abs(w).max())  # complementary slackness


@pytest.mark.parametrize("reg_eps", REGS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("kind", "t"), CASES)
def test_every_projection_satisfies_the_kkt_conditions(kind: str, t: int, scale: float, reg_eps: float) -> None:
    jac = jacobian(kind, t, seed=3 * t, scale=scale)
    g = prepared_gram(torch.tensor(jac @ jac.T), norm_eps=0.0, reg_eps=reg_eps)
    assert g is not None
    rng = np.random.default_rng(t)
    u = np.vstack([np.eye(t), np.full(t, 1 / t), rng.uniform(0, 1, size=(3, t))])  # UPGrad's rows, DualProj's, others
    w = project_weights(g, u)
    for row_u, row_w in zip(u, w, strict=True):
        check_kkt(g, row_u, row_w)
        # the single-problem entry point gives the same projection (and weights, when unique: G + eps I is PD)
        alone = project_weights(g, row_u)
        np.testing.assert_allclose((alone - row_w) @ jac, 0.0, atol=1e-8 * float(np.abs(row_w) @ np.linalg.norm(jac, axis=1)))
        if reg_eps > 0:
            np.testing.assert_allclose(alone, row_w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["random", "low-rank", "duplicated"])
def test_block_pivoting_and_lawson_hanson_agree(kind: str) -> None:
    """The fast path (block principal pivoting, all rows at once) and the fallback (Lawson-Hanson)."""
    jac = jacobian(kind, 12, seed=5)
    g = prepared_gram(torch.tensor(jac @ jac.T), norm_eps=0.0, reg_eps=1e-4)
    assert g is not None
    u = np.eye(12)
    fast, settled = _block_pivoting(g, u, 1e-10, 1000)
    assert settled.all() and not kkt_violation(g, u, fast, 1e-10).any()
    slow = np.stack([_project(g, row, 1e-10, 1000) for row in u])
    np.testing.assert_allclose(fast, slow, rtol=1e-8, atol=1e-10)


# --- the aggregated direction d = J^T w -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reg_eps", REGS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(("kind", "t"), CASES)
def test_direction_conflicts_with_no_task(method: str, kind: str, t: int, scale: float, reg_eps: float) -> None:
    jac = jacobian(kind, t, seed=t, scale=scale)
    w = weights(method, jac, reg_eps=reg_eps)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    d = w @ jac
    # G_reg w^(i) >= 0 for each projection gives J d >= -reg_eps trace(G) w (exactly J d >= 0 when reg_eps = 0)
    slack = reg_eps * float(np.sum(jac * jac)) * w
    assert np.all(jac @ d >= -slack - relative_floor(jac, w))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("reg_eps", REGS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_without_conflict_both_give_the_mean(method: str, t: int, scale: float, reg_eps: float) -> None:
    rng = np.random.default_rng(t)
    positive = np.abs(rng.normal(size=(t, 30))) * scale  # all pairwise inner products > 0
    orthogonal = np.linalg.qr(rng.normal(size=(50, t)))[0].T * rng.uniform(0.1, 10, size=(t, 1)) * scale  # = 0
    for jac in (positive, orthogonal):
        np.testing.assert_allclose(weights(method, jac, reg_eps=reg_eps), np.full(t, 1 / t), rtol=1e-12)


def test_dualproj_keeps_a_non_conflicting_mean_where_upgrad_does_not() -> None:
    jac = np.array([[1.0, 0.0], [-0.2, 1.0]])  # g1 . g2 < 0, but the mean (0.4, 0.5) conflicts with neither
    np.testing.assert_allclose(weights("dualproj", jac, reg_eps=0.0), [0.5, 0.5], rtol=1e-12)
    up = weights("upgrad", jac, reg_eps=0.0)
    assert np.abs(up - 0.5).max() > 1e-2
    # UPGrad's closed form for two tasks: g1 + max(0, -g1.g2/|g2|^2) g2, and symmetrically
    g1, g2 = jac
    p1 = g1 + max(0.0, -(g1 @ g2) / (g2 @ g2)) * g2
    p2 = g2 + max(0.0, -(g1 @ g2) / (g1 @ g1)) * g1
    np.testing.assert_allclose(up @ jac, (p1 + p2) / 2, rtol=1e-12)


def test_dualproj_projects_the_mean_onto_the_cone() -> None:
    """Two conflicting tasks in a plane plus a third orthogonal one, the mean conflicting with the first: d is
    the Euclidean projection of the mean onto the cone (no sampled feasible point is closer)."""
    jac = np.array([[1.0, 0.0, 0.0], [-1.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    d = direction("dualproj", jac, reg_eps=0.0)
    mean = jac.mean(axis=0)
    assert (jac @ mean).min() < -0.1
    rng = np.random.default_rng(0)
    candidates = rng.normal(size=(200_000, 3)) * 0.5 + d
    feasible = candidates[np.all(candidates @ jac.T >= 0, axis=1)]
    assert np.linalg.norm(d - mean) <= np.min(np.linalg.norm(feasible - mean, axis=1)) + 1e-12
    assert np.all(jac @ d >= -1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("kind", "t"), [(k, t) for k in KINDS for t in (3, 5, 10, 40)])
def test_permutation_equivariance(method: str, kind: str, t: int) -> None:
    jac = jacobian(kind, t, seed=7 * t)
    perm = np.random.default_rng(t).permutation(t)
    w = weights(method, jac)
    w_perm = weights(method, jac[perm])
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-7, atol=1e-9 * np.abs(w).max())  # unique: G + eps I is PD
    exact, exact_perm = weights(method, jac, reg_eps=0.0), weights(method, jac[perm], reg_eps=0.0)
    scale = np.linalg.norm(jac, axis=1).max() * np.abs(exact).sum()  # without regularisation only d is unique
    np.testing.assert_allclose(exact_perm @ jac[perm], exact @ jac, atol=1e-7 * scale)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_weights_are_scale_invariant_and_the_direction_homogeneous(method: str, kind: str) -> None:
    jac = jacobian(kind, 8, seed=11)
    w = weights(method, jac)
    for a in (1e-6, 1e-3, 1e3, 1e6):
        np.testing.assert_allclose(weights(method, a * jac), w, rtol=1e-7, atol=1e-10 * np.abs(w).max())
        np.testing.assert_allclose(direction(method, a * jac), a * (w @ jac), rtol=1e-7, atol=1e-9 * a * np.abs(jac).max())


@pytest.mark.parametrize(("kind", "t"), [("random", 3), ("random", 10), ("random", 40), ("low-rank", 10), ("duplicated", 9)])
def test_upgrad_is_linear_under_scaling(kind: str, t: int) -> None:
    """Scaling g_t by c_t > 0 leaves the dual cone unchanged and scales the t-th projection by c_t:
    UPGrad(diag(c) J) = sum_t (c_t / T) pi(g_t) = UPGrad of J with pref_vector c / T (Quinton & Rey, §4)."""
    jac = jacobian(kind, t, seed=t)
    rng = np.random.default_rng(t)
    for _ in range(3):
        c = 10.0 ** rng.uniform(-3, 3, size=t)
        scaled = direction("upgrad", c[:, None] * jac, reg_eps=0.0)
        combined = direction("upgrad", jac, reg_eps=0.0, pref_vector=(c / t).tolist())
        scale = np.linalg.norm(jac, axis=1).max() * c.max()
        np.testing.assert_allclose(scaled, combined, atol=1e-8 * scale)
    # and additive in the preference: pref a + b gives the sum of the two directions
    a, b = rng.uniform(0, 1, size=t), rng.uniform(0, 1, size=t)
    both = direction("upgrad", jac, reg_eps=0.0, pref_vector=(a + b).tolist())
    apart = sum(direction("upgrad", jac, reg_eps=0.0, pref_vector=p.tolist()) for p in (a, b))
    np.testing.assert_allclose(both, apart, atol=1e-8 * np.linalg.norm(jac, axis=1).max() * t)


def test_dualproj_is_not_linear_under_scaling() -> None:
    """What UPGrad has and DualProj lacks (Quinton & Rey, Table 1): c -> A(diag(c) J) is additive for UPGrad only."""
    jac = np.array([[1.0, 0.0], [-0.5, 1.0]])
    c1, c2 = np.array([1.0, 0.01]), np.array([0.01, 4.0])

    def aggregate(method: str, c: np.ndarray) -> np.ndarray:
        return direction(method, c[:, None] * jac, reg_eps=0.0)

    np.testing.assert_allclose(aggregate("upgrad", c1 + c2), aggregate("upgrad", c1) + aggregate("upgrad", c2), atol=1e-12)
    gap = aggregate("dualproj", c1 + c2) - aggregate("dualproj", c1) - aggregate("dualproj", c2)
    assert np.linalg.norm(gap) > 1e-2


# --- against TorchJD (quadprog) ----------------------------------------------------------------------------------


def torchjd_weighting(method: str, *, pref: list[float] | None = None, norm_eps: float = 1e-4, reg_eps: float = 1e-4):
    pytest.importorskip("qpsolvers", reason="TorchJD's projector needs qpsolvers and quadprog (torchjd[quadprog_projector])")
    from torchjd.aggregation import DualProjWeighting, UPGradWeighting
    from torchjd.linalg import QuadprogProjector

    cls = UPGradWeighting if method == "upgrad" else DualProjWeighting
    p = None if pref is None else torch.tensor(pref, dtype=torch.float64)
    return cls(p, projector=QuadprogProjector(norm_eps=norm_eps, reg_eps=reg_eps))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("kind", "t"), [(k, t) for k in KINDS for t in (2, 3, 5, 10, 20, 40) if (k, t) != ("duplicated", 2)])
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_torchjd(method: str, kind: str, t: int, seed: int) -> None:
    jac = jacobian(kind, t, seed=seed, dim=30)
    gram = torch.tensor(jac @ jac.T)
    theirs = torchjd_weighting(method)(gram).numpy()  # TorchJD's defaults; the trace is well above its norm_eps
    ours = weights(method, jac)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e3, 1e6])
def test_agrees_with_torchjd_at_any_scale_and_preference(method: str, scale: float) -> None:
    jac = jacobian("random", 6, seed=4, scale=scale)
    gram = torch.tensor(jac @ jac.T)
    pref = [0.1, 0.3, 0.0, 0.2, 0.25, 0.15]
    theirs = torchjd_weighting(method, pref=pref, norm_eps=0.0)(gram).numpy()
    ours = build(method, pref_vector=pref).weights(torch.ones(6), gram).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6 * np.abs(theirs).max())


@pytest.mark.parametrize("method", METHODS)
def test_torchjd_norm_eps_is_available_and_absolute(method: str) -> None:
    """TorchJD's default norm_eps = 1e-4 falls back to the plain mean for a small G; ours (0) still projects."""
    jac = 1e-4 * np.array([[1.0, 0.0, 0.0], [-1.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # trace(G) = 4.5e-8; the mean conflicts
    gram = torch.tensor(jac @ jac.T)
    theirs = torchjd_weighting(method)(gram).numpy()
    np.testing.assert_allclose(weights(method, jac, norm_eps=1e-4), theirs, rtol=1e-9)
    np.testing.assert_allclose(theirs, np.full(3, 1 / 3))
    assert np.abs(weights(method, jac) - 1 / 3).max() > 1e-2
    np.testing.assert_allclose(weights(method, jac), weights(method, jac * 1e4), rtol=1e-9)


# --- options, degenerate input, the training step -----------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_options_are_validated(method: str) -> None:
    assert option_problems(method, {"level": "shared", "grads": "batched"}) == []
    problems = option_problems(method, {"level": "representation", "grads": "batched"})
    assert problems == [(("grads",), problems[0][1])] and "applies only at level shared" in problems[0][1]
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build(method, level="representation", grads="loop")
    with pytest.raises(MtlError, match="level"):
        build(method, level="encoder")
    with pytest.raises(MtlError, match="pref_vector"):
        build(method, pref_vector=[0.5, -0.1])
    with pytest.raises(MtlError, match="reg_eps"):
        build(method, reg_eps=-1.0)
    m = build(method, pref_vector=[0.5, 0.5])
    with pytest.raises(MtlError, match="2 weights for 3 tasks"):
        m.setup(3, torch.device("cpu"))
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        m.weights(torch.ones(3), torch.eye(3))
    with pytest.raises(ValueError, match="square"):
        m.weights(torch.ones(3), torch.ones(3, 2))
    shown = repr(build(method, level="shared"))
    assert shown.endswith("(level='shared', grads='loop', head_grads='raw', pref_vector=None, reg_eps=0.0001, norm_eps=0.0)")


def test_grads_validator_error_is_a_pydantic_error() -> None:
    from mtlcli.methods.upgrad import UPGradOptions

    with pytest.raises(ValidationError, match="applies only at level shared"):
        UPGradOptions(level="representation", grads="batched")
    assert UPGradOptions(level="shared", grads="batched").grads == "batched"


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_gram_matrices(method: str) -> None:
    m = build(method)
    ones = torch.ones(3, dtype=torch.float64)
    np.testing.assert_allclose(m.weights(ones, torch.zeros(3, 3, dtype=torch.float64)).numpy(), np.full(3, 1 / 3))
    nan = torch.full((3, 3), float("nan"), dtype=torch.float64)
    assert torch.isfinite(m.weights(ones, nan)).all()
    single = m.weights(torch.ones(1), torch.tensor([[4.0]]))
    assert single.dtype == torch.float32 and single.tolist() == [1.0]
    opposite = np.array([[1.0, 2.0], [-1.0, -2.0]])  # the cone is the orthogonal complement: d = 0
    d = direction(method, opposite, reg_eps=0.0)
    np.testing.assert_allclose(d, 0.0, atol=1e-12)


LEVELS = [("representation", {}), ("shared", {}), ("shared", {"grads": "loop"}), ("shared", {"grads": "batched"})]


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
@pytest.mark.parametrize(("level", "options"), LEVELS)
@pytest.mark.parametrize("method", METHODS)
def test_step_gives_sum_w_t_grad_l_t(method: str, level: str, options: dict, head_grads: str) -> None:
    model, x, y = tiny(6)
    m = build(method, level=level, head_grads=head_grads, **options)
    m.setup(len(TASKS), torch.device("cpu"))
    got_weights, got = run_step(m, model, x, y)
    grads, losses, z_gram, shared_gram = per_task_grads(model, x, y)
    w = m.weights(losses, z_gram if level == "representation" else shared_gram)
    torch.testing.assert_close(got_weights, w, rtol=1e-7, atol=1e-10)
    ones = torch.ones(len(TASKS), dtype=torch.float64)
    assert_grads(got, expected(grads, w, w if head_grads == "weighted" else ones))


@pytest.mark.parametrize("method", METHODS)
def test_trains_one_epoch_at_the_shared_level(method: str, tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app

    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", method, "-q", "--set", "method.level=shared", "--set", "method.grads=batched"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == method
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(np.all(np.isfinite(list(m["alphas"].values()))) for m in metrics)


def test_grads_at_the_representation_level_is_a_recipe_error(tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app

    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", "upgrad", "--set", "method.level=representation", "--set", "method.grads=batched"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "method.grads: applies only at level shared" in result.output
