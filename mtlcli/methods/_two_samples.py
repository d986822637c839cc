"""The Gram-based methods that take two independent samples of the task gradients per step (MoDo, SDMGrad).

Their weights come from the cross Gram matrix G_12 = J_1 J_2^T [T, T] of the Jacobians of two independent samples
(row s, column t: <g_s of sample 1, g_t of sample 2>): E[J_1 J_2^T] = E[J] E[J]^T, an unbiased estimate of the
Gram matrix of the expected gradients, which J J^T of one sample is not (it adds the gradients' covariance).
G_12 is not symmetric, and its diagonal may be negative.

Where the samples come from. The references draw extra batches (MoDo's authors two per step, LibMTL and SDMGrad's
authors three: two or three forward passes per step, and an epoch then goes through the data two or three times).
`mtl` cuts the step's batch into two halves instead (`Step.samples`): one forward pass, one pass over the data per
epoch, each sample half a batch. The update is the batch's gradient, share_1 J_1 + share_2 J_2 (the mean of the
two halves' gradients; exactly the batch's when the losses are means over the rows), combined by the weights.

- `level: shared` (the papers'): J_i = dL_i/dtheta_sh, T backward passes per sample (2T per step; `grads: batched`:
  one vmapped backward per sample).
- `level: representation` (the cheaper variant): dL_i/dz is zero outside sample i's rows, so the cross Gram of the
  full z-gradients would be identically 0; the Gram matrix takes each sample's z-gradients summed over its rows
  instead ([T, features of one example], as LibMTL builds its Gram matrices under `rep_grad`), while the update
  is the batch's full z-gradient, one encoder backward.

Heads get the batch's raw gradient share_1 h_1 + share_2 h_2 (`head_grads: raw`) or that times w_t (`weighted`).
`max_norm` > 0 clips the shared update to that norm (`clip_grad_norm_(shared_parameters)`, on the device), the
heads unclipped; the weights returned are those of the shared update.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlcli.methods._levels import AtLevel, GramMethod
from mtlcli.methods._representation import WeightsFn, _take, representation_grads
from mtlcli.methods._shared_params import SharedGrads, apply_shared_update, head_weights_for, shared_grads
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import finite, flag_non_finite
from mtlcli.methods.options import GradsMode

HeadGradients = list[list[Tensor | None]]


def _mix_heads(heads: list[HeadGradients], shares: list[float]) -> HeadGradients:
    """sum_i share_i h_i per head parameter (None where no sample reaches it)."""
    mixed: HeadGradients = []
    for per_task in zip(*heads, strict=True):
        row: list[Tensor | None] = []
        for grads in zip(*per_task, strict=True):
            present = [share * g for share, g in zip(shares, grads, strict=True) if g is not None]
            row.append(torch.stack(present).sum(dim=0) if present else None)
        mixed.append(row)
    return mixed


def _on_shared_parameters(samples: list[Step], shares: list[float], grads: GradsMode) -> tuple[Tensor, Tensor, HeadGradients]:
    """(G_12, the batch's Jacobian sum_i share_i J_i [T, P], the batch's head gradients)."""
    first, second = (shared_grads(sample, grads) for sample in samples)
    cross = first.jacobian @ second.jacobian.T
    batch = first.jacobian.mul_(shares[0]).add_(second.jacobian, alpha=shares[1])  # J_1's memory reused
    return cross, batch, _mix_heads([first.head_grads, second.head_grads], shares)


def _on_representation(samples: list[Step], shares: list[float]) -> tuple[Tensor, Tensor, HeadGradients]:
    """(G_12 of the row-summed z-gradients, the batch's z-gradients sum_i share_i dL_i/dz [T, numel(z)], heads)."""
    first, second = (representation_grads(sample) for sample in samples)
    rows = samples[0].z.shape[0]
    tasks = first.z_grads.shape[0]
    summed = [g.z_grads.reshape(tasks, rows, -1).sum(dim=1) for g in (first, second)]
    cross = summed[0] @ summed[1].T
    batch = first.z_grads.mul_(shares[0]).add_(second.z_grads, alpha=shares[1])
    return cross, batch, _mix_heads([first.head_grads, second.head_grads], shares)


def clip_scale(update: Tensor, max_norm: float) -> Tensor:
    """min(1, max_norm / ||update||) on the device (1 for a zero update; 1 for a non-finite one, which keeps the
    weights `flag_non_finite` gave and leaves the non-finite values to the trainer's guard)."""
    scale = (max_norm / torch.linalg.vector_norm(update)).clamp(max=1.0)
    return torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))


def two_sample_step(step: Step, weights: WeightsFn, options: AtLevel, *, max_norm: float = 0.0) -> Tensor:
    """The whole step (module docstring): two halves of the batch, their cross Gram G_12, the weights w from it,
    the batch's update with w. Returns the detached weights of the shared update."""
    samples, shares = step.samples(2)
    if options.level == "representation":
        cross, batch, heads = _on_representation(samples, shares)
    else:
        cross, batch, heads = _on_shared_parameters(samples, shares, options.grads or "loop")
    alpha = flag_non_finite(cross, weights(step.summed_losses(), finite(cross)))
    shared_alpha = alpha.detach().to(batch.dtype)
    if max_norm > 0:
        shared_alpha = shared_alpha * clip_scale(shared_alpha @ batch, max_norm)
    head_weights = head_weights_for(alpha, options.head_grads)
    if options.level == "representation":
        for t, (params, grads_t) in enumerate(zip(step.task_parameters(), heads, strict=True)):
            for p, g in zip(params, grads_t, strict=True):
                if g is not None:
                    _take(p, g * head_weights[t].detach() if head_weights is not None else g)
        step.backward_z(shared_alpha @ batch)
    else:
        apply_shared_update(step, SharedGrads(batch, heads), shared_alpha, head_weights=head_weights)
    return shared_alpha.detach()


class TwoSampleGramMethod(GramMethod):
    """A Gram-based method on the cross Gram matrix of two halves of the batch, keeping one vector of T weights
    on the simplex across steps (`state_key` in `state_dict`, float64, on the Gram's device).

    A subclass gives `weights(losses, cross_gram)` (reading and writing `self.kept`) and `max_norm`. A step the
    trainer drops (`step_skipped`) restores the kept vector from before it."""

    state_key: ClassVar[str]

    def __init__(self) -> None:
        self.kept: Tensor | None = None
        self._before: Tensor | None = None

    @property
    def max_norm(self) -> float:
        """The clip of the shared update's norm (0: none)."""
        return 0.0

    def backward(self, step: Step) -> Tensor:
        return two_sample_step(step, self.weights, self.options, max_norm=self.max_norm)

    @abstractmethod
    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """The task weights [T] for this step's cross Gram matrix G_12; moves the kept vector."""

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.kept = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64, device=device)
        self._before = None

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {} if self.kept is None else {self.state_key: self.kept.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.state_key in state:
            saved = state[self.state_key]
            device = self.kept.device if self.kept is not None else saved.device
            self.kept = saved.to(device=device, dtype=torch.float64).clone()
        self._before = None

    def step_skipped(self) -> None:
        if self._before is not None:
            self.kept, self._before = self._before, None

    def current(self, gram: Tensor) -> Tensor:
        """The kept vector (uniform at first, or when the number of tasks changed) in float64 on the Gram's device;
        remembered for `step_skipped`."""
        t = gram.shape[0]
        if self.kept is None or self.kept.shape != (t,):
            self.kept = torch.full((t,), 1.0 / t, dtype=torch.float64, device=gram.device)
        self._before = self.kept
        return self.kept.to(gram.device)
