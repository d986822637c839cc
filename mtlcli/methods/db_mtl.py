"""DB-MTL, Dual-Balancing Multi-Task Learning (Lin, Ye, Xu, Shi & Zhang, 2023; LibMTL's `DB_MTL`).

Two balancings, as in LibMTL:

- loss scale: every task trains on log(L_t + eps) (eps = 1e-8) instead of L_t, so multiplying a loss
  by a constant only shifts its log by a constant and changes no gradient;
- gradient magnitude: with g_t the gradient of log(L_t + eps), an exponential moving average
  m_t <- g_t + beta_k (m_t - g_t), beta_k = beta / k^beta_sigma at the k-th (1-based) update and m_t = 0
  at the start (no bias correction, as in LibMTL), and the update

      sum_t alpha_t m_t,   alpha_t = max_tau ||m_tau|| / (||m_t|| + eps),

  i.e. every task's EMA gradient rescaled to the largest norm among them, then summed.

Where the gradients are taken (`level`). LibMTL takes them w.r.t. the shared parameters (`level:
shared` here: T backward passes, or one batched with `grads: batched`; the EMA is T x P floats). The
default `level: representation` takes dL_t/dz instead (the MGDA-UB trick: one backward per head and
ONE encoder backward, z.backward(sum_t alpha_t m_t); the EMA is T x numel(z) floats). Note that row i
of z is a different example at every step, so at this level the history part of m_t is a batch-level
momentum on the z-gradients, not a per-example one. The last, smaller batch of an epoch uses (and
updates) only the leading rows of the EMA; the other rows are kept for the next full batch.

Heads get the raw gradient of their own log-loss, d log(L_t + eps)/d theta_t = dL_t/d theta_t /
(L_t + eps), without alpha and without EMA (in LibMTL the per-task backward passes leave exactly
that on the heads, and only the shared gradients are replaced).

`backward` returns, for logging, the weight of this step's raw loss gradient dL_t in the shared update,
alpha_t (1 - beta_k) / (L_t + eps); the rest of the update (beta_k-weighted) is the history in the EMA.

The gradients of the log-losses are taken by the chain rule, d log(L_t + eps) = dL_t / (L_t + eps), from the
raw losses' gradients and the batch's losses: on N processes (torchrun) each rank holds a part of L_t, whose
log is not a part of log L_t, so the scale comes from the losses summed across the ranks and the method is the
same algorithm as on one process (`_tracked`: at the shared level the gradients are summed with the losses in
one all-reduce; the representation level is refused there).

Non-finite steps. If a loss or a per-task gradient is not finite, the EMA and the step count are left
as they were (a `torch.where` on the device, no host sync), while the update written to the
parameters is the unmasked one, so the trainer's guard still sees the non-finite values (the task's
returned weight is NaN). A step the trainer drops for another reason (a head's gradient) is undone by
`step_skipped`, which restores the EMA and step count from before the step (the previous EMA tensor is
kept until the next step: at level shared that is a second T x P buffer). The EMA and the step count
are in `state_dict`, so a resumed run continues bitwise-identically on the CPU.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._tracked import TrackedState, TrackedStateHooks, apply_update, store_rows, task_gradients
from mtlcli.methods.base import Step
from mtlcli.methods.options import DbMtlOptions

EPS = 1e-8  # LibMTL: log(losses + 1e-8) and alpha = max / (norm + 1e-8)


class DbMtl(TrackedStateHooks):
    """Log-losses, and an EMA of their gradients, each rescaled to the largest EMA norm, summed."""

    name: ClassVar[str] = "db-mtl"

    def __init__(self, options: DbMtlOptions | None = None) -> None:
        self.options = options or DbMtlOptions()
        self.tracked = TrackedState("DbMtl")

    def __repr__(self) -> str:
        o = self.options
        return f"DbMtl({o.describe_level()}, beta={o.beta}, beta_sigma={o.beta_sigma})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        # the EMA [T, rows, features] takes its shape (and dtype) from the first step's gradients
        self.tracked.setup(
            device,
            {
                "ema": torch.zeros(num_tasks, 0, 0, device=device),
                "step": torch.zeros((), dtype=torch.long, device=device),
            },
        )

    @property
    def ema(self) -> Tensor:
        """The EMA of the per-task log-loss gradients, [T, rows, features] (rows = 1 at level shared)."""
        return self.tracked.ready()["ema"]

    def backward(self, step: Step) -> Tensor:
        s = self.tracked.ready()
        self.tracked.previous = None  # release the state from before the last step before making a new one
        tasks = step.num_tasks
        grads = task_gradients(step, self.options)  # of the raw losses
        losses = step.summed_losses()  # the batch's (at the shared level they came with the gradients)
        scale = 1 / (losses.to(grads.grads.dtype) + EPS)  # d log(L_t + eps) / dL_t
        current = grads.grads * scale[:, None, None]
        rows = current.shape[1]
        before = s["ema"]
        old = self.tracked.fit(before, current, "DB-MTL's EMA")
        k = (s["step"] + 1).to(current.dtype)
        beta_k = self.options.beta / k**self.options.beta_sigma
        blend = current + beta_k * (old[:, :rows] - current)  # LibMTL's m = g + beta_k (m - g)

        flat = blend.reshape(tasks, -1)
        norms = torch.linalg.vector_norm(flat, dim=1)
        norm_ok = torch.isfinite(norms)
        top = torch.where(norm_ok, norms, torch.zeros_like(norms)).max()
        alpha = torch.where(norm_ok, top / (norms + EPS), torch.full_like(norms, float("nan")))
        apply_update(step, flat, grads, alpha, self.options, head_scale=scale)

        ok = torch.isfinite(losses).all() & norm_ok.all()  # a non-finite gradient makes its EMA norm non-finite
        self.tracked.previous = {"ema": before, "step": s["step"]}
        s["ema"] = store_rows(old, torch.where(ok, blend, old[:, :rows]))
        s["step"] = torch.where(ok, s["step"] + 1, s["step"])
        return (alpha * (1 - beta_k) * scale).detach()
