"""IMTL-G and the unconstrained min-norm point against their definitions (IMTL paper §3.1, C.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlcli.methods import build
from mtlcli.methods._closed_form import imtl_g_weights
from mtlcli.methods.min_norm import min_norm
from tests.unit.methods.matrices import SCALES, jacobian

GRAM_METHODS = ["imtl-g", "imtl-g-exact", "imtl"]


def imtl_g(jac: np.ndarray, method: str = "imtl-g") -> np.ndarray:
    m = build(method)
    return m.weights(torch.ones(len(jac), dtype=torch.float64), torch.tensor(jac @ jac.T)).numpy()


def unconstrained(jac: np.ndarray) -> np.ndarray:
    return build("mgda-unconstrained").weights(torch.ones(len(jac), dtype=torch.float64), torch.tensor(jac @ jac.T)).numpy()


@pytest.mark.parametrize("method", GRAM_METHODS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_imtl_g_projections_on_unit_gradients_are_equal(t: int, scale: float, method: str) -> None:
    jac = jacobian("random", t, seed=t, scale=scale)
    alpha = imtl_g(jac, method)
    assert abs(alpha.sum() - 1) < 1e-9
    g = alpha @ jac
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    projections = units @ g
    np.testing.assert_allclose(projections, projections[0], rtol=1e-7)
    assert projections[0] > 0  # g is a descent direction for every task


@pytest.mark.parametrize("kind", ["duplicated", "collinear"])
def test_imtl_g_is_finite_and_balanced_when_d_u_is_singular(kind: str) -> None:
    jac = jacobian(kind, 6, seed=2)
    alpha = imtl_g(jac)
    assert np.all(np.isfinite(alpha)) and abs(alpha.sum() - 1) < 1e-9
    projections = (jac / np.linalg.norm(jac, axis=1, keepdims=True)) @ (alpha @ jac)
    np.testing.assert_allclose(projections, projections[0], rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_imtl_g_is_scale_invariant(seed: int) -> None:
    """IMTL Theorem 2: scaling the losses by k_t > 0 changes the aggregated gradient by a positive factor."""
    rng = np.random.default_rng(seed)
    jac = jacobian("random", 4, seed=seed)
    k = 10.0 ** rng.uniform(-6, 6, size=4)
    g = imtl_g(jac) @ jac
    g_scaled = imtl_g(k[:, None] * jac) @ (k[:, None] * jac)
    ratio = (g_scaled @ g) / (g @ g)
    assert ratio > 0
    np.testing.assert_allclose(g_scaled, ratio * g, rtol=1e-6, atol=1e-9 * np.linalg.norm(g_scaled))


@pytest.mark.parametrize("t", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_agrees_with_torchjd(t: int, seed: int) -> None:
    from torchjd.aggregation import IMTLGWeighting

    jac = jacobian("random", t, seed=seed, dim=20)
    theirs = IMTLGWeighting()(torch.tensor(jac @ jac.T)).numpy()
    np.testing.assert_allclose(imtl_g(jac), theirs, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_unconstrained_point_is_orthogonal_to_the_affine_hull(t: int, scale: float) -> None:
    jac = jacobian("random", t, seed=t + 1, scale=scale)
    alpha = unconstrained(jac)
    assert abs(alpha.sum() - 1) < 1e-9
    g = alpha @ jac
    # g . (g_1 - g_t) = 0 for every t, relative to the scale of the products
    np.testing.assert_allclose(jac[0] @ g - jac @ g, 0, atol=1e-7 * np.linalg.norm(jac, axis=1).max() * np.linalg.norm(g))


def test_unconstrained_point_is_the_affine_minimum() -> None:
    """Among sum(alpha) = 1 nothing is shorter: compare with a brute-force least squares."""
    jac = jacobian("random", 5, seed=9)
    alpha = unconstrained(jac)
    # minimise ||g_1 + sum_{t>1} beta_t (g_t - g_1)||: ordinary least squares
    beta = np.linalg.lstsq((jac[1:] - jac[0]).T, -jac[0], rcond=None)[0]
    np.testing.assert_allclose(alpha, np.concatenate([[1 - beta.sum()], beta]), atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t", [2, 3, 6])
def test_unconstrained_equals_mgda_when_mgda_is_interior(t: int, seed: int) -> None:
    """g_t = d + s_t e_t with e_t orthonormal and orthogonal to d: the min-norm point d + sum alpha_t s_t e_t
    has alpha_t proportional to 1/s_t^2 > 0, inside the simplex, so the constraint alpha >= 0 is inactive."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(30, t + 1)))
    d, e = basis[:, 0] * rng.uniform(0.1, 3), basis[:, 1:].T
    jac = d + rng.uniform(0.2, 5, size=(t, 1)) * e
    mgda = min_norm(torch.tensor(jac @ jac.T)).numpy()
    assert np.all(mgda > 1e-3)
    np.testing.assert_allclose(unconstrained(jac), mgda, atol=1e-8)


def test_unconstrained_may_leave_the_simplex_where_mgda_cannot() -> None:
    jac = np.array([[1.0, 0.0], [0.8, 0.1]])  # the affine minimum lies beyond g_2
    alpha = unconstrained(jac)
    assert alpha.min() < 0 and abs(alpha.sum() - 1) < 1e-12
    assert np.all(min_norm(torch.tensor(jac @ jac.T)).numpy() >= 0)


@pytest.mark.parametrize("zero_at", [0, 1, 3])
def test_imtl_g_gives_a_zero_gradient_no_weight_and_balances_the_others(zero_at: int) -> None:
    """A zero gradient has no direction: weight 0, and the others get IMTL-G among themselves."""
    rng = np.random.default_rng(zero_at)
    others = torch.tensor(rng.normal(size=(3, 6)))
    jac = torch.cat([others[:zero_at], torch.zeros(1, 6, dtype=torch.float64), others[zero_at:]])
    alpha = imtl_g_weights(jac @ jac.T)
    assert alpha[zero_at] == 0
    rest = torch.cat([alpha[:zero_at], alpha[zero_at + 1 :]])
    assert torch.allclose(rest, imtl_g_weights(others @ others.T), atol=1e-12)
    d = alpha @ jac  # equal projections onto the unit gradients of the non-zero tasks
    projections = (others @ d) / others.norm(dim=1)
    assert torch.allclose(projections, projections[0].expand(3), rtol=1e-9)


def test_imtl_g_with_every_gradient_zero_is_uniform() -> None:
    assert imtl_g_weights(torch.zeros(4, 4, dtype=torch.float64)).tolist() == [0.25] * 4


def negative_case() -> torch.Tensor:
    """A seeded full-rank 3-task Jacobian (d = 3) whose IMTL-G projections are negative."""
    for seed in range(200):
        jac = torch.tensor(np.random.default_rng(seed).normal(size=(3, 3)))
        alpha = imtl_g_weights(jac @ jac.T)
        if float(((jac @ (alpha @ jac)) / jac.norm(dim=1))[0]) < 0:
            return jac
    raise AssertionError("no negative case among 200 seeds")


def test_imtl_g_counts_the_steps_whose_equal_projections_are_negative() -> None:
    from mtlcli.methods._closed_form import equal_projection

    jac = negative_case()
    gram = jac @ jac.T
    method = build("imtl-g")
    alpha = method.weights(torch.ones(3), gram)
    d = alpha @ jac
    assert torch.all(jac @ d < 0)  # faithful to the paper: this direction raises every loss
    assert float(equal_projection(gram, alpha)) < 0
    positive = torch.eye(3, dtype=torch.float64)
    method.weights(torch.ones(3), positive)
    state = method.state_dict()
    assert method.epoch_stats() == {"negative_projection_steps": 1}
    assert method.epoch_stats() == {"negative_projection_steps": 0}  # reset each epoch
    method.load_state_dict(state)  # resumed mid-epoch: the count carries on
    assert method.epoch_stats() == {"negative_projection_steps": 1}
