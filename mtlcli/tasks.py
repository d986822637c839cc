"""Tasks: a loss, metrics and which direction is better - the schema that drives every table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": lambda logits, target: F.cross_entropy(logits, target.long()),
}


@dataclass(frozen=True)
class Metric:
    """A metric accumulated as (sum, count) over batches, so evaluation needs one sync per split."""

    name: str
    higher_is_better: bool
    batch_sum: Callable[[Tensor, Tensor], Tensor]
    unit: str = "%"


def _correct(logits: Tensor, target: Tensor) -> Tensor:
    return (logits.argmax(dim=1) == target.long()).sum()


def _wrong(logits: Tensor, target: Tensor) -> Tensor:
    return (logits.argmax(dim=1) != target.long()).sum()


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", higher_is_better=True, batch_sum=_correct),
    "error": Metric("error", higher_is_better=False, batch_sum=_wrong),
}


@dataclass(frozen=True)
class Task:
    name: str
    loss: str
    metrics: tuple[str, ...]
    loss_scale: float = 1.0

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return LOSSES[self.loss](output, target)


def metric_percent(total: Tensor, count: int) -> Tensor:
    return total.to(torch.float64) * (100.0 / max(count, 1))
