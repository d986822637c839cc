"""Smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Liu, Wang & Zhang, "Smooth Tchebycheff Scalarization for
Multi-Objective Optimization", ICML 2024), in its multi-task form as in the authors' code (Xi-L/STCH,
STCH_MTL/LibMTL/weighting/STCH.py) and LibMTL (LibMTL/weighting/STCH.py).

With W = `warmup_epoch` and epochs counted from 0:

* epochs 0..W (W + 1 of them) train on sum_t log(L_t + eps), eps = 1e-20;
* the reference ("nadir") point n is epoch W's mean training loss (LibMTL: the mean of that epoch's batch
  losses; here the mean the trainer hands to `end_epoch` after epoch W);
* from epoch W + 1 on the network minimises

      T mu log sum_t exp(l_t / mu),    l_t = log(L_t / n_t + eps)       (T tasks, smoothing `mu`),

  a smooth max of the log-normalised losses (mu -> 0: T max_t l_t, the Tchebycheff max; mu large:
  T mu log T + sum_t l_t, the normalised losses' log-mean up to a constant). LibMTL subtracts the detached
  max of l inside the exp and does not add it back: a constant shift of the value, the same gradient.

No preference vector (LibMTL and the authors' MTL code weight the tasks equally). `backward` is one weighted
backward of sum_t w_t L_t whose weights w_t = d(objective)/dL_t are the effective per-task weights:

* warm-up:  w_t = 1 / (L_t + eps);
* STCH:     w_t = T softmax(l / mu)_t / (L_t + eps n_t)   (softmax weight times the chain-rule factor),

returned detached, computed from the batch's losses (on N processes, torchrun, the losses summed across the
ranks: each rank holds a part of every L_t; the nadir comes from the trainer's epoch means, which are the
batch's already), so the method is the same algorithm on N processes as on one. The state (end_epoch calls
seen, the reference point and whether it is set) is checkpointed. If epoch W's mean losses are not all finite
and positive (every step skipped), the warm-up goes on and the next such epoch's means become the reference
point (LibMTL would divide by zero).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlcli.methods.base import MethodHooks, Step, weighted_backward
from mtlcli.methods.options import StchOptions

EPS = 1e-20  # as in LibMTL: log(x + 1e-20)


def stch_objective(losses: Tensor, nadir: Tensor, mu: float) -> Tensor:
    """T mu logsumexp(log(L / n + eps) / mu): the scalarised loss after the warm-up (differentiable in `losses`)."""
    normalised = torch.log(losses / nadir + EPS)
    return losses.shape[0] * mu * torch.logsumexp(normalised / mu, dim=0)


def warmup_objective(losses: Tensor) -> Tensor:
    """sum_t log(L_t + eps): the warm-up loss."""
    return torch.log(losses + EPS).sum()


def stch_weights(losses: Tensor, nadir: Tensor, mu: float) -> Tensor:
    """d stch_objective / dL = T softmax(l / mu) / (L + eps n), l = log(L / n + eps) (closed form, detached)."""
    losses = losses.detach()
    normalised = torch.log(losses / nadir + EPS)
    return losses.shape[0] * torch.softmax(normalised / mu, dim=0) / (losses + EPS * nadir)


def warmup_weights(losses: Tensor) -> Tensor:
    """d warmup_objective / dL = 1 / (L + eps) (detached)."""
    return 1.0 / (losses.detach() + EPS)


class Stch(MethodHooks):
    """Warm-up on sum log L; then T mu logsumexp(log(L / nadir) / mu), the nadir set by the warm-up's last epoch."""

    name: ClassVar[str] = "stch"

    def __init__(self, options: StchOptions | None = None) -> None:
        self.options = options or StchOptions()
        self.nadir: Tensor | None = None  # [T]: the reference point (valid once `recorded`)
        self.recorded = False
        self.epochs = 0  # end_epoch calls seen

    def __repr__(self) -> str:
        return f"Stch(mu={self.options.mu}, warmup_epoch={self.options.warmup_epoch})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.nadir = torch.ones(num_tasks, device=device)
        self.recorded = False
        self.epochs = 0

    def _nadir(self) -> Tensor:
        if self.nadir is None:
            raise RuntimeError("Stch.setup(num_tasks, device) must run before training")
        return self.nadir

    @property
    def warming_up(self) -> bool:
        """True while the step trains on sum log L (epochs 0..warmup_epoch, or no reference point yet)."""
        return not self.recorded

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {
            "nadir": self._nadir().clone(),
            "recorded": torch.tensor(self.recorded),
            "epochs": torch.tensor(self.epochs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._nadir().copy_(state["nadir"])
        self.recorded = bool(state["recorded"])
        self.epochs = int(state["epochs"])

    def end_epoch(self, mean_losses: Tensor) -> None:
        """After epoch `warmup_epoch` (or the first later epoch with usable means) its mean losses become the nadir."""
        nadir = self._nadir()
        mean_losses = mean_losses.detach().to(nadir)
        usable = bool(torch.isfinite(mean_losses).all() and (mean_losses > 0).all())
        if not self.recorded and self.epochs >= self.options.warmup_epoch and usable:
            nadir.copy_(mean_losses)
            self.recorded = True
        self.epochs += 1

    def backward(self, step: Step) -> Tensor:
        """One backward of sum_t w_t L_t; w (detached) = d(objective)/dL, the effective per-task weights."""
        nadir = self._nadir()
        losses = step.summed_losses()  # the batch's: the weights are not linear in the losses
        weights = warmup_weights(losses) if self.warming_up else stch_weights(losses, nadir.to(losses), self.options.mu)
        weighted_backward(step.losses, weights)
        return weights
