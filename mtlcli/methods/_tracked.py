"""What the methods that keep per-task gradients across steps share (db-mtl's EMA, moco's tracking Y).

- `TrackedOptions`: `level` (shared by default, LibMTL's level; `representation` for dL_t/dz) and `grads`
  (shared level only);
- `task_gradients` / `apply_update`: this step's per-task gradients as [T, rows, features] (rows = 1 at the
  shared level, the batch at the representation level) and the update sum_t w_t g_t from them;
- `TrackedState`: the state tensors (checkpointed), the copy `step_skipped` restores, and `fit`, which pads
  the kept rows to this step's batch (a smaller last batch uses and updates only the leading rows).

On N processes (torchrun), at the shared level, J is summed across the ranks with the losses
(`batch_shared_grads`): every rank holds the batch's gradients, its state and weights are those of one process,
and it writes 1/N of the update. The representation level is refused there (`distributed.refusal`): its state
has a row per example of the batch, which the ranks would split between them, and a checkpoint holds rank 0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtlcli.methods._representation import RepresentationGrads, apply_representation_update, representation_grads
from mtlcli.methods._shared_params import SharedGrads, apply_shared_update, batch_shared_grads
from mtlcli.methods.base import MethodHooks, Step
from mtlcli.methods.options import TrackedOptions


@dataclass
class TaskGradients:
    """This step's per-task gradients `grads` [T, rows, features] (detached) and each head's own gradients;
    `share`: the part of the update this rank writes (1/N of the batch's at the shared level of a torchrun job)."""

    grads: Tensor
    head_grads: list[list[Tensor | None]]
    share: float = 1.0


def task_gradients(step: Step, options: TrackedOptions) -> TaskGradients:
    """This step's per-task gradients at the options' level (the batch's at the shared level)."""
    tasks = step.num_tasks
    if options.level == "representation":
        rep = representation_grads(step)
        z_grads = rep.z_grads.detach().reshape(tasks, step.z.shape[0], -1)
        return TaskGradients(z_grads, rep.head_grads)
    sh = batch_shared_grads(step, options.grads or "loop")
    return TaskGradients(sh.jacobian.detach().reshape(tasks, 1, -1), sh.head_grads, share=sh.share)


def apply_update(
    step: Step, flat: Tensor, grads: TaskGradients, weights: Tensor, options: TrackedOptions, head_scale: Tensor | None = None
) -> None:
    """The shared part gets sum_t weights_t flat_t (this rank's share of it); head t its own raw gradient, times
    head_scale[t] when given."""
    if options.level == "shared":
        apply_shared_update(step, SharedGrads(flat, grads.head_grads, share=grads.share), weights, head_weights=head_scale)
        return
    if head_scale is not None:  # the heads' gradients are fresh from autograd: scaled in place
        for t, grads_t in enumerate(grads.head_grads):
            for g in grads_t:
                if g is not None:
                    g.mul_(head_scale[t].detach())
    apply_representation_update(step, RepresentationGrads(flat, grads.head_grads), weights, head_grads="raw")


class TrackedState:
    """A method's state tensors: checkpointed, restorable after a skipped step, sized by the first step."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.state: dict[str, Tensor] | None = None
        self.previous: dict[str, Tensor] | None = None
        self.device = torch.device("cpu")

    def setup(self, device: torch.device, initial: dict[str, Tensor]) -> None:
        self.device = device
        self.state = initial
        self.previous = None

    def ready(self) -> dict[str, Tensor]:
        if self.state is None:
            raise RuntimeError(f"{self.owner}.setup(num_tasks, device) must run before training")
        return self.state

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self.ready().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self.ready()
        for key in mine:
            mine[key] = torch.as_tensor(state[key]).to(self.device).clone()
        self.previous = None

    def step_skipped(self) -> None:
        """The trainer dropped this step: restore the state from before it."""
        if self.previous is not None and self.state is not None:
            self.state.update(self.previous)
            self.previous = None

    def fit(self, kept: Tensor, current: Tensor, what: str) -> Tensor:
        """`kept` [T, rows', features] with at least as many rows as `current` (new rows are 0, as every
        row is at the start)."""
        tasks, rows, features = current.shape
        if kept.numel() == 0:
            return torch.zeros_like(current)
        if kept.shape[0] != tasks or kept.shape[2] != features:
            raise RuntimeError(
                f"{what} has shape {tuple(kept.shape)} but this step's gradients {tuple(current.shape)}: "
                "the model, the tasks or the level changed since the state was made"
            )
        kept = kept.to(current.dtype)
        if kept.shape[1] < rows:
            kept = torch.cat([kept, kept.new_zeros(tasks, rows - kept.shape[1], features)], dim=1)
        return kept


def store_rows(old: Tensor, rows_now: Tensor) -> Tensor:
    """`old` with its leading rows replaced by `rows_now` (the whole of it when the batch is full)."""
    rows = rows_now.shape[1]
    if rows >= old.shape[1]:
        return rows_now
    new = old.clone()
    new[:, :rows] = rows_now
    return new


class TrackedStateHooks(MethodHooks):
    """The state hooks of a method whose whole state is the `TrackedState` in `self.tracked`: checkpointed with
    it, and restored to the copy from before a step the trainer skipped."""

    tracked: TrackedState

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return self.tracked.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracked.load_state_dict(state)

    def step_skipped(self) -> None:
        """The trainer dropped this step: restore the state from before it."""
        self.tracked.step_skipped()
