"""Mixed precision (`train.precision`): the autocast context of the forward and the losses, and fp16's loss scaler.

- ``fp32`` (default): no autocast, no scaler: the loop runs as it always has.
- ``bf16``: the forward pass and the losses run under `torch.autocast(dtype=bfloat16)` (CUDA with bf16 support,
  or the CPU); bfloat16 has float32's range, so no scaler.
- ``fp16`` (CUDA only): autocast to float16 and `torch.amp.GradScaler`. The losses keep their true values (every
  method reads them) but their backward is multiplied by the scale (`ScaleGrad`): each gradient autograd gives
  is the scale times the true one, which `Step.unscaled` divides out wherever the methods weigh the tasks
  (mtlcli.methods.base). Before the guard and the optimiser the scaler unscales `.grad` and records whether a
  gradient overflowed (`unscale_`); such a step is skipped (`NonFiniteGuard`, scaled mode) and the scale
  halved (`update`), as `GradScaler.step` would.

What stays float32 whatever the precision: the parameters and their gradients (autocast casts copies), the
losses (`losses`: a float32 copy of a half-precision loss), the per-task gradients a method weighs (float32
copies of dL/dz, `Step.unscaled`), so every Gram matrix, solver and method weight. Evaluation runs in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
INIT_SCALE = 2.0**16  # GradScaler's default first scale (halved after each overflow, doubled after 2000 good steps)


class ScaleGrad(torch.autograd.Function):
    """Identity in the forward (the loss keeps its value), times `scale` in the backward (vmap-able, so batched
    backwards, `is_grads_batched`, go through it)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(loss: Tensor, scale: Tensor) -> Tensor:
        return loss.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class Precision:
    """The recipe's precision on `device`: `autocast()` around the forward and the losses, `losses` on what the
    method gets, `unscale_` / `update` around the guard and the optimiser step, `state_dict` for checkpoints."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.name = precision
        self.device = device
        self.dtype = AUTOCAST_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=INIT_SCALE) if precision == "fp16" else None
        self._ones = torch.ones((), device=device)

    @property
    def scaled(self) -> bool:
        """Whether gradients carry a loss scale (fp16): a non-finite gradient is then an overflow, a skipped step."""
        return self.scaler is not None

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast to the precision's dtype; nothing under fp32."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scale(self) -> Tensor | None:
        """This step's loss scale (a device tensor: no host sync), None without a scaler (`Step.grad_scale`)."""
        return None if self.scaler is None else self.scaler.scale(self._ones)

    def losses(self, losses: Sequence[Tensor], scale: Tensor | None) -> list[Tensor]:
        """The task losses the method gets: float32 (a loss autocast left in half precision is cast), and under
        fp16 with their backward multiplied by `scale`."""
        losses = [loss.float() for loss in losses]
        return losses if scale is None else [ScaleGrad.apply(loss, scale) for loss in losses]

    def unscale_(self, optimizer: torch.optim.Optimizer, method_params: Sequence[nn.Parameter]) -> None:
        """Divide every `.grad` of the optimiser by the scale (fp16), recording whether one is non-finite. The
        method's own parameters (learned loss scales) get their gradients from the losses' values, not through
        their backward, so theirs are true: multiplied by the scale first (exact: it is a power of two)."""
        if self.scaler is None:
            return
        scale = self.scaler.scale(self._ones)
        grads = [p.grad for p in method_params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale)
        self.scaler.unscale_(optimizer)

    def update(self) -> None:
        """After the step (applied or skipped): halve the scale after an overflow, double it after a run of good
        steps (`GradScaler.update`, on the device)."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's scale and growth tracker (one host read, at checkpoint time); {} without a scaler."""
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
