"""min_norm against brute force (T=2) and an exact enumeration of supports (small T)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mtlcli.methods.min_norm import min_norm


def exact_reference(gram: np.ndarray) -> float:
    """min w^T G w on the simplex by enumerating supports and their affine minimisers."""
    t = len(gram)
    best = float(np.min(np.diag(gram)))
    for r in range(2, t + 1):
        for support in itertools.combinations(range(t), r):
            idx = list(support)
            kkt = np.zeros((r + 1, r + 1))
            kkt[:r, :r] = gram[np.ix_(idx, idx)]
            kkt[:r, r] = kkt[r, :r] = 1.0
            rhs = np.zeros(r + 1)
            rhs[r] = 1.0
            u = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:r]
            if np.all(u >= 0) and abs(u.sum() - 1) < 1e-9:
                best = min(best, float(u @ gram[np.ix_(idx, idx)] @ u))
    return best


def random_gram(rng: np.random.Generator, t: int, dim: int, scale: float) -> np.ndarray:
    jac = rng.normal(size=(t, dim)) * scale
    return jac @ jac.T


def assert_on_simplex(w: torch.Tensor, tol: float = 1e-9) -> None:
    assert torch.all(w >= 0)
    assert abs(float(w.sum()) - 1.0) < tol


@pytest.mark.parametrize("seed", range(5))
def test_two_tasks_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gram = random_gram(rng, 2, 7, 10.0 ** rng.uniform(-4, 4))
    gammas = np.linspace(0, 1, 200001)
    values = gammas**2 * gram[0, 0] + 2 * gammas * (1 - gammas) * gram[0, 1] + (1 - gammas) ** 2 * gram[1, 1]
    for solver in ("min-norm-point", "frank-wolfe", "projected-gradient"):
        w = min_norm(torch.tensor(gram), solver=solver)
        assert_on_simplex(w)
        value = float(w @ torch.tensor(gram) @ w)
        assert value <= values.min() * (1 + 1e-6) + 1e-12 * gram.max()
        assert abs(float(w[0]) - gammas[values.argmin()]) < 1e-4


@pytest.mark.parametrize("t", [3, 4, 5, 6])
@pytest.mark.parametrize("seed", range(4))
def test_small_t_matches_exact_reference(t: int, seed: int) -> None:
    rng = np.random.default_rng(100 * t + seed)
    dim = int(rng.integers(1, 2 * t))  # includes rank-deficient cases (dim < t)
    gram = random_gram(rng, t, dim, 10.0 ** rng.uniform(-6, 6))
    w = min_norm(torch.tensor(gram))
    assert_on_simplex(w)
    value = float(w @ torch.tensor(gram) @ w)
    reference = exact_reference(gram)
    assert value <= reference + 1e-6 * abs(reference) + 1e-12 * np.max(np.diag(gram))


def test_zero_gradients_and_single_task() -> None:
    assert min_norm(torch.zeros(3, 3)).tolist() == pytest.approx([1 / 3] * 3)
    assert min_norm(torch.tensor([[4.0]])).tolist() == [1.0]
    with pytest.raises(ValueError, match="square"):
        min_norm(torch.zeros(2, 3))


def test_frank_wolfe_stays_on_device_dtype() -> None:
    gram = torch.tensor(random_gram(np.random.default_rng(0), 4, 6, 1.0), dtype=torch.float32)
    w = min_norm(gram, solver="frank-wolfe")
    assert w.dtype == torch.float32 and w.device == gram.device
    assert_on_simplex(w.double(), tol=1e-6)


def kkt_gap(gram: np.ndarray, w: np.ndarray) -> float:
    """w^T G w - min_j (G w)_j: zero exactly at the simplex optimum (relative to w^T G w)."""
    gw = gram @ w
    return float((w @ gw - gw.min()) / (w @ gw))


@pytest.mark.parametrize("interior", [True, False], ids=["all-tasks-active", "some-tasks-dropped"])
def test_forty_tasks_shortcut_and_corral_agree(monkeypatch: pytest.MonkeyPatch, interior: bool) -> None:
    """At T = 40 the interior shortcut (one solve when every task stays active) gives Wolfe's optimum."""
    import importlib

    module = importlib.import_module("mtlcli.methods.min_norm")

    rng = np.random.default_rng(40)
    common = rng.normal(size=(1, 300)) * (0.0 if interior else 1.5)  # a shared direction drops tasks
    jac = rng.normal(size=(40, 300)) + common + rng.normal(size=(40, 1)) * common
    gram = jac @ jac.T
    fast = min_norm(torch.tensor(gram)).numpy()
    monkeypatch.setattr(module, "_interior_optimum", lambda g, tol: None)
    corral = min_norm(torch.tensor(gram)).numpy()
    assert np.allclose(fast, corral, atol=1e-9)
    assert kkt_gap(gram, fast) < 1e-9 and fast.min() >= 0 and abs(fast.sum() - 1) < 1e-12
    assert (int((fast > 0).sum()) == 40) == interior


@pytest.mark.parametrize("solver", ["min-norm-point", "frank-wolfe", "projected-gradient"])
def test_a_non_finite_gradient_gives_nan_for_its_task_not_uniform_weights(solver: str) -> None:
    jac = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    jac[1, 0] = math.nan
    w = min_norm(jac @ jac.T, solver=solver)
    assert torch.isnan(w[1]) and w[0] == 0 and w[2] == 0
    inf_off_diagonal = torch.tensor([[1.0, math.inf], [math.inf, 1.0]], dtype=torch.float64)
    assert torch.isnan(min_norm(inf_off_diagonal, solver=solver)).all()  # which task: unknown, so every one
