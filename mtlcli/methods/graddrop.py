"""GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020, Algorithm 1, lines 10-15).

At the shared representation z (the activation layer the method is inserted at), with g_t = dL_t/dz
per element (batch kept: z_grads [T, numel(z)]):

    P = (1 + sum_t g_t / sum_t |g_t|) / 2          (positive-sign purity, in [0, 1])
    U ~ Uniform(0, 1), one draw per element
    M_t = [P > U] [g_t > 0] + [P < U] [g_t < 0]    (keep one sign, chosen with probability P)

and the encoder gets ONE backward of sum_t (leak + (1 - leak) M_t) g_t from z. Heads get their own
raw gradients. Where every task agrees on the sign (P = 1 or P = 0), the gradients pass unchanged
(almost surely: U is never exactly 0 or 1 in practice). Elements where all g_t are 0 get P = 1/2.

Choices, against TorchJD 0.18 (`GradDrop`, per element of the matrix it is given) and LibMTL
(`GradDrop.py`): the purity is per element of z (batch kept), as TorchJD; LibMTL's batch-marginalised
variant (sign(z) * dL_t/dz summed over the batch, one mask per feature: the paper's treatment of
batch-separated gradients) is not offered. No `eps` in the purity denominator (LibMTL adds 1e-7); `f` (a monotone transform of P,
TorchJD) is the identity. `leak` is one scalar for every task (LibMTL; TorchJD takes one per task).
Ties P = U keep neither sign, as both references. U comes from a CPU generator seeded with the run's
seed at `setup` (the same draws on any device) and is checkpointed. The returned weights are 1 for
every task (each loss keeps its nominal weight; the masking is per element, not per task).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

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
    """sum_t (leak + (1 - leak) M_t) g_t with M_t = [P > U][g_t > 0] + [P < U][g_t < 0]."""
    purity = sign_purity(z_grads)
    keep = ((purity > u) & (z_grads > 0)) | ((purity < u) & (z_grads < 0))
    factor = leak + (1 - leak) * keep.to(z_grads.dtype)
    return (factor * z_grads).sum(dim=0)


class GradDrop(SeededRandom):
    """Keep, per element of the representation gradient, one sign chosen with probability of its purity."""

    name: ClassVar[str] = "graddrop"

    def __init__(self, options: GradDropOptions | None = None) -> None:
        super().__init__()
        self.options = options or GradDropOptions()
        self._before: Tensor | None = None

    def __repr__(self) -> str:
        return f"GradDrop(leak={self.options.leak})"

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
        u = self.uniform(z_grads.shape[1], z_grads).to(z_grads.dtype)
        step.z.backward(graddrop_combine(z_grads, u, self.options.leak).reshape(step.z.shape))
        return torch.ones(step.num_tasks, dtype=step.losses.dtype, device=step.losses.device)
