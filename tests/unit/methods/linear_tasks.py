"""A tiny linear multi-task model (float64) whose every gradient is known in closed form.

z = x A^T (the shared encoder, no bias); task t: r_t = z W_t^T + b_t - Y_t and L_t = k_t / 2 * sum(r_t^2), so
dL_t/dz = k_t r_t W_t, dL_t/dW_t = k_t r_t^T z, dL_t/db_t = k_t sum_rows(r_t) and dL_t/dA = (dL_t/dz)^T x.
With `ignoring=True` the last task's loss is k (b . b): it reaches neither z nor its head's weight W.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtlcli.methods.base import Step
from mtlcli.models.multitask import MultiTaskModel

NAMES = ("a", "b", "c")
SCALES = (1.0, 2.0, 0.5)


@dataclass
class Grads:
    """Closed-form per-task gradients: z [T, B * 4], encoder A [T, 4, 3], heads' W and b, and the losses [T]."""

    z: Tensor
    encoder: Tensor
    weight: list[Tensor | None]
    bias: list[Tensor]
    losses: Tensor

    def gram_z(self) -> Tensor:
        return self.z @ self.z.T

    def gram_shared(self) -> Tensor:
        flat = self.encoder.reshape(len(self.losses), -1)
        return flat @ flat.T


class LinearTasks:
    def __init__(self, seed: int = 0, *, ignoring: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        encoder = nn.Linear(3, 4, bias=False).double()
        heads = {name: nn.Linear(4, 2).double() for name in NAMES}
        with torch.no_grad():
            for p in [*encoder.parameters(), *(p for h in heads.values() for p in h.parameters())]:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        self.model = MultiTaskModel(encoder, heads)
        self.x = torch.randn(5, 3, generator=g, dtype=torch.float64)
        self.y = [torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in NAMES]
        self.ignoring = ignoring

    def head(self, t: int) -> nn.Linear:
        return self.model.heads[NAMES[t]]  # type: ignore[return-value]

    def step(self) -> Step:
        z = self.model.encoder(self.x)
        losses = []
        for t, k in enumerate(SCALES):
            head = self.head(t)
            if self.ignoring and t == len(NAMES) - 1:
                losses.append(k * (head.bias * head.bias).sum())
            else:
                losses.append(k / 2 * ((head(z) - self.y[t]) ** 2).sum())
        return Step.of(self.model, z, losses)

    def closed_form(self) -> Grads:
        with torch.no_grad():
            a = self.model.encoder.weight
            z = self.x @ a.T
            zs, encoders, weights, biases, losses = [], [], [], [], []
            for t, k in enumerate(SCALES):
                w, b = self.head(t).weight, self.head(t).bias
                if self.ignoring and t == len(NAMES) - 1:
                    zs.append(torch.zeros_like(z))
                    encoders.append(torch.zeros_like(a))
                    weights.append(None)
                    biases.append(2 * k * b)
                    losses.append(k * (b @ b))
                    continue
                r = z @ w.T + b - self.y[t]
                gz = k * r @ w
                zs.append(gz)
                encoders.append(gz.T @ self.x)
                weights.append(k * r.T @ z)
                biases.append(k * r.sum(dim=0))
                losses.append(k / 2 * (r * r).sum())
            return Grads(torch.stack([g.reshape(-1) for g in zs]), torch.stack(encoders), weights, biases, torch.stack(losses))
