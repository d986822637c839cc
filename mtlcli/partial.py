"""Per-sample losses and metrics where a sample may have no label for a task (tables, partially labelled data).

Convention: a class label is an integer [B] with `MISSING_LABEL` (-1) where the sample has no label for the task; a
regression target is a float [B] with NaN where it has none. Predictions are logits [B, C] and values [B, 1] (or [B]).

Each loss is the mean over the labelled samples of the batch only. A batch where a task has no labelled sample gives
that task the loss 0 with a zero gradient (not NaN): the masked terms are replaced by finite constants before any
arithmetic and weighted by zero, as the dense losses do (`mtlcli.dense`). The metric states count labelled samples
only (the accuracy's counts in `mtlcli.metrics` skip negative labels; the RMSE's state here skips NaN), so a metric
is exact over the labelled samples of a split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlcli.metrics import Accumulator, Metric

MISSING_LABEL = -1


def _values(pred: Tensor, target: Tensor) -> Tensor:
    """A [B, 1] prediction as [B], matching a [B] target."""
    if pred.ndim == target.ndim + 1 and pred.shape[-1] == 1:
        pred = pred.squeeze(-1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction of shape {tuple(pred.shape)} does not match target of shape {tuple(target.shape)}")
    return pred


def masked_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over the samples with a label (`MISSING_LABEL` skipped); 0 with zero gradient when none has."""
    labels = target.long()
    labelled = labels >= 0
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    terms = F.cross_entropy(logits, torch.where(labelled, labels, torch.zeros_like(labels)), reduction="none")
    return torch.where(labelled, terms, torch.zeros_like(terms)).sum() / labelled.sum().clamp_min(1)


def masked_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean (pred - target)^2 over the samples with a finite target; 0 with zero gradient when none has one."""
    pred = _values(pred, target)
    pred = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    valid = torch.isfinite(target)
    error = pred - torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
    return torch.where(valid, error * error, torch.zeros_like(error)).sum() / valid.sum().clamp_min(1)


PARTIAL_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "masked_cross_entropy": masked_cross_entropy,
    "masked_mse": masked_mse,
}


@torch.no_grad()
def squared_error_state(pred: Tensor, target: Tensor, _num_outputs: int) -> Tensor:
    """[sum (pred - target)^2, count] over the finite target values, in float64."""
    pred = _values(pred, target)
    valid = torch.isfinite(target)
    error = pred.to(torch.float64) - torch.where(valid, target, torch.zeros_like(target)).to(torch.float64)
    return torch.stack([torch.where(valid, error * error, torch.zeros_like(error)).sum(), valid.sum().to(torch.float64)])


def root_mean(state: Tensor, _num_outputs: int) -> float:
    """sqrt(sum / count) from a [sum, count] state; NaN when the count is 0."""
    total, count = float(state[0]), float(state[1])
    return math.sqrt(total / count) if count > 0 else math.nan


SQUARED_ERROR = Accumulator("squared_error", size=lambda _num_outputs: 2, state=squared_error_state)
PARTIAL_METRICS: dict[str, Metric] = {"rmse": Metric("rmse", False, SQUARED_ERROR, root_mean, "")}
