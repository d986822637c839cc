"""MoCo, stochastic multi-objective optimisation with gradient tracking (Fernando, Shen, Liu, Chaudhury,
Murugesan & Chen, ICLR 2023; LibMTL's `MoCo`).

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

Non-finite steps. If a loss or a per-task gradient is not finite, Y, lambda and the step count are left as
they were (a `torch.where` on the device, no host sync), while the update written to the parameters is the
unmasked one, so the trainer's guard still sees the non-finite values; the returned weights are then NaN
for the tasks at fault and 0 for the others, which names them. A step the trainer drops for another reason
is undone by `step_skipped`, which restores the state from before the step (kept until the next step: at
level shared that is a second T x P buffer). Y, lambda and the step count are in `state_dict`, so a resumed
run continues bitwise-identically on the CPU.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from mtlcli.methods._levels import Level
from mtlcli.methods._representation import RepresentationGrads, apply_representation_update, representation_grads
from mtlcli.methods._shared_params import GradsMode, SharedGrads, apply_shared_update, shared_grads
from mtlcli.methods.base import Options, Step
from mtlcli.methods.min_norm import project_simplex

EPS = 1e-8  # LibMTL: grads / (norm + 1e-8) * losses

Projection = Literal["softmax", "simplex"]


class MocoOptions(Options):
    level: Level = Field(
        "shared",
        description="the shared parameters (LibMTL's level; default) or the representation z (one encoder backward; "
        "the tracking then mixes the gradients of different examples)",
    )
    grads: GradsMode | None = Field(
        None, description="level shared only: per-task grads by T backwards or one batched backward (null: loop)"
    )
    beta: float = Field(0.5, ge=0, le=1, description="step of the gradient tracking y: beta / k^beta_sigma")
    beta_sigma: float = Field(0.5, ge=0, description="decay of the tracking step with the update count k")
    gamma: float = Field(0.1, ge=0, description="step of the task weights lambda: gamma / k^gamma_sigma")
    gamma_sigma: float = Field(0.5, ge=0, description="decay of the weights' step with the update count k")
    rho: float = Field(0.0, ge=0, description="l2 regularisation of lambda in its update")
    projection: Projection = Field(
        "softmax", description="back onto the simplex after the lambda step: softmax (LibMTL) or Euclidean (the paper)"
    )

    @field_validator("grads")
    @classmethod
    def _grads_only_at_shared_level(cls, value: GradsMode | None, info: ValidationInfo) -> GradsMode | None:
        if value is not None and info.data.get("level", "shared") != "shared":
            raise ValueError(
                "applies only at level shared (per-task gradients of the shared parameters); "
                "set level: shared, or drop grads (level representation needs one encoder backward)"
            )
        return value


class Moco:
    """Tracked per-task gradients Y (loss-length rescaled), weights lambda by one projected step, update Y^T lambda."""

    name: ClassVar[str] = "moco"

    def __init__(self, options: MocoOptions | None = None) -> None:
        self.options = options or MocoOptions()
        self.state: dict[str, Tensor] | None = None
        self._previous: dict[str, Tensor] | None = None
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        o = self.options
        grads = f", grads={o.grads or 'loop'!r}" if o.level == "shared" else ""
        return (
            f"Moco(level={o.level!r}{grads}, beta={o.beta}, beta_sigma={o.beta_sigma}, gamma={o.gamma}, "
            f"gamma_sigma={o.gamma_sigma}, rho={o.rho}, projection={o.projection!r})"
        )

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.device = device
        # Y [T, rows, features] takes its shape (and dtype) from the first step's gradients
        self.state = {
            "y": torch.zeros(num_tasks, 0, 0, device=device),
            "lambda": torch.full((num_tasks,), 1.0 / num_tasks, device=device),
            "step": torch.zeros((), dtype=torch.long, device=device),
        }
        self._previous = None

    def _ready(self) -> dict[str, Tensor]:
        if self.state is None:
            raise RuntimeError("Moco.setup(num_tasks, device) must run before training")
        return self.state

    @property
    def y(self) -> Tensor:
        """The tracked per-task gradients, [T, rows, features] (rows = 1 at level shared)."""
        return self._ready()["y"]

    @property
    def lambd(self) -> Tensor:
        """The task weights lambda [T], on the simplex."""
        return self._ready()["lambda"]

    def parameters(self) -> list[torch.nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self._ready().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._ready()
        for key in mine:
            mine[key] = torch.as_tensor(state[key]).to(self.device).clone()
        self._previous = None

    def step_skipped(self) -> None:
        """The trainer dropped this step: restore Y, lambda and the step count from before it."""
        if self._previous is not None and self.state is not None:
            self.state.update(self._previous)
            self._previous = None

    def _fit(self, y: Tensor, current: Tensor) -> Tensor:
        """Y with at least as many rows as `current` (new rows are 0, as every row is at the start)."""
        tasks, rows, features = current.shape
        if y.numel() == 0:
            return torch.zeros_like(current)
        if y.shape[0] != tasks or y.shape[2] != features:
            raise RuntimeError(
                f"MoCo's tracked gradients have shape {tuple(y.shape)} but this step's gradients {tuple(current.shape)}: "
                "the model, the tasks or the level changed since the state was made"
            )
        y = y.to(current.dtype)
        if y.shape[1] < rows:
            y = torch.cat([y, y.new_zeros(tasks, rows - y.shape[1], features)], dim=1)
        return y

    def _project(self, v: Tensor) -> Tensor:
        if self.options.projection == "softmax":
            return torch.softmax(v, dim=0)
        return project_simplex(v)

    def backward(self, step: Step) -> Tensor:
        s = self._ready()
        o = self.options
        self._previous = None  # release the state from before the last step before making a new one
        tasks = step.num_tasks
        if o.level == "representation":
            rep = representation_grads(step)
            current, head_grads = rep.z_grads.detach().reshape(tasks, step.z.shape[0], -1), rep.head_grads
        else:
            sh = shared_grads(step, o.grads or "loop")
            current, head_grads = sh.jacobian.detach().reshape(tasks, 1, -1), sh.head_grads
        rows = current.shape[1]
        losses = step.losses.detach().to(current.dtype)
        norms = torch.linalg.vector_norm(current.reshape(tasks, -1), dim=1)
        scaled = current / (norms + EPS)[:, None, None] * losses[:, None, None]  # LibMTL: g / (||g|| + eps) * L

        before_y, before_lambda = s["y"], s["lambda"]
        old = self._fit(before_y, current)
        lambd = before_lambda.to(current.dtype)
        k = (s["step"] + 1).to(current.dtype)
        beta_k = o.beta / k**o.beta_sigma
        gamma_k = o.gamma / k**o.gamma_sigma
        tracked = old[:, :rows] - beta_k * (old[:, :rows] - scaled)
        flat = tracked.reshape(tasks, -1)
        gram = flat @ flat.T
        new_lambda = self._project(lambd - gamma_k * (gram @ lambd + o.rho * lambd))

        if o.level == "representation":
            apply_representation_update(step, RepresentationGrads(flat, head_grads), new_lambda, head_grads="raw")
        else:
            apply_shared_update(step, SharedGrads(flat, head_grads), new_lambda, head_weights=None)

        task_ok = torch.isfinite(losses) & torch.isfinite(current.reshape(tasks, -1)).all(dim=1)
        ok = task_ok.all()
        kept = torch.where(ok, tracked, old[:, :rows])
        if rows < old.shape[1]:
            new_y = old.clone()
            new_y[:, :rows] = kept
        else:
            new_y = kept
        self._previous = {"y": before_y, "lambda": before_lambda, "step": s["step"]}
        s["y"] = new_y
        s["lambda"] = torch.where(ok, new_lambda, lambd)
        s["step"] = torch.where(ok, s["step"] + 1, s["step"])
        flagged = torch.where(task_ok, torch.zeros_like(new_lambda), torch.full_like(new_lambda, float("nan")))
        return torch.where(ok, new_lambda, flagged).detach()
