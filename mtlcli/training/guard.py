"""Non-finite numbers: NaN/inf losses and gradients stop training (or skip the step), naming the task and the step.

Reliability: `NonFiniteGuard` watches every step under `train.on_nonfinite` (`stop`: the last good checkpoint is
kept and the error names the tasks, or the parameters, at fault; `skip`: the step changes nothing and is counted).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mtlcli.errors import MtlError


class NonFiniteError(MtlError):
    """A NaN/inf loss or gradient under `train.on_nonfinite: stop`; the last good checkpoint is kept."""

    def __init__(self, message: str, hint: str | None, *, step: int, tasks: list[str]) -> None:
        super().__init__(message, hint)
        self.step = step
        self.tasks = tasks


class NonFiniteGuard:
    """Watches every step's task losses and parameter gradients for NaN/inf.

    When the flag is read (the cost trade-off):
    - on the CPU reading it is free, so it is read every step, before `optimizer.step()`: a bad step
      never touches parameters or optimiser state (`stop` raises, `skip` drops the step);
    - `skip` on CUDA must also decide before `optimizer.step()`, so it costs one host sync per step
      (choose it for runs known to be unstable);
    - `stop` on CUDA keeps the hot path sync-free: the first bad step (its losses and which gradients
      were bad) is recorded on the device and read with the progress refresh, at the end of each
      epoch and before any checkpoint is written. Updates after the bad step may be poisoned, so
      nothing more is saved: the checkpoint on disk is the last good state.

    `scaled` (fp16's loss scaler, mtlcli.training.precision): a non-finite gradient with finite losses is the
    scaler's overflow, not divergence: that step is skipped whatever the policy (the scaler halves its scale), as
    `GradScaler.step` skips it; the flag is then read every step (the one host sync `GradScaler.step` makes too).
    Non-finite losses, and non-finite weights with finite gradients, follow the policy.
    """

    def __init__(
        self,
        task_names: list[str],
        named_params: list[tuple[str, torch.nn.Parameter]],
        device: torch.device,
        policy: str,
        *,
        scaled: bool = False,
    ) -> None:
        self.task_names = task_names
        self.param_names = [name for name, _ in named_params]
        self.params = [p for _, p in named_params]
        self.policy = policy
        self.scaled = scaled
        self.immediate = device.type != "cuda" or policy == "skip" or scaled
        self._true = torch.ones((), dtype=torch.bool, device=device)
        self._zero = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_losses = torch.zeros(len(task_names), device=device)
        self.bad_grads = torch.zeros(len(self.params), dtype=torch.bool, device=device)
        self.bad_weights = torch.zeros(len(task_names), dtype=torch.bool, device=device)

    def _flags(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finite flags of the task losses [T] and of each parameter's gradient [P], in a few fused kernels:
        0 * g is 0 where g is finite and NaN where it is not, so the norm of 0 * g is 0 or NaN (exact, no
        overflow), and the foreach ops launch a handful of kernels for all parameters together."""
        loss_ok = torch.isfinite(losses)
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return loss_ok, self._true.reshape(1).expand(len(self.params))
        norms = iter(torch._foreach_norm(torch._foreach_mul(grads, 0.0)))
        per_param = [next(norms) if p.grad is not None else self._zero for p in self.params]
        return loss_ok, torch.isfinite(torch.stack(per_param))

    def observe(self, step: int, losses: torch.Tensor, where: str, weights: torch.Tensor | None = None) -> bool:
        """After backward: True to apply the step, False to skip it; NonFiniteError under `stop`.
        `weights` are the method's task weights: a Gram-based method gives NaN to a task whose gradient
        was non-finite (`min_norm` and friends), which names that task."""
        losses = losses.detach()
        loss_ok, grad_ok = self._flags(losses)
        weight_ok = torch.isfinite(weights.detach()) if weights is not None else torch.ones_like(loss_ok)
        ok = loss_ok.all() & grad_ok.all() & weight_ok.all()
        if self.immediate:
            if self.scaled:  # one host read of both flags
                good, overflow = torch.stack([ok, loss_ok.all() & ~grad_ok.all()]).tolist()
                if overflow:
                    return False
            else:
                good = bool(ok)
            if good:
                return True
            if self.policy == "skip":
                return False
            raise self.error(step, where, losses.tolist(), (~grad_ok).tolist(), (~weight_ok).tolist())
        new = ~ok & (self.first_bad < 0)
        self.first_bad = torch.where(new, step, self.first_bad)
        self.bad_losses = torch.where(new, losses.to(self.bad_losses.dtype), self.bad_losses)
        self.bad_grads = torch.where(new, ~grad_ok, self.bad_grads)
        self.bad_weights = torch.where(new, ~weight_ok, self.bad_weights)
        return True

    def check(self, where: Any) -> None:
        """Raise NonFiniteError if a bad step was recorded on the device (one sync); `where(step)` locates it."""
        if self.immediate:
            return
        step = int(self.first_bad.item())
        if step >= 0:
            raise self.error(step, where(step), self.bad_losses.tolist(), self.bad_grads.tolist(), self.bad_weights.tolist())

    def error(
        self, step: int, where: str, losses: list[float], bad_grads: list[bool], bad_weights: list[bool] | None = None
    ) -> NonFiniteError:
        bad_tasks = [name for name, v in zip(self.task_names, losses, strict=True) if not math.isfinite(v)]
        gradient_tasks = [name for name, bad in zip(self.task_names, bad_weights or [], strict=False) if bad]
        if not bad_tasks and gradient_tasks and len(gradient_tasks) < len(self.task_names):
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.task_names, losses, strict=True))
            what = ", ".join(f"task {name!r}" for name in gradient_tasks)
            message = f"non-finite gradient at step {step} ({where}) of {what}; task losses: {values}"
            return NonFiniteError(message, None, step=step, tasks=gradient_tasks)
        if bad_tasks:
            what = ", ".join(
                f"task {name!r} loss is {v}" for name, v in zip(self.task_names, losses, strict=True) if not math.isfinite(v)
            )
            message = f"non-finite loss at step {step} ({where}): {what}"
        else:
            params = [name for name, bad in zip(self.param_names, bad_grads, strict=True) if bad]
            shown = ", ".join(params[:3]) + (f" (+{len(params) - 3} more)" if len(params) > 3 else "")
            values = ", ".join(f"{n} {v:.4g}" for n, v in zip(self.task_names, losses, strict=True))
            message = f"non-finite gradient at step {step} ({where}) in {shown}; task losses: {values}"
        return NonFiniteError(message, None, step=step, tasks=bad_tasks)
