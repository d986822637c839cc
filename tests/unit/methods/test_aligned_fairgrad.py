"""Aligned-MTL and FairGrad against their defining properties, TorchJD, and through a training step.

Aligned-MTL: the aligned Jacobian B J has B G B = s^2 P_r (P_r the projector on the retained eigenspace):
all its non-zero singular values equal s (condition number 1), and w = B p.
FairGrad: G w = w^(-1/alpha) with w > 0 (or the ridge system where 0 is in the hull of the gradients).
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
from mtlcli.methods.aligned_mtl import aligned_mtl_weights, balance_transformation
from mtlcli.methods.base import Step
from mtlcli.methods.fairgrad import fairgrad_weights, solve_fairgrad
from mtlcli.methods.min_norm import wolfe_min_norm_point
from mtlcli.models import build_model
from tests.unit.methods.matrices import KINDS, jacobian

SCALES = (1e-6, 1.0, 1e6)
CASES = [(kind, t, scale) for kind in KINDS for t in (2, 3, 5, 10, 40) for scale in SCALES if (kind, t) != ("duplicated", 2)]


# ----------------------------------------------------------------------------------------------- Aligned-MTL


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("kind", "t", "scale"), CASES)
def test_aligned_jacobian_has_equal_singular_values(kind: str, t: int, scale: float, scale_mode: str) -> None:
    jac = jacobian(kind, t, seed=t, scale=scale)
    gram = jac @ jac.T
    b = balance_transformation(gram, scale_mode)
    lam = np.linalg.eigvalsh(gram)
    lam_max = lam.max()
    kept = lam[lam > lam_max * 1e-10]
    s2 = {"min": kept.min(), "median": np.sort(kept)[(len(kept) - 1) // 2], "rmse": kept.mean()}[scale_mode]
    aligned = b @ jac
    sing = np.linalg.svd(aligned, compute_uv=False)
    nonzero = sing[sing > 1e-4 * np.sqrt(s2)]
    assert len(nonzero) == len(kept)
    # B G B = s^2 P_r up to the round-off of G (eps lambda_max, amplified by ||B||^2 = s^2 / lambda_min)
    tol = 1e-9 * lam_max * s2 / kept.min()
    np.testing.assert_allclose(nonzero**2, s2, atol=tol, rtol=1e-8)
    if kind == "random":  # well conditioned: condition number 1 to round-off
        assert nonzero.max() / nonzero.min() <= 1 + 1e-8


@pytest.mark.parametrize(("kind", "t", "scale"), CASES)
def test_aligned_weights_are_b_times_the_preference(kind: str, t: int, scale: float) -> None:
    jac = jacobian(kind, t, seed=t + 1, scale=scale)
    gram = torch.tensor(jac @ jac.T)
    b = balance_transformation(gram.numpy())
    mean = aligned_mtl_weights(gram).numpy()
    np.testing.assert_allclose(mean, b @ np.full(t, 1 / t), rtol=1e-12, atol=0)
    np.testing.assert_allclose(aligned_mtl_weights(gram, reduction="sum").numpy(), t * mean, rtol=1e-12)
    assert np.isfinite(mean).all()


def test_aligned_orthogonal_equal_norm_gradients_give_the_mean() -> None:
    gram = 4.0 * torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(aligned_mtl_weights(gram), torch.full((5,), 0.2, dtype=torch.float64))


def test_aligned_degenerate_gram_matrices_give_the_preference() -> None:
    for gram in (torch.zeros(3, 3), torch.full((3, 3), float("nan")), torch.tensor([[float("inf"), 0.0], [0.0, 1.0]])):
        t = gram.shape[0]
        torch.testing.assert_close(aligned_mtl_weights(gram), torch.full((t,), 1 / t))
    # a zero task gradient gets weight 0 (null space of G)
    gram = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert aligned_mtl_weights(gram)[2] == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [3, 10])
def test_aligned_permutation_equivariance(kind: str, t: int) -> None:
    jac = jacobian(kind, t, seed=5)
    perm = np.random.default_rng(0).permutation(t)
    w = aligned_mtl_weights(torch.tensor(jac @ jac.T)).numpy()
    w_perm = aligned_mtl_weights(torch.tensor(jac[perm] @ jac[perm].T)).numpy()
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-7, atol=1e-9 * np.abs(w).max())


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_aligned_agrees_with_torchjd(t: int, scale_mode: str) -> None:
    """TorchJD's AlignedMTLWeighting: same B and p = 1/T; tolerance T eps of the dtype (ours adds a 1e-10
    floor that does not bind on these well-conditioned or exactly rank-deficient matrices)."""
    from torchjd.aggregation import AlignedMTLWeighting

    grams = [torch.tensor(jacobian("random", t, seed=s, dim=60) @ jacobian("random", t, seed=s, dim=60).T) for s in range(2)]
    grams.append(torch.diag(torch.tensor([4.0, 1.0] + [0.0] * (t - 2), dtype=torch.float64)))
    grams.append(grams[0].float())
    for gram in grams:
        theirs = AlignedMTLWeighting(scale_mode=scale_mode)(gram)
        ours = aligned_mtl_weights(gram, scale_mode)
        # TorchJD's float32 eigendecomposition carries ~T eps32 of rounding that ours (float64 inside) does not
        single = gram.dtype == torch.float32
        grow = max(1.0, t / 4)
        torch.testing.assert_close(ours, theirs, rtol=1e-5 * grow if single else 1e-9, atol=1e-7 * grow)


# ------------------------------------------------------------------------------------------------- FairGrad


def _ridge_used(gram: np.ndarray) -> bool:
    g = gram / gram.diagonal().max()
    hull = wolfe_min_norm_point(g, max_iter=4 * len(g) + 50, tol=1e-12)
    return float(hull @ g @ hull) <= 1e-8


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize(("kind", "t", "scale"), CASES)
def test_fairgrad_solves_its_system(kind: str, t: int, scale: float, alpha: float) -> None:
    jac = jacobian(kind, t, seed=t, scale=scale)
    gram = jac @ jac.T
    w = solve_fairgrad(gram, alpha)
    assert np.all(w > 0) and np.isfinite(w).all()
    if _ridge_used(gram):  # 0 in the hull: no solution; the ridge system is solved instead
        assert kind in ("low-rank", "duplicated", "parallel", "collinear") or t > 60
        gram = gram + 1e-8 * gram.diagonal().max() * np.eye(t)
    power = w ** (-1 / alpha)
    np.testing.assert_array_less(np.abs(gram @ w - power), 1e-10 * (np.abs(gram) @ w + power))


@pytest.mark.parametrize("t", [2, 3, 5, 10, 40])
def test_fairgrad_random_full_rank_needs_no_ridge(t: int) -> None:
    jac = jacobian("random", t, seed=t)
    assert not _ridge_used(jac @ jac.T)


def test_fairgrad_special_cases() -> None:
    # alpha = 0: linear scalarisation, the mean
    gram = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(fairgrad_weights(gram, 0.0), torch.full((2,), 0.5, dtype=torch.float64))
    # orthogonal gradients: ||g_i||^2 w_i = w_i^(-1/alpha), w_i = ||g_i||^(-2 alpha / (alpha + 1))
    norms2 = np.array([0.25, 1.0, 9.0])
    for alpha in (0.5, 1.0, 2.0, 10.0):
        np.testing.assert_allclose(solve_fairgrad(np.diag(norms2), alpha), norms2 ** (-alpha / (alpha + 1)), rtol=1e-12)
    # alpha = 1, proportional fairness: every task's rate g_i . d = 1 / w_i, so w_i g_i . d = 1 (Nash-MTL's condition)
    jac = jacobian("random", 6, seed=3)
    w = solve_fairgrad(jac @ jac.T, 1.0)
    np.testing.assert_allclose(w * (jac @ (w @ jac)), 1.0, rtol=1e-10)
    # large alpha approaches max-min fairness: the rates g_i . d equalise
    rates = jac @ (solve_fairgrad(jac @ jac.T, 200.0) @ jac)
    assert rates.max() / rates.min() < 1.05


def test_fairgrad_scaling_law_and_degenerate_grams() -> None:
    jac = jacobian("random", 4, seed=1)
    for alpha in (0.5, 1.0, 3.0):
        w = solve_fairgrad(jac @ jac.T, alpha)
        np.testing.assert_allclose(solve_fairgrad(1e6 * jac @ jac.T, alpha), w * 1e6 ** (-alpha / (alpha + 1)), rtol=1e-10)
    for gram in (torch.zeros(3, 3), torch.full((3, 3), float("nan"))):
        torch.testing.assert_close(fairgrad_weights(gram), torch.full((3,), 1 / 3))
    # a zero task gradient: no solution; ridge keeps the weights finite and the update that of the others
    jac = np.vstack([jacobian("random", 2, seed=2), np.zeros((1, 60))])
    w = solve_fairgrad(jac @ jac.T, 1.0)
    assert np.isfinite(w).all() and np.all(w > 0)
    np.testing.assert_allclose(w[:2] @ jac[:2], solve_fairgrad(jac[:2] @ jac[:2].T, 1.0) @ jac[:2], rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [3, 10])
def test_fairgrad_permutation_equivariance(kind: str, t: int) -> None:
    jac = jacobian(kind, t, seed=7)
    perm = np.random.default_rng(1).permutation(t)
    w = solve_fairgrad(jac @ jac.T, 2.0)
    np.testing.assert_allclose(solve_fairgrad(jac[perm] @ jac[perm].T, 2.0), w[perm], rtol=1e-6)  # ridge: cond ~1e8


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("t", [2, 3, 5, 10])
def test_fairgrad_agrees_with_torchjd(t: int, alpha: float) -> None:
    """TorchJD's FairGradWeighting (scipy least_squares from 1/T, as the authors) finds the same root."""
    pytest.importorskip("scipy")
    from torchjd.aggregation import FairGradWeighting

    for seed in range(2):
        jac = jacobian("random", t, seed=seed)
        gram = torch.tensor(jac @ jac.T / np.max(np.sum(jac * jac, axis=1)))
        theirs = FairGradWeighting(alpha)(gram)
        ours = fairgrad_weights(gram, alpha)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------- both methods


def test_options_defaults_and_validation() -> None:
    a = build("aligned-mtl")
    assert (a.options.scale_mode, a.options.reduction, a.options.level, a.options.head_grads) == (
        "min",
        "sum",
        "shared",
        "raw",
    )
    assert repr(a) == "AlignedMtl(scale_mode='min', reduction='sum', level='shared', grads='loop', head_grads='raw')"
    f = build("fairgrad")
    assert (f.options.alpha, f.options.level, f.options.head_grads) == (1.0, "shared", "raw")
    assert repr(f) == "FairGrad(alpha=1.0, level='shared', grads='loop', head_grads='raw')"
    assert "grads='batched'" in repr(build("fairgrad", level="shared", grads="batched"))
    with pytest.raises(MtlError, match="grads: applies only at level shared"):
        build("aligned-mtl", level="representation", grads="batched")
    with pytest.raises(MtlError, match="scale_mode"):
        build("aligned-mtl", scale_mode="max")
    with pytest.raises(MtlError, match="alpha"):
        build("fairgrad", alpha=-1.0)


def _tiny_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        encoder="multilenet", num_classes={"left": 10, "right": 10}, input_shape=(1, 28, 28), options={"dropout": 0.0}
    )
    return model, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8, 2))


def _losses(model, x, y):
    z, out = model(x)
    return z, [F.cross_entropy(out["left"], y[:, 0]), F.cross_entropy(out["right"], y[:, 1])]


@pytest.mark.parametrize("name", ["aligned-mtl", "fairgrad"])
@pytest.mark.parametrize(("level", "grads"), [("representation", None), ("shared", "batched")])
def test_step_gives_the_shared_parameters_the_weighted_gradient(name: str, level: str, grads: str | None) -> None:
    model, x, y = _tiny_batch()
    options = {"level": level, **({"grads": grads} if grads else {})}
    method = build(name, **options)
    z, losses = _losses(model, x, y)
    w = method.backward(Step.of(model, z, losses))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    z, losses = _losses(model, x, y)
    params = dict(model.named_parameters())
    wrt = [z] if level == "representation" else model.shared_parameters()
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, wrt, retain_graph=True)]) for loss in losses]
    jac = torch.stack(rows).double()
    torch.testing.assert_close(w, method.weights(torch.stack(losses), jac @ jac.T).to(w.dtype), rtol=1e-4, atol=1e-6)
    per_task = [torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True) for loss in losses]
    for i, (n, p) in enumerate(params.items()):
        g = [per_task[t][i] if per_task[t][i] is not None else torch.zeros_like(p) for t in range(2)]
        expected = g[0] + g[1] if n.startswith("heads.") else w[0] * g[0] + w[1] * g[1]
        torch.testing.assert_close(got[n], expected, rtol=1e-4, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ["aligned-mtl", "fairgrad"])
def test_shared_level_trains_through_the_cli(name: str, tiny_recipe, write_recipe) -> None:
    from mtlcli.cli import app

    recipe = write_recipe(tiny_recipe)
    args = ["train", str(recipe), "--method", name, "-q", "--set", "method.level=shared"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["method"] == name
    assert summary["method_options"]["level"] == "shared"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(list(m["alphas"].values())).all() for m in metrics)
