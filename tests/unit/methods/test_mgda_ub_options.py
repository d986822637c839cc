"""MGDA-UB's options reach its weights: `solver`, `max_iter`, `tol` and `normalization`, each checked against an
independent computation (hand-made Gram matrices, Algorithm 2 re-run in numpy). Every option is passed explicitly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mtlcli.methods.mgda_ub import MgdaUb, min_norm_weights
from mtlcli.methods.options import MgdaOptions
from tests.unit.methods.linear_tasks import LinearTasks
from tests.unit.methods.test_min_norm_definition import (
    FOUR,
    TRIANGLE,
    authors_projected_gradient,
    gram_of,
    paper_frank_wolfe,
)

EXACT = {"normalization": "none", "solver": "min-norm-point", "max_iter": 250, "tol": 1e-10, "head_grads": "weighted"}


def options(**changes) -> MgdaOptions:
    return MgdaOptions(**{**EXACT, **changes})


def weights(gram: np.ndarray, losses: np.ndarray | None = None, **changes) -> np.ndarray:
    losses = np.ones(len(gram)) if losses is None else losses
    return MgdaUb(options(**changes)).weights(torch.tensor(losses), torch.tensor(gram)).numpy()


def test_tol_is_wolfes_relative_gap() -> None:
    np.testing.assert_allclose(weights(TRIANGLE), [0, 0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(weights(TRIANGLE, tol=0.5), [1, 0, 0], atol=1e-12)  # the first vertex's gap is 1/2


def test_max_iter_bounds_wolfes_major_iterations() -> None:
    gram = FOUR @ FOUR.T
    np.testing.assert_allclose(weights(gram, max_iter=1), [2 / 3, 1 / 3, 0, 0], atol=1e-12)
    np.testing.assert_allclose(weights(gram, max_iter=2), [4 / 7, 2 / 7, 1 / 7, 0], atol=1e-12)


@pytest.mark.parametrize(("max_iter", "tol"), [(1, 1e-12), (4, 1e-12), (250, 0.05)])
def test_the_paper_and_the_authors_solvers(max_iter: int, tol: float) -> None:
    gram = gram_of("random", 5, 21)
    got = weights(gram, solver="frank-wolfe", max_iter=max_iter, tol=tol)
    np.testing.assert_allclose(got, paper_frank_wolfe(gram, max_iter, tol), atol=1e-10)
    got = weights(gram, solver="projected-gradient", max_iter=max_iter, tol=tol)
    np.testing.assert_allclose(got, authors_projected_gradient(gram, max_iter, tol), atol=1e-10)


def test_normalisation_by_hand() -> None:
    # orthogonal gradients of norms 1, 2 and 4, losses 4, 1 and 1
    gram = np.diag([1.0, 4.0, 16.0])
    losses = np.array([4.0, 1.0, 1.0])
    np.testing.assert_allclose(weights(gram, losses), np.array([16, 4, 1]) / 21, atol=1e-12)  # prop. to 1 / |g|^2
    np.testing.assert_allclose(weights(gram, losses, normalization="l2"), [1 / 3] * 3, atol=1e-12)  # unit vectors
    # g_t / L_t: squared norms 1/16, 4 and 16 -> weights prop. to 16, 1/4, 1/16
    np.testing.assert_allclose(weights(gram, losses, normalization="loss"), np.array([256, 4, 1]) / 261, atol=1e-12)
    # g_t / (L_t |g_t|): squared norms 1/16, 1, 1 -> prop. to 16, 1, 1
    np.testing.assert_allclose(weights(gram, losses, normalization="loss+"), np.array([16, 1, 1]) / 18, atol=1e-12)
    got = min_norm_weights(torch.tensor(losses), torch.tensor(gram), options(normalization="l2"))
    np.testing.assert_allclose(got.numpy(), [1 / 3] * 3, atol=1e-12)


def test_the_options_are_the_ones_given() -> None:
    chosen = options(normalization="loss+", solver="frank-wolfe", head_grads="raw")
    method = MgdaUb(chosen)
    assert method.options is chosen
    assert repr(method) == "MgdaUb(normalization='loss+', solver='frank-wolfe', head_grads='raw')"
    assert isinstance(MgdaUb().options, MgdaOptions)
    assert MgdaUb.name == "mgda-ub"


@pytest.mark.parametrize("bad", [{"max_iter": 0}, {"max_iter": -3}, {"tol": 0.0}, {"tol": -1e-3}, {"solver": "simplex"}])
def test_options_out_of_range_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        options(**bad)


@pytest.mark.parametrize("head_grads", ["weighted", "raw"])
def test_backward_follows_head_grads_and_returns_the_weights(head_grads: str) -> None:
    tasks = LinearTasks(11)
    want = tasks.closed_form()
    method = MgdaUb(options(head_grads=head_grads, normalization="l2"))
    alpha = method.backward(tasks.step())
    norms = want.gram_z().diagonal().sqrt()
    unit = want.z / norms[:, None]
    expected = MgdaUb(options(normalization="none")).weights(want.losses, unit @ unit.T)
    torch.testing.assert_close(alpha, expected, rtol=1e-10, atol=1e-12)
    assert abs(float(alpha.sum()) - 1) < 1e-12 and not alpha.requires_grad
    for t in range(3):
        scale = alpha[t] if head_grads == "weighted" else 1.0
        torch.testing.assert_close(tasks.head(t).bias.grad, scale * want.bias[t], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        tasks.model.encoder.weight.grad, torch.einsum("t,tij->ij", alpha, want.encoder), rtol=1e-10, atol=1e-12
    )
    assert not math.isnan(float(alpha.sum()))
