"""The pieces of min_norm against their definitions: the two-vector closed form, the best pair by enumeration,
Frank-Wolfe (Sener & Koltun 2018, Algorithm 2) and the authors' projected gradient re-run step by step in numpy
float64, the simplex projection by bisection, and Wolfe's stopping test at its tolerance (hand-made Gram matrices)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlcli.methods import min_norm as module
from mtlcli.methods.min_norm import (
    best_pair,
    finite,
    frank_wolfe,
    min_norm,
    project_simplex,
    projected_gradient,
    two_point,
    wolfe_min_norm_point,
)
from tests.unit.methods.matrices import jacobian

# ----------------------------------------------------------------------------------------------------------------
# independent numpy references


def segment_min(a: float, b: float, c: float) -> float:
    """argmin over gamma in [0, 1] of q(gamma) = gamma^2 a + 2 gamma (1 - gamma) b + (1 - gamma)^2 c, written as the
    quadratic A gamma^2 + B gamma + c (A = a + c - 2b, B = 2(b - c)); a flat q takes gamma = 1 when a <= c."""
    curvature, slope = a + c - 2 * b, 2 * (b - c)
    if curvature > 0:
        return min(1.0, max(0.0, -slope / (2 * curvature)))
    return 1.0 if a <= c else 0.0


def q(gamma: float, a: float, b: float, c: float) -> float:
    return gamma * gamma * a + 2 * gamma * (1 - gamma) * b + (1 - gamma) ** 2 * c


def enumerated_best_pair(gram: np.ndarray) -> np.ndarray:
    """The best two-task point over the ordered pairs (i, j), i != j, in row-major order (first minimum kept)."""
    t = len(gram)
    best, weights = math.inf, None
    for i in range(t):
        for j in range(t):
            if i == j:
                continue
            gamma = segment_min(gram[i, i], gram[i, j], gram[j, j])
            value = q(gamma, gram[i, i], gram[i, j], gram[j, j])
            if value < best:
                best, weights = value, np.zeros(t)
                weights[i], weights[j] = gamma, 1 - gamma
    return weights


def paper_frank_wolfe(gram: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Algorithm 2: best-pair start; vertex argmin (G w)_t; exact line search; stop after a step below tol."""
    w = enumerated_best_pair(gram)
    if len(gram) == 2:
        return w
    for _ in range(max_iter):
        gw = gram @ w
        v = int(np.argmin(gw))
        gamma = segment_min(float(w @ gw), float(gw[v]), float(gram[v, v]))
        w = gamma * w
        w[v] += 1 - gamma
        if 1 - gamma < tol:
            break
    return w


def bisection_projection(v: np.ndarray) -> np.ndarray:
    """Projection onto the simplex: max(v - theta, 0) with theta found by bisection on sum(max(v - theta, 0)) = 1."""
    lo, hi = float(v.min()) - 1.0, float(v.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - (lo + hi) / 2, 0)


def authors_projected_gradient(gram: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Gradient steps w - grad / L (grad = 2 G w, L = 2 max_i sum_j |G_ij|) projected on the simplex, from the best
    pair; stop after a step whose L1 change is below tol."""
    w = enumerated_best_pair(gram)
    lipschitz = 2 * np.abs(gram).sum(axis=1).max()
    for _ in range(max_iter):
        new = bisection_projection(w - 2 * gram @ w / lipschitz)
        change = np.abs(new - w).sum()
        w = new
        if change < tol:
            break
    return w


def gram_of(kind: str, t: int, seed: int, dim: int = 8) -> np.ndarray:
    jac = jacobian(kind, t, seed=seed, dim=dim)
    return jac @ jac.T


# ----------------------------------------------------------------------------------------------------------------
# the two-vector closed form (paper eq. 4) and the best pair


@pytest.mark.parametrize(
    ("v11", "v12", "v22", "gamma", "value"),
    [
        (4.0, 0.0, 1.0, 0.2, 0.8),  # orthogonal: gamma = v22 / (v11 + v22), value = v11 v22 / (v11 + v22)
        (2.0, -1.0, 3.0, 4 / 7, 5 / 7),  # interior: value = (v11 v22 - v12^2) / (v11 + v22 - 2 v12)
        (4.0, 2.0, 1.0, 0.0, 1.0),  # the minimum is at x2 (unclamped gamma -1)
        (1.0, 2.0, 4.0, 1.0, 1.0),  # the minimum is at x1 (unclamped gamma 2)
        (1.0, 1.0, 1.0, 1.0, 1.0),  # x1 = x2: no curvature, gamma 1
    ],
)
def test_two_point_by_hand(v11: float, v12: float, v22: float, gamma: float, value: float) -> None:
    g, v = two_point(*(torch.tensor(x, dtype=torch.float64) for x in (v11, v12, v22)))
    assert float(g) == pytest.approx(gamma, abs=1e-15)
    assert float(v) == pytest.approx(value, abs=1e-15)
    assert float(v) == pytest.approx(q(gamma, v11, v12, v22), abs=1e-15)


def test_two_point_value_is_the_squared_norm_at_gamma() -> None:
    """Over random pairs of vectors, `value` is ||gamma x1 + (1 - gamma) x2||^2 and no gamma on a grid does better."""
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 2001)
    for _ in range(50):
        x1, x2 = rng.normal(size=(2, 4)) * rng.uniform(0.1, 10, size=(2, 1))
        gamma, value = two_point(*(torch.tensor(float(x)) for x in (x1 @ x1, x1 @ x2, x2 @ x2)))
        point = float(gamma) * x1 + (1 - float(gamma)) * x2
        assert float(value) == pytest.approx(float(point @ point), rel=1e-5)
        norms = np.linalg.norm(np.outer(grid, x1) + np.outer(1 - grid, x2), axis=1) ** 2
        assert float(value) <= norms.min() * (1 + 1e-5)


def test_best_pair_by_hand() -> None:
    # orthogonal gradients of squared norms 1, 2, 4: pair values 2/3, 4/5, 4/3 -> tasks 0 and 1, weights 2/3 and 1/3
    w = best_pair(torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)))
    np.testing.assert_allclose(w.numpy(), [2 / 3, 1 / 3, 0.0], atol=1e-15)


@pytest.mark.parametrize("kind", ["random", "low-rank", "parallel"])
@pytest.mark.parametrize("t", [3, 4, 6])
def test_best_pair_matches_enumeration(kind: str, t: int) -> None:
    for seed in range(4):
        gram = gram_of(kind, t, seed)
        np.testing.assert_allclose(best_pair(torch.tensor(gram)).numpy(), enumerated_best_pair(gram), atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Frank-Wolfe and projected gradient, step by step


@pytest.mark.parametrize("t", [3, 5, 8])
@pytest.mark.parametrize(("max_iter", "tol"), [(1, 1e-12), (2, 1e-12), (7, 1e-12), (40, 1e-12), (250, 0.05), (250, 1e-3)])
def test_frank_wolfe_is_algorithm_2(t: int, max_iter: int, tol: float) -> None:
    for seed in range(2):
        gram = gram_of("random", t, seed + 10 * t)
        got = frank_wolfe(torch.tensor(gram), max_iter=max_iter, tol=tol).numpy()
        np.testing.assert_allclose(got, paper_frank_wolfe(gram, max_iter, tol), atol=1e-10)


@pytest.mark.parametrize("t", [3, 5, 8])
@pytest.mark.parametrize(("max_iter", "tol"), [(1, 1e-12), (3, 1e-12), (20, 1e-12), (250, 0.05), (250, 1e-3)])
def test_projected_gradient_is_the_authors_iteration(t: int, max_iter: int, tol: float) -> None:
    for seed in range(2):
        gram = gram_of("random", t, seed + 10 * t)
        got = projected_gradient(torch.tensor(gram), max_iter=max_iter, tol=tol).numpy()
        np.testing.assert_allclose(got, authors_projected_gradient(gram, max_iter, tol), atol=1e-10)


def test_iterative_solvers_default_to_the_authors_settings() -> None:
    """250 iterations and a step tolerance of 1e-5; on 40 tasks neither converges, so the iteration count shows."""
    gram = gram_of("random", 40, 1, dim=60)
    np.testing.assert_allclose(frank_wolfe(torch.tensor(gram)).numpy(), paper_frank_wolfe(gram, 250, 1e-5), atol=1e-10)
    assert np.abs(paper_frank_wolfe(gram, 251, 1e-5) - paper_frank_wolfe(gram, 250, 1e-5)).max() > 1e-8
    reference = authors_projected_gradient(gram, 250, 1e-5)
    np.testing.assert_allclose(projected_gradient(torch.tensor(gram)).numpy(), reference, atol=1e-10)
    assert np.abs(authors_projected_gradient(gram, 251, 1e-5) - reference).max() > 1e-8


@pytest.mark.parametrize("solver", ["frank-wolfe", "projected-gradient"])
def test_solver_options_reach_the_solver(solver: str) -> None:
    """min_norm passes max_iter and tol on: one iteration, or a loose tolerance, stops short of the optimum (for the
    default solver: `test_wolfe_stops_when_the_relative_gap_is_within_tol` and `test_wolfe_major_iterations_by_hand`)."""
    gram = gram_of("random", 6, 3, dim=10)
    exact = min_norm(torch.tensor(gram), solver=solver, max_iter=5000, tol=1e-14).numpy()
    for options in ({"max_iter": 1, "tol": 1e-14}, {"max_iter": 5000, "tol": 0.9}):
        early = min_norm(torch.tensor(gram), solver=solver, **options).numpy()
        assert np.abs(early - exact).max() > 1e-3, options
    if solver == "frank-wolfe":
        np.testing.assert_allclose(min_norm(torch.tensor(gram), solver=solver, max_iter=3, tol=1e-14).numpy(),
                                   paper_frank_wolfe(gram, 3, 1e-14), atol=1e-10)  # fmt: skip
    if solver == "projected-gradient":
        np.testing.assert_allclose(min_norm(torch.tensor(gram), solver=solver, max_iter=3, tol=1e-14).numpy(),
                                   authors_projected_gradient(gram, 3, 1e-14), atol=1e-10)  # fmt: skip


@pytest.mark.parametrize("solver", ["min-norm-point", "frank-wolfe", "projected-gradient"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_one_task_gets_weight_one_in_the_gram_dtype(solver: str, dtype: torch.dtype) -> None:
    w = min_norm(torch.tensor([[2.5]], dtype=dtype), solver=solver)
    assert w.dtype == dtype and w.shape == (1,) and w.tolist() == [1.0]


@pytest.mark.parametrize("solver", ["min-norm-point", "frank-wolfe", "projected-gradient"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_weights_keep_the_gram_dtype(solver: str, dtype: torch.dtype) -> None:
    gram = torch.tensor(gram_of("random", 4, 5), dtype=dtype)
    w = min_norm(gram, solver=solver, max_iter=20)
    assert w.dtype == dtype and w.shape == (4,)
    assert abs(float(w.double().sum()) - 1) < 1e-2 and bool((w >= 0).all())


def test_unknown_solver_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"^unknown solver 'simplex'; choose one of min-norm-point, frank-wolfe, projected-gradient$"
    ):
        min_norm(torch.eye(2), solver="simplex")  # type: ignore[arg-type]
    for bad in (torch.zeros(2, 2, 2), torch.zeros(0, 0), torch.zeros(3)):
        with pytest.raises(ValueError, match="non-empty square"):
            min_norm(bad)


# ----------------------------------------------------------------------------------------------------------------
# the simplex projection


def test_project_simplex_by_hand() -> None:
    cases = [([0.5, 0.5], [0.5, 0.5]), ([2.0, 0.0], [1.0, 0.0]), ([0.2, 0.1], [0.55, 0.45]), ([3.0, 1.0, -4.0], [1.0, 0.0, 0.0])]
    for v, expected in cases:
        np.testing.assert_allclose(project_simplex(torch.tensor(v, dtype=torch.float64)).numpy(), expected, atol=1e-15)


def test_project_simplex_matches_bisection() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 30):
        for scale in (0.01, 1.0, 100.0):
            v = rng.normal(size=n) * scale
            got = project_simplex(torch.tensor(v)).numpy()
            np.testing.assert_allclose(got, bisection_projection(v), atol=1e-12)
            assert abs(got.sum() - 1) < 1e-12 and got.min() >= 0


# ----------------------------------------------------------------------------------------------------------------
# Wolfe's min-norm point: the stopping test at its tolerance, the iteration limit, float64 arithmetic

# g0 = (1, 0), g1 = (1/2, sqrt(7)/2), g2 = (1/2, -sqrt(7)/2): the optimum is the midpoint of g1 and g2, (1/2, 0).
# Wolfe starts at the shortest, g0, whose relative duality gap is (|g0|^2 - g0.g1) / |g0|^2 = 1/2 exactly; the affine
# minimiser of all three is the origin, with weight -1 on g0, so the interior shortcut does not apply.
TRIANGLE = np.array([[1.0, 0.5, 0.5], [0.5, 2.0, -1.5], [0.5, -1.5, 2.0]])


@pytest.mark.parametrize(
    ("tol", "expected"), [(0.6, [1, 0, 0]), (0.5, [1, 0, 0]), (0.4999, [0, 0.5, 0.5]), (1e-10, [0, 0.5, 0.5])]
)
def test_wolfe_stops_when_the_relative_gap_is_within_tol(tol: float, expected: list[float]) -> None:
    np.testing.assert_allclose(wolfe_min_norm_point(TRIANGLE, tol=tol), expected, atol=1e-12)
    np.testing.assert_allclose(min_norm(torch.tensor(TRIANGLE), tol=tol).numpy(), expected, atol=1e-12)
    scaled = TRIANGLE * 2.0**-30  # the test is relative: the same stops at any scale
    np.testing.assert_allclose(wolfe_min_norm_point(scaled, tol=tol), expected, atol=1e-12)


@pytest.mark.parametrize("tol", [0.3, 0.1, 1e-2, 1e-4])
def test_wolfe_guarantee_at_a_loose_tolerance(tol: float) -> None:
    """Stopped at relative gap <= tol, f(w) - f* <= 2 gap <= 2 tol f(w) (the Frank-Wolfe duality gap)."""
    for seed in range(6):
        gram = gram_of("random", 8, seed, dim=12) + 4.0  # a common component: the optimum has some tasks at 0
        w = wolfe_min_norm_point(gram, tol=tol)
        gw = gram @ w
        value = float(w @ gw)
        assert value - float(gw.min()) <= tol * value * (1 + 1e-9)
        optimum = float(wolfe_min_norm_point(gram, tol=1e-14) @ gram @ wolfe_min_norm_point(gram, tol=1e-14))
        assert value - optimum <= 2 * tol * value + 1e-12


# four orthogonal-ish gradients: g0 = e1, g1 = sqrt(2) e2, g2 = 2 e3 and a long g3 = 3 (1, 1, 1, 1) that stays out.
# Wolfe: g0, then the corral {g0, g1} (weights prop. to 1/|g|^2: 2/3, 1/3), then {g0, g1, g2} (4/7, 2/7, 1/7).
FOUR = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, math.sqrt(2), 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0]])


@pytest.mark.parametrize(
    ("max_iter", "expected"), [(1, [2 / 3, 1 / 3, 0, 0]), (2, [4 / 7, 2 / 7, 1 / 7, 0]), (250, [4 / 7, 2 / 7, 1 / 7, 0])]
)
def test_wolfe_major_iterations_by_hand(max_iter: int, expected: list[float]) -> None:
    gram = FOUR @ FOUR.T
    np.testing.assert_allclose(wolfe_min_norm_point(gram, max_iter=max_iter), expected, atol=1e-12)
    np.testing.assert_allclose(min_norm(torch.tensor(gram), max_iter=max_iter).numpy(), expected, atol=1e-12)


def test_wolfe_solves_in_float64_whatever_the_gram_dtype() -> None:
    """Two nearly parallel gradients in float32: the weights are the float64 closed form of the float32 entries, to
    float32 rounding (float32 arithmetic would be off by 1e-6)."""
    jac = np.array([[1.0, 0.03], [1.0, -0.06]])
    gram32 = (jac @ jac.T).astype(np.float32)
    g = gram32.astype(np.float64)
    gamma = (g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1])
    w = min_norm(torch.tensor(gram32))
    assert w.dtype == torch.float32
    np.testing.assert_allclose(w.double().numpy(), [gamma, 1 - gamma], atol=2e-7)


def test_weights_sum_to_one_to_rounding() -> None:
    for kind in ("random", "low-rank", "duplicated", "collinear"):
        for t in (3, 5, 12):
            for seed in range(3):
                w = min_norm(torch.tensor(gram_of(kind, t, seed, dim=20))).numpy()
                assert abs(w.sum() - 1) <= 4 * np.finfo(np.float64).eps and w.min() >= 0


def test_all_tasks_active_takes_one_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interior shortcut: when the affine minimiser of all T points is on the simplex, one T x T solve."""
    calls = []
    solve = module._affine_minimizer
    monkeypatch.setattr(module, "_affine_minimizer", lambda g: calls.append(len(g)) or solve(g))
    jac = np.eye(40) + 0.05 * np.random.default_rng(40).normal(size=(40, 40))  # nearly orthonormal: weights near 1/40
    w = min_norm(torch.tensor(jac @ jac.T)).numpy()
    assert calls == [40] and w.min() > 0
    calls.clear()
    min_norm(torch.tensor(TRIANGLE))  # not interior: the shortcut's one solve, then Wolfe's corrals
    assert calls[0] == 3 and len(calls) > 1


def test_finite_zeroes_every_non_finite_entry() -> None:
    gram = torch.tensor([[math.nan, math.inf, 2.0], [-math.inf, 1.0, -3.0], [2.0, -3.0, 5.0]], dtype=torch.float64)
    expected = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, -3.0], [2.0, -3.0, 5.0]], dtype=torch.float64)
    assert torch.equal(finite(gram), expected)
