"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019, eq. 7).

With L_k(t) task k's mean training loss over epoch t, the relative descending rate is
w_k(t-1) = L_k(t-1) / L_k(t-2) and the weights of epoch t are

    lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1) / T)      (sum K; T the `temperature`),

lambda = 1 for the first two epochs. The network minimises sum_k lambda_k L_k: a sum, not a mean, as in
the authors' code (lorenmt/mtan, im2im_pred/utils.py) and LibMTL (LibMTL/weighting/DWA.py). The losses
are the mean (applied-step) training losses the trainer hands to `end_epoch` after every epoch; the last
two of them and the number of epochs seen are the method's state (checkpointed); the weights are
recomputed from them. A ratio that is not finite (a zero mean loss: an epoch whose steps were all
skipped) gives lambda = 1 for that epoch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlcli.methods.base import MethodHooks, Step, weighted_backward
from mtlcli.methods.options import DwaOptions


def dwa_weights(previous: Tensor, last: Tensor, temperature: float) -> Tensor:
    """K softmax(w / T) with w = last / previous (the mean losses of epochs t-1 and t-2); ones if w is not finite."""
    ratio = last / previous
    weights = ratio.numel() * torch.softmax(ratio / temperature, dim=0)
    return torch.where(torch.isfinite(ratio).all(), weights, torch.ones_like(weights))


class Dwa(MethodHooks):
    """sum_k lambda_k L_k with lambda = K softmax(L(t-1) / L(t-2) / T), updated once per epoch."""

    name: ClassVar[str] = "dwa"

    def __init__(self, options: DwaOptions | None = None) -> None:
        self.options = options or DwaOptions()
        self.losses: Tensor | None = None  # [2, K]: mean losses of epochs t-2 and t-1
        self.weights: Tensor | None = None  # [K]: lambda for the current epoch
        self.epochs = 0  # epochs seen (end_epoch calls)

    def __repr__(self) -> str:
        return f"Dwa(temperature={self.options.temperature})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.losses = torch.zeros(2, num_tasks, device=device)
        self.weights = torch.ones(num_tasks, device=device)
        self.epochs = 0

    def _ready(self) -> tuple[Tensor, Tensor]:
        if self.losses is None or self.weights is None:
            raise RuntimeError("Dwa.setup(num_tasks, device) must run before training")
        return self.losses, self.weights

    def _update_weights(self) -> None:
        losses, weights = self._ready()
        if self.epochs < 2:
            weights.fill_(1.0)
        else:
            weights.copy_(dwa_weights(losses[0], losses[1], self.options.temperature))

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        losses, _ = self._ready()
        return {"losses": losses.clone(), "epochs": torch.tensor(self.epochs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        losses, _ = self._ready()
        losses.copy_(state["losses"])
        self.epochs = int(state["epochs"])
        self._update_weights()

    def end_epoch(self, mean_losses: Tensor) -> None:
        """Shift in this epoch's mean training losses; the next epoch's weights follow from them."""
        losses, _ = self._ready()
        losses[0] = losses[1]
        losses[1] = mean_losses.detach().to(losses)
        self.epochs += 1
        self._update_weights()

    def backward(self, step: Step) -> Tensor:
        _, weights = self._ready()
        weights = weights.to(step.losses).clone()
        weighted_backward(step.losses, weights)
        return weights
