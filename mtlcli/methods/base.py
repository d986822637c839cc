"""What every weighting method sees at a training step, and the protocol it implements.

The trainer does the forward pass and then hands a `Step` to the method; the method puts the
gradients on the parameters (by a weighted backward, or by assembling them from per-task gradients)
and returns the loss weights it used, for logging. Composition: methods hold their options and any
learnable state; they never subclass the model or the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from mtlcli import distributed
from mtlcli.errors import MtlError


class Network(Protocol):
    """What a method reads of the network: `MultiTaskModel`, or `Parameters` for a model mtl does not know."""

    @property
    def task_names(self) -> list[str]: ...

    def shared_parameters(self) -> list[nn.Parameter]: ...

    def task_parameters(self, name: str) -> list[nn.Parameter]: ...

    def last_shared_layer(self) -> nn.Module: ...


ParameterSource = nn.Module | Iterable[nn.Parameter]


def trainable(source: ParameterSource) -> list[nn.Parameter]:
    """The parameters of a module (or the given ones) that require gradients."""
    params = source.parameters() if isinstance(source, nn.Module) else source
    return [p for p in params if p.requires_grad]


@dataclass
class Parameters:
    """The network as parameter lists (a model mtl does not know): the shared ones, and each task's head's in
    the order of the losses; `last_layer` is the encoder's last layer, which only GradNorm reads."""

    shared: list[nn.Parameter]
    heads: list[list[nn.Parameter]]
    last_layer: nn.Module | None = None

    @property
    def task_names(self) -> list[str]:
        return [str(t) for t in range(len(self.heads))]

    def shared_parameters(self) -> list[nn.Parameter]:
        return self.shared

    def task_parameters(self, name: str) -> list[nn.Parameter]:
        return self.heads[int(name)]

    def last_shared_layer(self) -> nn.Module:
        if self.last_layer is None:
            raise MtlError("this method reads the encoder's last layer", hint="pass last_layer= (the encoder's last nn.Module)")
        return self.last_layer


LossesOn = Callable[[slice], Sequence[Tensor]]  # rows of the batch -> their per-task losses, from the step's forward


@dataclass
class Step:
    """One training step after the forward pass.

    `losses[t]` is task t's (loss_scale-multiplied) loss, `z` the shared representation with its
    graph attached, `model` the network whose parameters the method must give gradients to.
    `parts`, when known, are the same per-task losses as separate graph nodes (see `task_loss`).
    `losses_on`, when known, computes the per-task losses of some rows of the batch from the same forward
    pass (for the methods that draw several samples per step, see `samples`).
    `batch_rows`, when known, is the number of rows of the whole batch, which on N processes (torchrun) is
    split across the ranks (z holds this rank's rows r, r + N, ...); None: z holds them all.
    `grad_scale`, when known, is the loss scale of fp16 training (`train.precision: fp16`, the trainer's
    GradScaler): the losses' values are the true ones but their backward is multiplied by it, so every gradient
    autograd gives (and every `.grad`) is grad_scale times the true one. Gradients read to weigh the tasks go
    through `unscaled` (true, and float32 at least: Gram matrices, solvers and method state never see the scale
    nor a half-precision number); a true update written back goes through `backward_z` or `rescaled`.
    """

    model: Network
    z: Tensor
    losses: Tensor
    parts: tuple[Tensor, ...] | None = None
    summed: Tensor | None = field(default=None, repr=False)  # the losses summed across ranks, once known
    losses_on: LossesOn | None = field(default=None, repr=False)
    batch_rows: int | None = None
    grad_scale: Tensor | None = field(default=None, repr=False)

    def unscaled(self, grad: Tensor) -> Tensor:
        """A gradient autograd gave (of these losses) as the true one, in float32 at least: under autocast z, and
        so dL/dz, may be bfloat16 or float16; what weighs the tasks is computed from this float32 copy."""
        grad = grad.to(torch.promote_types(grad.dtype, torch.float32))
        return grad if self.grad_scale is None else grad / self.grad_scale

    def rescaled(self, update: Tensor) -> Tensor:
        """A true gradient as autograd's are (times `grad_scale`), to be written into `.grad`."""
        return update if self.grad_scale is None else update * self.grad_scale

    def backward_z(self, grad: Tensor) -> None:
        """The encoder's backward from a true gradient of z (z's shape, or flattened): rescaled, in z's dtype."""
        self.z.backward(self.rescaled(grad).reshape(self.z.shape).to(self.z.dtype))

    def summed_losses(self) -> Tensor:
        """The detached losses summed across the ranks of a torchrun job (the batch's losses), all-reduced once
        per step and shared by the method and the trainer; on one process, the losses."""
        if self.summed is None:
            job = distributed.current()
            self.summed = job.sum_(self.losses.detach().clone()) if job.active else self.losses.detach()
        return self.summed

    @classmethod
    def of(
        cls,
        model: Network,
        z: Tensor,
        task_losses: Sequence[Tensor],
        losses_on: LossesOn | None = None,
        batch_rows: int | None = None,
        grad_scale: Tensor | None = None,
    ) -> Step:
        """A step from the per-task losses (kept as `parts`, stacked into `losses`)."""
        parts = tuple(task_losses)
        return cls(model, z, torch.stack(parts), parts, losses_on=losses_on, batch_rows=batch_rows, grad_scale=grad_scale)

    def samples(self, k: int) -> tuple[list[Step], list[float]]:
        """k samples of this step's losses: the batch's rows cut into k consecutive parts (sizes differing by at
        most one), each part's per-task losses from this step's forward pass (no other forward), as k steps;
        and each part's share of the rows (summing to 1), so that sum_i share_i * (part i's gradient) is the
        batch's gradient when the losses are means over the rows. The trainer shuffles the rows every epoch, so
        the parts are disjoint random subsets of the data (independent but for layers that mix the examples of
        a batch, such as BatchNorm in training)."""
        rows = int(self.z.shape[0])
        if self.losses_on is None:
            raise MtlError("this step cannot be split into samples: it was made without `losses_on`")
        if rows < k:
            raise MtlError(
                f"a batch of {rows} example(s) cannot be split into {k} samples",
                hint=f"set train.batch_size to {k} or more",
            )
        parts = list(pairwise(rows * i // k for i in range(k + 1)))
        steps = [
            Step.of(self.model, self.z, self.losses_on(slice(start, stop)), grad_scale=self.grad_scale) for start, stop in parts
        ]
        return steps, [(stop - start) / rows for start, stop in parts]

    @classmethod
    def from_parameters(
        cls,
        task_losses: Sequence[Tensor],
        *,
        shared: ParameterSource,
        heads: Sequence[ParameterSource],
        features: Tensor,
        last_layer: nn.Module | None = None,
    ) -> Step:
        """A step of a model mtl does not know: the task losses, the shared parameters (or the encoder), each
        task's head (or its parameters) in the order of the losses, and z (`features`, with its graph)."""
        parts = tuple(task_losses)
        if len(parts) != len(heads):
            raise MtlError(
                f"{len(parts)} task losses but {len(heads)} heads", hint="give one head per task, in the order of the losses"
            )
        if any(part.dim() != 0 for part in parts):
            raise MtlError("every task loss must be a scalar (reduce it over the batch first)")
        return cls.of(Parameters(trainable(shared), [trainable(h) for h in heads], last_layer), features, parts)

    def task_loss(self, t: int) -> Tensor:
        """Task t's loss for a per-task backward. A backward from `losses[t]` would run through the
        stack and visit every task's head (T heads per call, T^2 per step); `parts[t]` visits one."""
        return self.parts[t] if self.parts is not None else self.losses[t]

    def scaled(self, scale: Tensor) -> Step:
        """The same step with loss t multiplied by scale[t]."""
        parts = None if self.parts is None else tuple(scale[t] * part for t, part in enumerate(self.parts))
        return Step(self.model, self.z, scale * self.losses, parts, grad_scale=self.grad_scale)

    @property
    def num_tasks(self) -> int:
        return int(self.losses.shape[0])

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [self.model.task_parameters(name) for name in self.model.task_names]


@runtime_checkable
class Method(Protocol):
    """A multi-task weighting method (one module under `mtlcli.methods`).

    Every hook is part of the protocol; the optional ones have no-op defaults in `MethodHooks`, which every
    method inherits (directly or through `Stateless` and the other state helpers), so the trainer calls them
    all unconditionally.
    """

    name: ClassVar[str]

    def backward(self, step: Step) -> Tensor:
        """Give every parameter its gradient for this step; return the task weights [T] (detached)."""
        ...

    def setup(self, num_tasks: int, device: torch.device) -> None:
        """Create any learnable state for `num_tasks` tasks on `device` (before the optimiser exists)."""
        ...

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the method itself (optimised with the model), if any."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def step_skipped(self) -> None:
        """The trainer dropped the step whose backward just ran (non-finite, `train.on_nonfinite: skip`): a
        method that updated its own state in `backward` undoes it."""
        ...

    def epoch_stats(self) -> dict[str, int | float]:
        """What the method counted this epoch (IMTL-G: steps whose equal projections were negative), read and
        reset at each epoch's end into metrics.jsonl's `method_stats`; empty: nothing to report."""
        ...

    def end_epoch(self, mean_losses: Tensor) -> None:
        """After each epoch, with its mean (applied-step) training losses [T], before the checkpoint is taken
        (so state saved in `state_dict` includes it). Methods paced by epochs (DWA, STCH) use it."""
        ...

    def after_update(self, losses_after: Callable[[], Tensor]) -> None:
        """After the optimiser applied this step. `losses_after()` re-evaluates the same batch's task losses [T]
        with the updated parameters (one more forward, no graph; on N processes summed across the ranks, as
        `Step.summed_losses`); only a method that needs them calls it (FAMO)."""
        ...


class MethodHooks:
    """The no-op defaults of the optional hooks of `Method`; every method inherits them."""

    def step_skipped(self) -> None:
        return None

    def epoch_stats(self) -> dict[str, int | float]:
        return {}

    def end_epoch(self, mean_losses: Tensor) -> None:
        return None

    def after_update(self, losses_after: Callable[[], Tensor]) -> None:
        return None


class Stateless(MethodHooks):
    """The default state hooks of a method without learnable state."""

    def setup(self, num_tasks: int, device: torch.device) -> None:
        return None

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def weighted_backward(losses: Tensor, weights: Tensor) -> None:
    """One backward pass of sum_t weights_t * losses_t through the whole network."""
    torch.sum(weights.detach() * losses).backward()
