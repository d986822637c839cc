"""MoDo's and SDMGrad's default updates equal their authors' code, transcribed below (issue 16, item 4).

The side-by-side run of tests/unit/methods/test_conformance.py (`assert_same_updates`: the float64 small model, tasks
at x0.1, x1 and x10, SGD, parameters equal to 1e-6 after each step), over 2 x 5 steps. `mtl` takes its two samples
as the two halves of each batch of 16 (rows 0-7 and 8-15); the transcriptions take the same halves by their own
forward passes on x[:8] and x[8:].

- MoDo: heshandevaka/Trade-Off-MOL, LibMTL/LibMTL/weighting/MoDo.py `MoDo.backward` (commit a1799ed), with
  `_get_grads(mode='backward')`, `_backward_new_grads` and `_reset_grad` of LibMTL/LibMTL/weighting/abstract_weighting.py
  and gamma_modo 0.1, rho_modo 0.1 of LibMTL/LibMTL/config.py: per sample, each task's backward (the heads accumulate
  theirs), its shared gradient kept and the shared gradients zeroed; lambda <- P(lambda - gamma (G_1 (G_2^T lambda) +
  rho lambda)) with the authors' `_projection2simplex`; the shared gradient sum_t lambda_t (g_t^1 + g_t^2). The
  authors leave the mean of the two samples to the learning rate ("handle avging via lr of x"): the transcription
  halves every gradient, which is the paper's update and `mtl`'s.
- SDMGrad: OptMN-Lab/sdmgrad, methods/weight_methods.py `SDMGrad` (commit 8333f9e) with lamda 0.3, niter 20
  (experiments/nyuv2/run.sh) and max_norm 1.0 (experiments/utils.py): `sdmgrad` (normalisation by
  mean(sqrt(diag + 1e-4))^2, 20 steps of SGD(lr=10, momentum=0.5) each followed by the NumPy `euclidean_proj_simplex`,
  w kept across steps, update (zeta w + lamda mean(zeta)) / (1 + lamda)), `overwrite_grad` (x n_tasks) and
  `clip_grad_norm_(shared_parameters, 1.0)`. zeta is the whole batch, xi and xi' its halves. Two changes, both in
  the module docstring of mtlcli/methods/sdmgrad.py: the three samples are distinct tensors (the authors'
  `[torch.Tensor(...)] * 3` makes them one), and the heads keep zeta's gradients only (the authors' backward passes
  of xi and xi' add theirs); the diagonal is clamped at 0 before the square root (a no-op wherever the authors'
  formula is defined).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlcli.methods import build
from tests.unit.methods.test_conformance import TASKS, assert_same_updates, batches, task_losses

pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)
HALF = 8  # the batches hold 16 rows


def _half(x: torch.Tensor, y: dict[str, torch.Tensor], rows: slice) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    return x[rows], {t: v[rows] for t, v in y.items()}


def _columns(shared: list[torch.nn.Parameter], losses: list[torch.Tensor], *, keep_heads: bool = True) -> torch.Tensor:
    """Per task its shared gradient as a row [T, P]; with `keep_heads` by `backward` (the heads accumulate theirs,
    the shared gradients are zeroed after each), else by `autograd.grad` on the shared parameters alone."""
    rows = []
    for loss in losses:
        if keep_heads:
            loss.backward(retain_graph=True)
            rows.append(torch.cat([p.grad.reshape(-1).clone() for p in shared]))
            for p in shared:
                p.grad.zero_()
        else:
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]))
    return torch.stack(rows)


def _set_shared(shared: list[torch.nn.Parameter], update: torch.Tensor) -> None:
    offset = 0
    for p in shared:
        p.grad = update[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


class AuthorsMoDo:
    """The authors' MoDo step (module docstring), every gradient halved."""

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        self.gamma, self.rho, self.lambd = gamma, rho, torch.ones(len(TASKS)) / len(TASKS)

    @staticmethod
    def projection2simplex(y: torch.Tensor) -> torch.Tensor:
        m = len(y)
        sorted_y = torch.sort(y, descending=True)[0]
        tmpsum = 0.0
        tmax_f = (torch.sum(y) - 1.0) / m
        for i in range(m - 1):
            tmpsum += sorted_y[i]
            tmax = (tmpsum - 1) / (i + 1.0)
            if tmax > sorted_y[i + 1]:
                tmax_f = tmax
                break
        return torch.max(y - tmax_f, torch.zeros(m))

    def __call__(self, model, x, y) -> None:
        shared = list(model.encoder.parameters())
        for p in shared:
            p.grad = torch.zeros_like(p)
        grads = []
        for rows in (slice(0, HALF), slice(HALF, None)):
            _, losses = task_losses(model, *_half(x, y, rows))
            grads.append(_columns(shared, losses))
        grads = torch.stack(grads)
        self.lambd = self.projection2simplex(
            self.lambd - self.gamma * (grads[0] @ (torch.transpose(grads[1], 0, 1) @ self.lambd) + self.rho * self.lambd)
        )
        summed = torch.sum(grads, dim=0)
        _set_shared(shared, sum(self.lambd[i] * summed[i] for i in range(len(TASKS))))
        for p in model.parameters():  # the mean of the two samples, which the authors leave to the learning rate
            p.grad /= 2


class AuthorsSDMGrad:
    """The authors' SDMGrad step (module docstring): zeta the batch, xi and xi' its halves."""

    def __init__(self, lamda: float = 0.3, niter: int = 20, max_norm: float = 1.0) -> None:
        self.lamda, self.niter, self.max_norm = lamda, niter, max_norm
        self.w = 1 / len(TASKS) * torch.ones(len(TASKS))

    @staticmethod
    def euclidean_proj_simplex(v: np.ndarray, s: float = 1) -> np.ndarray:
        v = v.astype(np.float64)
        (n,) = v.shape
        if v.sum() == s and np.all(v >= 0):
            return v
        u = np.sort(v)[::-1]
        cssv = np.cumsum(u)
        rho = np.nonzero(u * np.arange(1, n + 1) > (cssv - s))[0][-1]
        theta = float(cssv[rho] - s) / (rho + 1)
        return (v - theta).clip(min=0)

    def sdmgrad(self, w: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
        zeta_grads, xi_grads1, xi_grads2 = grads  # [P, T] each
        gg = torch.mm(xi_grads1.t(), xi_grads2)
        scale = torch.mean(torch.sqrt(torch.diag(gg).clamp(min=0) + 1e-4))
        gg = gg / scale.pow(2)
        gg_mean = torch.mean(gg, dim=1)
        w.requires_grad = True
        optimizer = torch.optim.SGD([w], lr=10, momentum=0.5)
        for _ in range(self.niter):
            optimizer.zero_grad()
            w.grad = torch.mv(gg, w.detach()) + self.lamda * gg_mean
            optimizer.step()
            proj = self.euclidean_proj_simplex(w.data.cpu().numpy())
            w.data.copy_(torch.from_numpy(proj).data)
        w.requires_grad = False
        g0 = torch.mean(zeta_grads, dim=1)
        gw = torch.sum(zeta_grads * w, dim=1)
        return (gw + self.lamda * g0) / (1 + self.lamda)

    def __call__(self, model, x, y) -> None:
        shared = list(model.encoder.parameters())
        for p in shared:
            p.grad = torch.zeros_like(p)
        _, losses = task_losses(model, x, y)
        grads = [_columns(shared, losses).T]  # zeta: the heads keep its gradients
        for rows in (slice(0, HALF), slice(HALF, None)):
            _, losses = task_losses(model, *_half(x, y, rows))
            grads.append(_columns(shared, losses, keep_heads=False).T)
        g = self.sdmgrad(self.w, grads)
        _set_shared(shared, g * len(TASKS))  # overwrite_grad: "to match the sum loss"
        torch.nn.utils.clip_grad_norm_(shared, self.max_norm)


def test_modo_is_the_authors_update() -> None:
    assert assert_same_updates(build("modo"), AuthorsMoDo(), batches() + batches(seed=2)) > 1e-3


def test_sdmgrad_is_the_authors_update() -> None:
    assert assert_same_updates(build("sdmgrad"), AuthorsSDMGrad(), batches() + batches(seed=2)) > 1e-3


