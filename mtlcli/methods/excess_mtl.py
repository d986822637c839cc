"""ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024, Eqs. 6, 7 and 9,
Algorithm 1; authors' code: uiuctml/ExcessMTL (formerly yifei-he/ExcessMTL), commit b179956,
`LibMTL/LibMTL/weighting/ExcessMTL.py`, the same in median-research-group/LibMTL, commit 4336804,
`LibMTL/weighting/ExcessMTL.py`; TorchJD 0.18's `aggregation/_excess_mtl.py`).

Task weights follow the tasks' estimated excess risks (distance to convergence) instead of their losses, so a
task with a large Bayes error (label noise) does not take over. With g_t this step's task gradient:

    S_t <- S_t + g_t^2                                  (elementwise; AdaGrad's diagonal Hessian estimate, Eq. 7)
    E_t = sum_j g_tj^2 / sqrt(S_tj + 1e-7)            (excess risk ~ g^T H^-1 g / 2, Eq. 6; the authors drop the 1/2)
    w_t <- T w_t exp(eta E_t / E_t(0)) / sum_s w_s exp(eta E_s / E_s(0))      (Eq. 9, from w = 1)

with E_t(0) the first step's excess risk (the scale processing of Section 3.2). As in the authors' code the first
step only sets E(0) and keeps w = 1; the update is then sum_t w_t L_t's backward: shared parameters get
sum_t w_t g_t and each head its w_t-scaled gradient. The weights sum to T (the authors' scale, that of summed
losses); eta = `robust_step_size`, 1e-2 by default as in the authors' (and LibMTL's) config.

Per-task information: the elementwise gradients, not only their Gram matrix (S is T x P). Level `shared` (default,
the authors') takes dL_t/dtheta_sh by T backwards or one batched backward; S is then T x P floats (plus the copy
from before the step that `step_skipped` restores). Level `representation` takes dL_t/dz and sums it over the
batch, as the `rep_grad` branch of the authors' code intends (S is T x features), with one encoder backward;
that branch has no working reference: LibMTL's `_compute_grad` implements only mode 'backward' for representations,
so the 'autograd' gradients ExcessMTL asks for stay zero there.

Differences, all where the authors' code breaks: Eq. 9's normalisation is computed as T softmax(log w + eta E /
E(0)), the same number, which saturates where the authors' exp overflows to inf and NaN; a task whose first
excess risk is 0 (a zero gradient: the authors' E / E(0) is then inf or NaN, and NaN weights for good) takes its
first positive excess risk as E(0) and the ratio 0 until then; a step whose
gradients or losses are not finite changes no state (a `torch.where`, no host sync), while its update still
carries the non-finite values to the trainer's guard. S, E(0), w and the step count are checkpointed.
TorchJD differs from the authors: weights on the simplex (sum 1), an update already at the first call from the
raw E, 1e-7 added to E(0), and an optional warm-up (`n_warmup_steps`, the paper's Appendix C.1), not offered here.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli import distributed
from mtlcli.methods._representation import RepresentationGrads, apply_representation_update
from mtlcli.methods._shared_params import SharedGrads, apply_shared_update
from mtlcli.methods._tracked import TrackedState, TrackedStateHooks, task_gradients
from mtlcli.methods.base import Step
from mtlcli.methods.options import ExcessMtlOptions

EPS = 1e-7  # the authors': h = sqrt(S + 1e-7)


def excess_risks(grads: Tensor, squared_sum: Tensor) -> Tensor:
    """E_t = sum_j g_tj^2 / sqrt(S_tj + 1e-7) for gradients [T, F] and the accumulated squares S [T, F] (this
    step's included)."""
    return (grads * grads / torch.sqrt(squared_sum + EPS)).sum(dim=-1)


def exponentiated_update(weights: Tensor, ratio: Tensor, step_size: float) -> Tensor:
    """T w_t exp(eta r_t) / sum_s w_s exp(eta r_s), in log space (saturates instead of overflowing)."""
    logits = torch.log(weights) + step_size * ratio
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)
    return weights.shape[0] * torch.softmax(logits, dim=0)


def weight_step(prior: Tensor, initial: Tensor, excess: Tensor, *, first: Tensor, step_size: float) -> tuple[Tensor, Tensor]:
    """(the new weights [T], the baselines E(0) [T]) from the weights before the step, the baselines so far (0: not
    set yet), this step's excess risks and whether it is the first step (which only sets the baselines)."""
    initial = torch.where(initial > 0, initial, excess)  # each task's first positive excess risk
    ratio = torch.where(initial > 0, excess / initial.clamp_min(torch.finfo(excess.dtype).tiny), torch.zeros_like(excess))
    return torch.where(first, prior, exponentiated_update(prior, ratio, step_size)), initial


class ExcessMtl(TrackedStateHooks):
    """Weights by an exponentiated-gradient step on the tasks' relative excess risks; sum_t w_t L_t."""

    name: ClassVar[str] = "excess-mtl"

    def __init__(self, options: ExcessMtlOptions | None = None) -> None:
        self.options = options or ExcessMtlOptions()
        self.tracked = TrackedState("ExcessMtl")

    def __repr__(self) -> str:
        o = self.options
        return f"ExcessMtl({o.describe_level()}, robust_step_size={o.robust_step_size})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        # S [T, 1, features] takes its shape (and dtype) from the first step's gradients
        self.tracked.setup(
            device,
            {
                "squared_sum": torch.zeros(num_tasks, 0, 0, device=device),
                "initial": torch.zeros(num_tasks, device=device),
                "weights": torch.ones(num_tasks, device=device),
                "step": torch.zeros((), dtype=torch.long, device=device),
            },
        )

    @property
    def task_weights(self) -> Tensor:
        """The current weights w [T] (sum T)."""
        return self.tracked.ready()["weights"]

    def backward(self, step: Step) -> Tensor:
        s = self.tracked.ready()
        self.tracked.previous = None  # release the state from before the last step before making a new one
        tasks = step.num_tasks
        gradients = task_gradients(step, self.options)
        current, head_grads = gradients.grads, gradients.head_grads  # [T, rows, features], each head's own
        # the batch sum at level representation (rows = 1 at level shared, where J is already the batch's on N
        # processes): summed across the ranks, so that its elementwise squares are the batch's gradient's
        grads = current.sum(dim=1, keepdim=True)
        if self.options.level == "representation":
            grads = distributed.current().sum_(grads)
        old = self.tracked.fit(s["squared_sum"], grads, "ExcessMTL's squared-gradient sum")
        squared_sum = old + grads * grads
        excess = excess_risks(grads[:, 0], squared_sum[:, 0])

        prior = s["weights"].to(excess.dtype)
        weights, initial = weight_step(
            prior, s["initial"].to(excess.dtype), excess, first=s["step"] == 0, step_size=self.options.robust_step_size
        )

        flat = current.reshape(tasks, -1)
        if self.options.level == "representation":
            apply_representation_update(step, RepresentationGrads(flat, head_grads), weights, head_grads="weighted")
        else:
            apply_shared_update(step, SharedGrads(flat, head_grads, share=gradients.share), weights, head_weights=weights)

        ok = torch.isfinite(step.losses.detach()).all() & torch.isfinite(current).all()
        self.tracked.previous = dict(s)
        s["squared_sum"] = torch.where(ok, squared_sum, old)
        s["initial"] = torch.where(ok, initial, s["initial"].to(excess.dtype))
        s["weights"] = torch.where(ok, weights, prior)
        s["step"] = torch.where(ok, s["step"] + 1, s["step"])
        return weights.detach()
