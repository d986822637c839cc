"""GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020, Algorithm 1, lines 10-15).

At the shared representation z (the activation layer the method is inserted at), with g_t = dL_t/dz
(batch kept, [T, B, features...]), by default (`mask: feature`, the paper's treatment of a batch and LibMTL's
`GradDrop.py`, median-research-group/LibMTL) the purity is per feature of z, from the batch sums
s_t = sum_b sign(z_b) g_{t,b}:

    P = (1 + sum_t s_t / sum_t |s_t|) / 2          (positive-sign purity, in [0, 1], per feature)
    U ~ Uniform(0, 1), one draw per feature
    M_t = [P > U] [s_t > 0] + [P < U] [s_t < 0]    (keep one sign, chosen with probability P)

and every example's g_{t,b} of that feature is kept or dropped with M_t. `mask: element` applies the same rule
per element of g_t (P, U and the signs of g_t itself, TorchJD 0.18's `GradDrop` on the matrix it is given).
The encoder gets ONE backward of sum_t (leak + (1 - leak) M_t) g_t from z. Heads get their own raw
gradients. Where every task agrees on the sign (P = 1 or P = 0), the gradients pass unchanged (almost surely:
U is never exactly 0 or 1 in practice). Where all s_t (or g_t) are 0, P = 1/2.

Choices: no `eps` in the purity denominator (LibMTL adds 1e-7, which only moves P where every s_t is near 0);
`f` (a monotone transform of P, TorchJD) is the identity; `leak` is one scalar for every task (LibMTL; TorchJD
takes one per task). Ties P = U keep neither sign, as both references. U comes from a CPU generator seeded
with the run's seed at `setup` (the same draws on any device) and is checkpointed. The returned weights are 1
for every task (each loss keeps its nominal weight; the masking is per feature or element, not per task).

On N processes (torchrun) it is the same algorithm as on one: every rank draws the same U (same seed); with
`mask: feature` the batch sums s_t [T, features] are summed across the ranks (one all-reduce; z's rows are split
across them); with `mask: element` every rank draws U for the whole batch and takes its own rows of it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlcli import distributed
from mtlcli.methods._representation import _accumulate, representation_grads
from mtlcli.methods._seeded import SeededRandom
from mtlcli.methods.base import Step
from mtlcli.methods.options import GradDropOptions


def sign_purity(z_grads: Tensor) -> Tensor:
    """P = (1 + sum_t g_t / sum_t |g_t|) / 2 per element of z_grads [T, N]; 1/2 where every g_t is 0."""
    total = z_grads.abs().sum(dim=0)
    ratio = torch.where(total > 0, z_grads.sum(dim=0) / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return 0.5 * (1 + ratio)


def graddrop_combine(z_grads: Tensor, u: Tensor, leak: float = 0.0) -> Tensor:
    """sum_t (leak + (1 - leak) M_t) g_t with M_t = [P > U][g_t > 0] + [P < U][g_t < 0], per element of [T, N]."""
    return (_factor(z_grads, u, leak) * z_grads).sum(dim=0)


def feature_sums(z_grads: Tensor, z: Tensor) -> Tensor:
    """s_t = sum_b sign(z_b) g_{t,b} [T, F] for z_grads [T, B, F] and z [B, F]."""
    return (z_grads * z.sign().unsqueeze(0)).sum(dim=1)


def graddrop_combine_per_feature(
    z_grads: Tensor, z: Tensor, u: Tensor, leak: float = 0.0, sums: Tensor | None = None
) -> Tensor:
    """The per-feature rule: z_grads [T, B, F] (F = features of z, flattened), z [B, F], u [F]; the masks come
    from the batch sums s_t = sum_b sign(z_b) g_{t,b} (`sums`, when z holds only part of the batch; else from
    z_grads and z) and apply to every example of the feature."""
    if sums is None:
        sums = feature_sums(z_grads, z)
    return (_factor(sums, u, leak).unsqueeze(1) * z_grads).sum(dim=0)  # [B, F]


def _factor(signed: Tensor, u: Tensor, leak: float) -> Tensor:
    """leak + (1 - leak) M_t for the signed quantities [T, ...] whose purity decides."""
    purity = sign_purity(signed)
    keep = ((purity > u) & (signed > 0)) | ((purity < u) & (signed < 0))
    return leak + (1 - leak) * keep.to(signed.dtype)


class GradDrop(SeededRandom):
    """Keep, per feature of the representation (or per element of its gradient), one sign chosen with
    probability of its purity."""

    name: ClassVar[str] = "graddrop"

    def __init__(self, options: GradDropOptions | None = None) -> None:
        super().__init__()
        self.options = options or GradDropOptions()
        self._before: Tensor | None = None

    def __repr__(self) -> str:
        return f"GradDrop(leak={self.options.leak}, mask={self.options.mask!r})"

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._before = None

    def step_skipped(self) -> None:
        """Undo the last step's random draws."""
        if self._before is not None:
            self.generator.set_state(self._before)
            self._before = None

    def uniform(self, n: int, like: Tensor) -> Tensor:
        """n uniform draws in [0, 1) from the method's generator, on `like`'s device."""
        self._before = self.generator.get_state()
        return torch.rand(n, generator=self.generator, dtype=torch.float32).to(device=like.device)

    def backward(self, step: Step) -> Tensor:
        grads = representation_grads(step)
        for params, grads_t in zip(step.task_parameters(), grads.head_grads, strict=True):
            for p, g in zip(params, grads_t, strict=True):
                if g is not None:
                    _accumulate(p, g)
        z_grads = grads.z_grads
        job = distributed.current()
        rows = step.z.shape[0]
        if self.options.mask == "element":
            features = z_grads.shape[1] // max(rows, 1)
            batch_rows = step.batch_rows if job.active and step.batch_rows is not None else rows
            u = self.uniform(batch_rows * features, z_grads).to(z_grads.dtype)
            if batch_rows != rows:  # the draws of the whole batch, this rank's rows of them
                u = job.shard(u.view(batch_rows, features)).reshape(-1)
            step.backward_z(graddrop_combine(z_grads, u, self.options.leak))
        else:
            z = step.z.detach().reshape(rows, -1)
            u = self.uniform(z.shape[1], z_grads).to(z_grads.dtype)
            per_row = z_grads.reshape(step.num_tasks, *z.shape)
            sums = job.sum_(feature_sums(per_row, z))  # the batch's (summed across the ranks of a torchrun job)
            combined = graddrop_combine_per_feature(per_row, z, u, self.options.leak, sums=sums)
            step.backward_z(combined)
        return torch.ones(step.num_tasks, dtype=step.losses.dtype, device=step.losses.device)
