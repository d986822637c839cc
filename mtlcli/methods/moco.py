"""MoCo, stochastic multi-objective optimisation with gradient tracking (Fernando, Shen, Liu, Chaudhury,
Murugesan & Chen, ICLR 2023; LibMTL's `MoCo`, median-research-group/LibMTL, commit 4336804,
LibMTL/weighting/MoCo.py, whose update the defaults reproduce: tests/unit/methods/test_conformance_libmtl.py).

At the k-th (1-based) update, as in LibMTL:

- every task's gradient g_t is first rescaled to the length of its loss, h_t = g_t / (||g_t|| + eps) * L_t
  (eps = 1e-8; LibMTL does this, following the authors' code; the paper tracks g_t itself);
- the tracked gradients move towards them, y_t <- y_t - beta_k (y_t - h_t), beta_k = beta / k^beta_sigma,
  with y_t = 0 at the start;
- the task weights take one step on min_lambda 1/2 ||Y^T lambda||^2 + rho/2 ||lambda||^2,
  lambda <- P(lambda - gamma_k (Y Y^T + rho I) lambda), gamma_k = gamma / k^gamma_sigma, lambda = 1/T at the
  start; P is a softmax in LibMTL (`projection: softmax`, the default) and the Euclidean projection on the
  simplex in the paper (`projection: simplex`);
- the shared update is Y^T lambda, with the new Y and lambda.

Where the gradients are taken (`level`). LibMTL takes them w.r.t. the shared parameters (`level: shared`,
the default: T backward passes, or one batched with `grads: batched`; Y is T x P floats). `level:
representation` takes dL_t/dz instead (one backward per head and one encoder backward z.backward(Y^T
lambda); Y is T x numel(z) floats); LibMTL refuses this. Row i of z is a different example at every step,
so the tracking then mixes the z-gradients of different examples, and the last, smaller batch of an epoch
uses (and updates) only the leading rows of Y; the other rows are kept for the next full batch.

Heads get the raw gradient of their own loss dL_t/dtheta_t (in LibMTL the per-task backward passes leave
exactly that on the heads, and only the shared gradients are replaced).

`backward` returns lambda, the weights of the tracked gradients in the shared update (as LibMTL does).

On N processes (torchrun) it is the same algorithm as on one, with the batch's losses (summed across the
ranks): at the shared level the gradients are summed with the losses in one all-reduce (`_tracked`); the
representation level is refused there (Y would have each rank's rows of the batch).

Non-finite steps. If a loss or a per-task gradient is not finite, Y, lambda and the step count are left as
they were (a `torch.where` on the device, no host sync), while the update written to the parameters is the
unmasked one, so the trainer's guard still sees the non-finite values; the returned weights are then NaN
for the tasks at fault and 0 for the others, which names them. A step the trainer drops for another reason
is undone by `step_skipped`, which restores the state from before the step (kept until the next step: at
level shared that is a second T x P buffer). Y, lambda and the step count are in `state_dict`, so a resumed
run continues bitwise-identically on the CPU.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._tracked import TrackedState, TrackedStateHooks, apply_update, store_rows, task_gradients
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import project_simplex
from mtlcli.methods.options import MocoOptions

EPS = 1e-8  # LibMTL: grads / (norm + 1e-8) * losses


class Moco(TrackedStateHooks):
    """Tracked per-task gradients Y (loss-length rescaled), weights lambda by one projected step, update Y^T lambda."""

    name: ClassVar[str] = "moco"

    def __init__(self, options: MocoOptions | None = None) -> None:
        self.options = options or MocoOptions()
        self.tracked = TrackedState("Moco")

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Moco({o.describe_level()}, beta={o.beta}, beta_sigma={o.beta_sigma}, gamma={o.gamma}, "
            f"gamma_sigma={o.gamma_sigma}, rho={o.rho}, projection={o.projection!r})"
        )

    def setup(self, num_tasks: int, device: torch.device) -> None:
        # Y [T, rows, features] takes its shape (and dtype) from the first step's gradients
        self.tracked.setup(
            device,
            {
                "y": torch.zeros(num_tasks, 0, 0, device=device),
                "lambda": torch.full((num_tasks,), 1.0 / num_tasks, device=device),
                "step": torch.zeros((), dtype=torch.long, device=device),
            },
        )

    @property
    def y(self) -> Tensor:
        """The tracked per-task gradients, [T, rows, features] (rows = 1 at level shared)."""
        return self.tracked.ready()["y"]

    @property
    def lambd(self) -> Tensor:
        """The task weights lambda [T], on the simplex."""
        return self.tracked.ready()["lambda"]

    def _project(self, v: Tensor) -> Tensor:
        if self.options.projection == "softmax":
            return torch.softmax(v, dim=0)
        return project_simplex(v)

    def backward(self, step: Step) -> Tensor:
        s = self.tracked.ready()
        o = self.options
        self.tracked.previous = None  # release the state from before the last step before making a new one
        tasks = step.num_tasks
        grads = task_gradients(step, o)
        current = grads.grads
        rows = current.shape[1]
        losses = step.summed_losses().to(current.dtype)  # the batch's (at the shared level they came with J)
        norms = torch.linalg.vector_norm(current.reshape(tasks, -1), dim=1)
        scaled = current / (norms + EPS)[:, None, None] * losses[:, None, None]  # LibMTL: g / (||g|| + eps) * L

        before_y, before_lambda = s["y"], s["lambda"]
        old = self.tracked.fit(before_y, current, "MoCo's tracked gradients")
        lambd = before_lambda.to(current.dtype)
        k = (s["step"] + 1).to(current.dtype)
        beta_k = o.beta / k**o.beta_sigma
        gamma_k = o.gamma / k**o.gamma_sigma
        tracked = old[:, :rows] - beta_k * (old[:, :rows] - scaled)
        flat = tracked.reshape(tasks, -1)
        gram = flat @ flat.T
        new_lambda = self._project(lambd - gamma_k * (gram @ lambd + o.rho * lambd))
        apply_update(step, flat, grads, new_lambda, o)

        task_ok = torch.isfinite(losses) & torch.isfinite(norms)  # a non-finite gradient has a non-finite norm
        ok = task_ok.all()
        self.tracked.previous = {"y": before_y, "lambda": before_lambda, "step": s["step"]}
        s["y"] = store_rows(old, torch.where(ok, tracked, old[:, :rows]))
        s["lambda"] = torch.where(ok, new_lambda, lambd)
        s["step"] = torch.where(ok, s["step"] + 1, s["step"])
        flagged = torch.where(task_ok, torch.zeros_like(new_lambda), torch.full_like(new_lambda, float("nan")))
        return torch.where(ok, new_lambda, flagged).detach()
