"""FAMO, Fast Adaptive Multitask Optimization (Liu, Liang, Gong, Stone & Liu, NeurIPS 2023).

Task logits w (zeros at the start), z = softmax(w). With D_t = L_t - min_t + 1e-8 (min_t = 0, the
reference's default: the losses are non-negative) and c = sum_t z_t / D_t (held constant), the network minimises

    sum_t z_t log(D_t) / c,   i.e. its gradient is sum_t a_t dL_t/dtheta with a_t = z_t / (c D_t),

so every task's log-loss decreases at a rate set by z, and sum_t a_t = 1. The logits then follow the
observed decrease of the log-losses, delta_t = log D_t(before the step) - log D_t(after it): their
gradient is the softmax Jacobian-vector product J_z(w)^T delta (the reference's
`torch.autograd.grad(softmax(w), w, grad_outputs=delta)`), applied with Adam (`w_lr`) and L2 weight
decay `gamma` (torch.optim.Adam's `weight_decay`), as in the authors' code. A task whose loss falls
more slowly than the others gets a larger delta-deficit, hence a larger z_t: FAMO balances the rates
at which the task losses decrease, in O(1) extra space and time (no per-task gradients).

When delta is measured. By default (`update: same-batch`) as the authors (Cranial-XIX/FAMO, commit 0a6ad06:
famo.py's example loop and experiments/nyuv2/trainer.py) and LibMTL: right after the optimiser step the same
batch is evaluated again (one more forward, under no_grad, in the model's training mode as the authors'
trainer) and w is updated with delta = log D(theta_k, batch k) - log D(theta_{k+1}, batch k): the trainer's
`after_update` hook. `update: next-batch` saves that forward: the update of step k is made at the start of
step k+1, before its weighted loss, from the losses the trainer already has, delta = log D(theta_k, batch k)
- log D(theta_{k+1}, batch k+1) (the order of the authors' toy experiment); since batch k+1 is independent
of theta_{k+1} it measures the decrease on unseen data, less biased and noisier. With it the first step (no
previous losses yet) leaves w at 0.

Non-finite steps. If this step's losses (or the saved previous ones) are not all finite, w and the
Adam state are left exactly as they were, and the previous losses are kept, so the next finite step
measures the decrease across the last applied update. The check is on the device (`torch.where`, no
host sync), which is why Adam is written out on tensors here (torch.optim.Adam's formula, checked
against it in the tests): masking torch.optim.Adam would need its CPU step counter. A step skipped by
the trainer for a non-finite gradient with finite losses still moves w once (its losses are a valid
measurement); the delta across the skipped step is then only batch noise.

`backward` returns the effective weights a_t = z_t / (c D_t) (detached, summing to 1): the weight each
raw loss L_t gets in the gradient. w, the Adam moments and step count, and the previous losses are in
`state_dict`, so a resumed run continues bitwise-identically on the CPU. On N processes (torchrun) the weights
and the logits' update use the batch's losses, summed across the ranks (`Step.summed_losses`, and the trainer's
`losses_after`): every rank holds the same w, and the method is the same algorithm as on one process.

The reference's gradient clipping of the shared parameters (`max_norm`) is left out: the authors' NYUv2 trainer
calls `clip_grad_norm_` before `loss.backward()` (methods/weight_methods.py, `WeightMethod.backward`), where it
clips nothing, and LibMTL leaves it out too. `gamma` is famo.py's 0.01; the authors' NYUv2 runs use 1e-3
(experiments/nyuv2/run.sh).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtlcli.methods.base import MethodHooks, Step, weighted_backward
from mtlcli.methods.options import FamoOptions

EPS = 1e-8  # the reference's D = L - min_losses + 1e-8, with min_losses = 0
BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as in the reference
ADAM_EPS = 1e-8


class Famo(MethodHooks):
    """Softmax task logits moved by the observed decrease of the log-losses; the model minimises sum_t z_t log L_t / c."""

    name: ClassVar[str] = "famo"

    def __init__(self, options: FamoOptions | None = None) -> None:
        self.options = options or FamoOptions()
        self.state: dict[str, Tensor] | None = None
        self._pending: Tensor | None = None  # same-batch: this step's losses, until `after_update` measures

    def __repr__(self) -> str:
        return f"Famo(gamma={self.options.gamma}, w_lr={self.options.w_lr}, update={self.options.update!r})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        zeros = torch.zeros(num_tasks, device=device)
        self.state = {
            "w": zeros.clone(),
            "exp_avg": zeros.clone(),
            "exp_avg_sq": zeros.clone(),
            "step": torch.zeros((), device=device),
            "prev_losses": torch.full((num_tasks,), float("nan"), device=device),  # none yet
        }

    def _ready(self) -> dict[str, Tensor]:
        if self.state is None:
            raise RuntimeError("Famo.setup(num_tasks, device) must run before training")
        return self.state

    @property
    def w(self) -> Tensor:
        """The task logits (z = softmax(w))."""
        return self._ready()["w"]

    def parameters(self) -> list[torch.nn.Parameter]:
        return []  # the logits have their own optimiser

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self._ready().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._ready()
        for key, value in mine.items():
            value.copy_(state[key])

    def weights(self, losses: Tensor) -> Tensor:
        """a_t = z_t / (c D_t) with c = sum_t z_t / D_t: the gradient weight of each raw loss (sums to 1)."""
        z = torch.softmax(self.w, -1)
        inv = 1 / (losses.detach() + EPS)
        return z * inv / (z * inv).sum()

    def update(self, losses: Tensor) -> None:
        """One Adam step of the logits on the decrease of the log-losses from the previous step's to `losses`
        (detached); no change at all unless both are finite."""
        s = self._ready()
        losses = losses.detach()
        ok = torch.isfinite(losses).all() & torch.isfinite(s["prev_losses"]).all()
        delta = torch.log(s["prev_losses"] + EPS) - torch.log(losses.to(s["prev_losses"].dtype) + EPS)
        delta = torch.where(ok, delta, torch.zeros_like(delta))
        w = s["w"].detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        w = w.detach()
        # torch.optim.Adam (L2 weight decay, bias-corrected), on tensors so the whole step can be masked
        beta1, beta2 = BETAS
        grad = grad + self.options.gamma * w
        exp_avg = s["exp_avg"].lerp(grad, 1 - beta1)
        exp_avg_sq = s["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad
        step = s["step"] + 1
        step_size = self.options.w_lr / (1 - beta1**step)
        denom = exp_avg_sq.sqrt() / (1 - beta2**step).sqrt() + ADAM_EPS
        new_w = w - step_size * exp_avg / denom
        for key, new in (("w", new_w), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("step", step)):
            s[key].copy_(torch.where(ok, new, s[key]))

    def backward(self, step: Step) -> Tensor:
        s = self._ready()
        losses = step.summed_losses()  # the batch's (summed across the ranks of a torchrun job)
        if self.options.update == "next-batch":
            self.update(losses)  # the previous step's update, measured on this step's losses
        weights = self.weights(losses)
        weighted_backward(step.losses, weights)
        if self.options.update == "next-batch":
            s["prev_losses"].copy_(torch.where(torch.isfinite(losses).all(), losses, s["prev_losses"]))
        else:
            self._pending = losses.clone()
        return weights

    def after_update(self, losses_after: Callable[[], Tensor]) -> None:
        """same-batch: w moves on the decrease of this batch's log-losses across the step just applied."""
        if self.options.update != "same-batch" or self._pending is None:
            return
        s = self._ready()
        s["prev_losses"].copy_(self._pending)
        self._pending = None
        self.update(losses_after())

    def step_skipped(self) -> None:
        """The trainer dropped the step: nothing was measured (same-batch), w is as it was."""
        self._pending = None
