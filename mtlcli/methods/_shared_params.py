"""Per-task gradients on the shared parameters theta_sh (exact MGDA, exact IMTL-G, PCGrad).

`shared_grads` returns the Jacobian J [T, P] of the task losses w.r.t. the flattened shared
parameters and each head's own gradient, from one forward pass, in one of two ways:

- ``loop``: T backward passes (`torch.autograd.grad` with `retain_graph`), one per task;
- ``batched``: one vmapped backward over the T losses
  (`torch.autograd.grad(losses, params, grad_outputs=eye(T), is_grads_batched=True)`).

Both give the same J to float tolerance. Only J (which the update `sum_t w_t g_t` needs) and its
T x T Gram matrix are kept; the update is written straight into `.grad`.

Across the ranks of a torchrun job each rank's row t is a partial sum of dL_t/dtheta_sh, and the inner product
of sums is not the sum of inner products: `batch_shared_grads` all-reduces J itself (with the step's losses in
the T numbers its buffer keeps after it: one all-reduce), so that every rank holds the batch's J, and each rank
then writes 1/N of the shared update (`SharedGrads.share`), which the trainer's gradient all-reduce adds up.

Precision: the parameters, and so J, are float32 under autocast; under fp16 J is divided by the step's loss
scale as soon as it is built (`Step.grad_scale`; exact: the scale is a power of two), so the Gram matrices, the
solvers and the weights see the true gradients, and the shared update is multiplied back when it is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtlcli import distributed
from mtlcli.methods._representation import HeadGrads, WeightsFn, _accumulate, _take
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import finite, flag_non_finite
from mtlcli.methods.options import GradsMode, ParameterGroups

if TYPE_CHECKING:
    from mtlcli.models import MultiTaskModel


@dataclass
class SharedGrads:
    """`jacobian` [T, P]: row t is dL_t/dtheta_sh flattened (true: unscaled); `head_grads[t]`: dL_t/dtheta_t (as
    autograd gave them: times the step's `grad_scale` under fp16).

    `share`: the part of the shared update sum_t w_t J_t this rank writes (1/N once J holds the batch's
    Jacobian on each of N ranks); `buffer`: J's storage, T numbers longer than J (the losses travel there).
    """

    jacobian: Tensor
    head_grads: list[list[Tensor | None]]
    share: float = 1.0
    buffer: Tensor | None = None

    def gram(self) -> Tensor:
        return self.jacobian @ self.jacobian.T


def _flat(
    grads: tuple[Tensor | None, ...], params: list[nn.Parameter], lead: tuple[int, ...] = (), out: Tensor | None = None
) -> Tensor:
    parts = [
        (g if g is not None else torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device)).reshape(*lead, -1)
        for g, p in zip(grads, params, strict=True)
    ]
    return torch.cat(parts, dim=-1) if out is None else torch.cat(parts, dim=-1, out=out)


def _write_row(row: Tensor, grads: tuple[Tensor | None, ...], params: list[nn.Parameter]) -> None:
    """Copy one task's parameter gradients into its row of J (zeros for parameters it does not reach)."""
    offset = 0
    for g, p in zip(grads, params, strict=True):
        part = row[offset : offset + p.numel()]
        if g is None:
            part.zero_()
        else:
            part.copy_(g.reshape(-1))
        offset += p.numel()


def shared_grads(step: Step, mode: GradsMode = "loop") -> SharedGrads:
    """J = dL/dtheta_sh [T, P] (this rank's part) and the heads' own gradients, keeping the graph for later backwards."""
    shared = step.model.shared_parameters()
    heads = step.task_parameters()
    t, size = len(heads), sum(p.numel() for p in shared)
    # J lives in a buffer T numbers longer: the losses can join its all-reduce without a copy of J
    buffer = torch.empty(t * size + t, dtype=shared[0].dtype, device=shared[0].device)
    jacobian = buffer[: t * size].view(t, size)
    if mode == "loop":  # each row is written into J as it comes: peak memory J + one task's gradients
        head_grads = []
        for i, params in enumerate(heads):
            grads = torch.autograd.grad(step.task_loss(i), [*shared, *params], retain_graph=True, allow_unused=True)
            _write_row(jacobian[i], grads[: len(shared)], shared)
            head_grads.append(list(grads[len(shared) :]))
            del grads
        _unscale(step, jacobian)
        return SharedGrads(jacobian, head_grads, buffer=buffer)
    if mode == "batched":
        eye = torch.eye(t, dtype=step.losses.dtype, device=step.losses.device)
        every_head = [p for params in heads for p in params]
        grads = torch.autograd.grad(
            step.losses,
            [*shared, *every_head],
            grad_outputs=eye,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        _flat(grads[: len(shared)], shared, (t,), out=jacobian)
        head_grads, offset = [], len(shared)
        for i, params in enumerate(heads):  # head i only feels loss i: keep row i of its batched grads
            head_grads.append([g[i] if g is not None else None for g in grads[offset : offset + len(params)]])
            offset += len(params)
        _unscale(step, jacobian)
        return SharedGrads(jacobian, head_grads, buffer=buffer)
    raise ValueError(f"unknown grads mode {mode!r}; choose loop or batched")


def _unscale(step: Step, jacobian: Tensor) -> None:
    """J as the true gradients, in place (`Step.grad_scale`: fp16 training's loss scale)."""
    if step.grad_scale is not None:
        jacobian.div_(step.grad_scale.to(jacobian.dtype))


def batch_shared_grads(step: Step, mode: GradsMode = "loop") -> SharedGrads:
    """`shared_grads` with the batch's J on every rank of a torchrun job: J summed across the ranks, the step's
    losses (`Step.summed_losses`) in the same all-reduce when not yet summed; each rank writes 1/N of the shared
    update. On one process, `shared_grads`."""
    grads = shared_grads(step, mode)
    job = distributed.current()
    if not job.active:
        return grads
    t = step.num_tasks
    if step.summed is None and grads.buffer is not None:
        grads.buffer[-t:].copy_(step.losses.detach())
        job.sum_(grads.buffer)
        step.summed = grads.buffer[-t:].to(step.losses.dtype, copy=True)
    else:
        job.sum_(grads.jacobian)
    grads.share = 1.0 / job.world
    return grads


def apply_shared_update(
    step: Step,
    grads: SharedGrads,
    shared_weights: Tensor,
    *,
    head_weights: Tensor | None,
    group_sizes: Sequence[int] | None = None,
) -> None:
    """theta_sh gets sum_t shared_weights_t g_t (this rank's `share` of it); head t gets head_weights_t
    dL_t/dtheta_t (raw if None). With `group_sizes` (consecutive blocks of J's columns, see `parameter_groups`),
    `shared_weights` is [K, T] and block k of the shared update is sum_t shared_weights[k, t] g_t[block k]."""
    shared = step.model.shared_parameters()
    weights = step.rescaled(shared_weights.detach().to(grads.jacobian.dtype) * grads.share)  # .grad holds scaled ones
    if group_sizes is None:
        combined = weights @ grads.jacobian
    else:
        blocks = grads.jacobian.split(list(group_sizes), dim=1)
        combined = torch.cat([w @ block for w, block in zip(weights, blocks, strict=True)])
    offset = 0
    for p in shared:
        n = p.numel()
        _accumulate(p, combined[offset : offset + n].view_as(p))
        offset += n
    for t, (params, grads_t) in enumerate(zip(step.task_parameters(), grads.head_grads, strict=True)):
        for p, g in zip(params, grads_t, strict=True):
            if g is None:
                continue
            if head_weights is not None:  # a fresh product: stored without another copy
                _take(p, g * head_weights[t].detach())
            else:  # may be a view of the batched gradients: copied
                _accumulate(p, g)


def head_weights_for(weights: Tensor, head_grads: HeadGrads) -> Tensor | None:
    return weights if head_grads == "weighted" else None


def gram_step_on_shared_parameters(step: Step, weights: WeightsFn, *, grads: GradsMode, head_grads: HeadGrads) -> Tensor:
    """The whole step of a Gram-based method on dL_t/dtheta_sh: per-task gradients (loop or batched),
    weights from their Gram matrix, then sum_t alpha_t g_t as the shared update. Returns the weights."""
    task_grads = batch_shared_grads(step, grads)
    gram = task_grads.gram()
    losses = step.summed_losses()
    alpha = flag_non_finite(gram, weights(losses, finite(gram)))
    apply_shared_update(step, task_grads, alpha, head_weights=head_weights_for(alpha, head_grads))
    return alpha.detach()


GroupWeightsFn = Callable[[Tensor, Tensor], Tensor]  # (losses [T], Gram matrices [K, T, T]) -> weights [K, T]


def parameter_groups(model: MultiTaskModel, kind: ParameterGroups) -> list[int]:
    """The sizes of consecutive blocks of J's columns (the shared parameters flattened in order): one block
    (`whole`), one per module's own parameters (`layer`: LibMTL's "all_layer" for leaf modules; parameters a
    container module holds itself make a block of their own) or one per parameter tensor (`matrix`)."""
    shared = model.shared_parameters()
    if kind == "whole":
        return [sum(p.numel() for p in shared)]
    if kind == "matrix":
        return [p.numel() for p in shared]
    if kind != "layer":
        raise ValueError(f"unknown parameter groups {kind!r}; choose whole, layer or matrix")
    owner: dict[int, int] = {}
    for index, module in enumerate(model.encoder.modules()):
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), index)
    sizes: list[int] = []
    last = None
    for p in shared:  # parameters() visits module by module: each module's parameters are consecutive
        if owner[id(p)] == last:
            sizes[-1] += p.numel()
        else:
            sizes.append(p.numel())
            last = owner[id(p)]
    return sizes


def group_grams(jacobian: Tensor, group_sizes: Sequence[int]) -> Tensor:
    """[K, T, T]: the Gram matrix of each block of J's columns (they add up to J J^T)."""
    return torch.stack([block @ block.T for block in jacobian.split(list(group_sizes), dim=1)])


def grouped_gram_step_on_shared_parameters(
    step: Step, weights: GroupWeightsFn, group_sizes: Sequence[int], *, grads: GradsMode
) -> Tensor:
    """`gram_step_on_shared_parameters` with J's columns cut into blocks (parameter groups, `parameter_groups`):
    each block's Gram matrix gets its own weights w [K, T] and block k of the shared update is
    sum_t w[k, t] g_t[block k]; heads get their raw gradients. Returns the weights averaged over the blocks in
    proportion to their sizes (for logging), NaN-flagged as `flag_non_finite` does."""
    task_grads = batch_shared_grads(step, grads)  # as in gram_step_on_shared_parameters: the batch's J
    grams = group_grams(task_grads.jacobian, group_sizes)
    alpha = weights(step.summed_losses(), finite(grams))
    apply_shared_update(step, task_grads, alpha, head_weights=None, group_sizes=group_sizes)
    sizes = torch.tensor(list(group_sizes), dtype=alpha.dtype, device=alpha.device)
    return flag_non_finite(grams.sum(dim=0), sizes @ alpha / sizes.sum()).detach()
