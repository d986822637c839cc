"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

Learnable task weights w_t (starting at 1, renormalised to sum T after every update). With W the
weight of the last shared layer, G_t = ||dW (w_t L_t)|| = w_t ||dL_t/dW||, the mean norm G_bar and the
relative inverse training rate r_t = (L_t / L_t(0)) / mean_tau(L_tau / L_tau(0)), the weights minimise
sum_t |G_t - G_bar r_t^alpha| (the target held constant) with their own Adam optimiser (`lr`), while
the network minimises sum_t w_t L_t. `alpha: 0` asks for equal weighted gradient norms (the variant
the IMTL paper found best). Weights, initial losses and the optimiser state are saved in checkpoints.

This is the paper's Algorithm 1 (the authors published no code; tests/unit/methods/test_conformance_weighting.py
transcribes the algorithm and checks the default step by step). LibMTL's GradNorm (median-research-group/LibMTL,
commit 4336804, LibMTL/weighting/GradNorm.py, "implemented by us") is a different method, on purpose not the
default here: (1) it measures G_t on the gradient of ALL shared parameters (T full backward passes a step; with
`rep_grad`, on the batch-summed representation gradient), the paper on the last shared layer (one small backward
per task); (2) w = T softmax(v), no renormalisation; (3) v is trained by the model's own optimiser (its
learning rate and weight decay), not by a separate Adam; (4) epoch 0 trains with w = 1 and no weight update, and
L_t(0) is epoch 0's mean training loss, not the first step's; (5) the heads keep their raw gradients (its
per-task backward passes), here they get w_t-scaled ones, as the paper's sum_t w_t L_t gives them.

On N processes (torchrun) it is the same algorithm as on one: each rank's dL_t/dW is a part of the batch's,
and the norm of a sum is not the sum of norms, so the T x numel(W) per-task gradients of the last shared layer
are summed across the ranks with the losses (one all-reduce); every rank then moves the weights identically.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlcli.methods._representation import summed_gram_and_losses
from mtlcli.methods.base import MethodHooks, Step, weighted_backward
from mtlcli.methods.options import GradNormOptions


class GradNorm(MethodHooks):
    """Weights w_t learnt so that the weighted gradient norms on the last shared layer follow r_t^alpha."""

    name: ClassVar[str] = "gradnorm"

    def __init__(self, options: GradNormOptions | None = None) -> None:
        self.options = options or GradNormOptions()
        self.w: nn.Parameter | None = None
        self.initial_losses: Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._before_step: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"GradNorm(alpha={self.options.alpha}, lr={self.options.lr})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.w = nn.Parameter(torch.ones(num_tasks, device=device))
        self.initial_losses = torch.full((num_tasks,), float("nan"), device=device)
        self.optimizer = torch.optim.Adam([self.w], lr=self.options.lr)

    def _ready(self) -> tuple[nn.Parameter, Tensor, torch.optim.Optimizer]:
        if self.w is None or self.initial_losses is None or self.optimizer is None:
            raise RuntimeError("GradNorm.setup(num_tasks, device) must run before training")
        return self.w, self.initial_losses, self.optimizer

    def parameters(self) -> list[nn.Parameter]:
        return []  # the weights have their own optimiser

    def state_dict(self) -> dict[str, Any]:
        w, initial, optimizer = self._ready()
        return {"w": w.detach().clone(), "initial_losses": initial.clone(), "optimizer": optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w, initial, optimizer = self._ready()
        with torch.no_grad():
            w.copy_(state["w"])
            initial.copy_(state["initial_losses"])
        optimizer.load_state_dict(state["optimizer"])

    def step_skipped(self) -> None:
        """The trainer dropped this step as non-finite: undo this step's update of the weights, the
        initial losses and the optimiser state, as if the step had never happened."""
        if self._before_step is not None:
            self.load_state_dict(self._before_step)

    def grad_norms(self, step: Step) -> Tensor:
        """||dL_t/dW|| for the last shared layer's weight W, one (small) backward per task; across the ranks of a
        torchrun job the batch's dL_t/dW, summed with the step's losses in one all-reduce (`Step.summed_losses`)."""
        weight = step.model.last_shared_layer().weight
        grads = step.unscaled(  # the true gradients under fp16 (Step.grad_scale)
            torch.stack(
                [torch.autograd.grad(step.task_loss(t), weight, retain_graph=True)[0].reshape(-1) for t in range(step.num_tasks)]
            )
        )
        grads, _ = summed_gram_and_losses(step, grads)
        return torch.linalg.vector_norm(grads, dim=1).detach()

    def backward(self, step: Step) -> Tensor:
        w, initial, optimizer = self._ready()
        self._before_step = {  # what step_skipped restores (a few T-sized tensors)
            "w": w.detach().clone(),
            "initial_losses": initial.clone(),
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }
        norms = self.grad_norms(step)
        weights = w.detach().clone()
        weighted_backward(step.losses, weights)

        losses = step.summed_losses()  # the batch's
        first = torch.isnan(initial) & torch.isfinite(losses)
        initial.copy_(torch.where(first, losses, initial))  # L_t(0), set at the first (finite) step
        ratio = losses / initial.clamp_min(torch.finfo(losses.dtype).tiny)
        rate = ratio / ratio.mean()
        weighted_norms = w * norms
        target = (weighted_norms.mean() * rate.pow(self.options.alpha)).detach()
        optimizer.zero_grad(set_to_none=True)
        torch.sum(torch.abs(weighted_norms - target)).backward(inputs=[w])
        assert w.grad is not None
        w.grad = torch.where(torch.isfinite(w.grad).all(), w.grad, torch.zeros_like(w.grad))  # a non-finite step: no pull
        optimizer.step()
        with torch.no_grad():  # keep the weights positive and summing to T
            w.clamp_(min=1e-6)
            w.mul_(w.numel() / w.sum())
        return weights
