"""PCGrad, gradient surgery (Yu et al., NeurIPS 2020, Algorithm 1), on the shared parameters.

For every task i, in a random order of the other tasks j: if g_i^PC . g_j < 0, project g_i^PC onto
the normal plane of g_j (g_i^PC -= (g_i^PC . g_j)/||g_j||^2 g_j). The shared parameters get
sum_i g_i^PC; heads get their own raw gradients. Each g_i^PC is kept as coefficients on the g_k, so
the surgery is T x T arithmetic on the Gram matrix, on the device (no host sync). The random orders
come from a CPU generator seeded with the run's seed at `setup`; its state is checkpointed.

The default update is LibMTL's (median-research-group/LibMTL, commit 4336804, LibMTL/weighting/PCGrad.py)
and TorchJD's (`PCGrad`) given the same orders (tests/unit/methods/test_conformance_libmtl.py). LibMTL and
the authors' code shuffle all T tasks, i itself included, and so would also project g_i^PC off g_i if
g_i^PC . g_i < 0 (possible only after several projections); as the paper's Algorithm 1 and TorchJD,
`mtl` skips j = i. LibMTL also adds 1e-8 to ||g_j||^2, which `mtl` leaves out (scale-free).

On N processes (torchrun) it is the same algorithm: J is summed across the ranks before its Gram matrix
(`batch_shared_grads`), and every rank draws the same orders from the same seed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._seeded import SeededRandom
from mtlcli.methods._shared_params import apply_shared_update, batch_shared_grads
from mtlcli.methods.base import Step
from mtlcli.methods.options import PcGradOptions


def pcgrad_coefficients(gram: Tensor, orders: list[list[int]]) -> Tensor:
    """C [T, T] with g_i^PC = sum_k C[i, k] g_k, projecting in `orders[i]` (other tasks' indices)."""
    t = gram.shape[0]
    tiny = torch.finfo(gram.dtype).tiny
    coefficients = torch.eye(t, dtype=gram.dtype, device=gram.device)
    if t < 2:
        return coefficients
    # Row i only reads and writes row i, so the T tasks advance together: step k projects every task on
    # the k-th task of its own order (T - 1 steps of T-wide tensor ops instead of T (T - 1) scalar ones).
    partners = torch.tensor([[j for j in order if j != i] for i, order in enumerate(orders)], device=gram.device)
    rows = torch.arange(t, device=gram.device)
    for k in range(partners.shape[1]):
        j = partners[:, k]
        inner = (coefficients * gram[:, j].T).sum(dim=1)  # g_i^PC . g_j
        coefficients[rows, j] -= torch.where(inner < 0, inner / gram[j, j].clamp_min(tiny), torch.zeros_like(inner))
    return coefficients


def pcgrad_weights(gram: Tensor, orders: list[list[int]]) -> Tensor:
    """Weights w with sum_i g_i^PC = sum_k w_k g_k."""
    return pcgrad_coefficients(gram, orders).sum(dim=0)


class PcGrad(SeededRandom):
    """Project conflicting task gradients on each other's normal planes, then sum."""

    name: ClassVar[str] = "pcgrad"

    def __init__(self, options: PcGradOptions | None = None) -> None:
        super().__init__()
        self.options = options or PcGradOptions()

    def __repr__(self) -> str:
        return f"PcGrad(grads={self.options.grads!r})"

    def orders(self, num_tasks: int) -> list[list[int]]:
        return [torch.randperm(num_tasks, generator=self.generator).tolist() for _ in range(num_tasks)]

    def backward(self, step: Step) -> Tensor:
        grads = batch_shared_grads(step, self.options.grads)
        weights = pcgrad_weights(grads.gram(), self.orders(step.num_tasks))
        apply_shared_update(step, grads, weights, head_weights=None)
        return weights.detach()
