"""PCGrad (Yu et al. 2020) against its definition, and against TorchJD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlcli.methods import build
from mtlcli.methods.pcgrad import pcgrad_coefficients, pcgrad_weights
from tests.unit.methods.matrices import SCALES


def projected(jac: np.ndarray, orders: list[list[int]]) -> np.ndarray:
    coeffs = pcgrad_coefficients(torch.tensor(jac @ jac.T), orders).numpy()
    return coeffs @ jac


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("seed", range(4))
def test_conflicting_pair_is_projected_onto_each_others_normal_plane(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    g1 = rng.normal(size=20)
    g2 = -0.5 * g1 + rng.normal(size=20) * 0.3  # conflicting: g1 . g2 < 0
    jac = np.stack([g1, g2 * 7]) * scale
    assert jac[0] @ jac[1] < 0
    pc = projected(jac, [[1], [0]])
    tol = 1e-10 * np.linalg.norm(jac, axis=1).prod()
    assert abs(pc[0] @ jac[1]) < tol and abs(pc[1] @ jac[0]) < tol
    # the projection removes exactly the conflicting component
    np.testing.assert_allclose(pc[0], jac[0] - (jac[0] @ jac[1]) / (jac[1] @ jac[1]) * jac[1], rtol=1e-10)


def test_non_conflicting_gradients_pass_unchanged() -> None:
    rng = np.random.default_rng(0)
    jac = np.abs(rng.normal(size=(4, 10)))  # positive entries: every pair has a positive inner product
    orders = [list(range(4))] * 4
    np.testing.assert_array_equal(projected(jac, orders), jac)
    np.testing.assert_array_equal(pcgrad_weights(torch.tensor(jac @ jac.T), orders).numpy(), np.ones(4))


@pytest.mark.parametrize("t", [2, 3, 5, 8])
@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_torchjd_given_the_same_random_orders(t: int, seed: int) -> None:
    from torchjd.aggregation import PCGradWeighting

    jac = np.random.default_rng(seed).normal(size=(t, 6))  # dim < t for t = 8: many conflicts
    gram = torch.tensor(jac @ jac.T)
    torch.manual_seed(seed)
    theirs = PCGradWeighting()(gram)
    torch.manual_seed(seed)  # TorchJD draws torch.randperm(T) once per task, in task order
    orders = [torch.randperm(t).tolist() for _ in range(t)]
    torch.testing.assert_close(pcgrad_weights(gram, orders), theirs, rtol=1e-10, atol=1e-12)


def test_random_orders_are_seeded_and_checkpointed() -> None:
    a, b = build("pcgrad"), build("pcgrad")
    torch.manual_seed(123)
    a.setup(5, torch.device("cpu"))
    b.setup(5, torch.device("cpu"))
    assert a.orders(5) == b.orders(5)
    state = a.state_dict()
    first = a.orders(5)
    a.load_state_dict(state)
    assert a.orders(5) == first
    assert all(sorted(o) == list(range(5)) for o in first)
