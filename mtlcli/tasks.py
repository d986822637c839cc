"""Tasks: a loss, metrics and which direction is better - the schema that drives every table.

A metric is read from a state summed over the batches of a split on the device (counts, a confusion
matrix, an angle histogram), so evaluation is exact over the whole split (not a mean of batch means)
and needs one host sync per split. Metrics that share a state share its `Accumulator`, computed once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlcli.names import LOSS_NAMES, METRIC_NAMES, check_implemented
from mtlcli.dense import DENSE_LOSSES, DENSE_METRICS, Accumulator
from mtlcli.dense import DenseMetric as Metric

__all__ = ["LOSSES", "METRICS", "Accumulator", "Metric", "Task"]

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": lambda logits, target: F.cross_entropy(logits, target.long()),
    **DENSE_LOSSES,
}


def _argmax_counts(logits: Tensor, target: Tensor, _classes: int) -> Tensor:
    """[correct, samples] of a classifier's argmax."""
    correct = (logits.argmax(dim=1) == target.long()).sum()
    return torch.stack([correct.to(torch.float64), torch.tensor(float(len(target)), dtype=torch.float64, device=logits.device)])


ARGMAX_COUNTS = Accumulator("argmax_counts", lambda _classes: 2, _argmax_counts)


def _percent(part: Tensor, total: Tensor) -> float:
    return float(part) * (100.0 / max(float(total), 1.0))


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", True, ARGMAX_COUNTS, lambda s, _c: _percent(s[0], s[1]), "%"),
    "error": Metric("error", False, ARGMAX_COUNTS, lambda s, _c: _percent(s[1] - s[0], s[1]), "%"),
    **DENSE_METRICS,
}
check_implemented("losses", LOSS_NAMES, LOSSES)
check_implemented("metrics", METRIC_NAMES, METRICS)


@dataclass(frozen=True)
class Task:
    """A task of a run: its loss and metrics, and where its target is (`target` array, `column` of it)."""

    name: str
    loss: str
    metrics: tuple[str, ...]
    loss_scale: float = 1.0
    target: str = "labels"
    column: int | None = None
    num_outputs: int = 0

    def target_of(self, targets: dict[str, Tensor]) -> Tensor:
        array = targets[self.target]
        return array if self.column is None else array[:, self.column]

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        return LOSSES[self.loss](output, target)
