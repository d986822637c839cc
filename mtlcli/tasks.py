"""Tasks: a loss, metrics and which direction is better - the schema that drives every table.

The registry of losses and metrics by name (`LOSSES`, `METRICS`): the classification ones and the dense ones.
How a metric is computed (a device-side state summed over a split, read once) is in `mtlcli.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mtlcli.dense import DENSE_LOSSES, DENSE_METRICS
from mtlcli.metrics import CLASSIFICATION_METRICS, Accumulator, Metric
from mtlcli.names import LOSS_NAMES, METRIC_NAMES, check_implemented
from mtlcli.partial import PARTIAL_LOSSES, PARTIAL_METRICS

__all__ = ["LOSSES", "METRICS", "Accumulator", "Metric", "Task"]

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": lambda logits, target: F.cross_entropy(logits, target.long()),
    **DENSE_LOSSES,
    **PARTIAL_LOSSES,
}


METRICS: dict[str, Metric] = {**CLASSIFICATION_METRICS, **DENSE_METRICS, **PARTIAL_METRICS}
check_implemented("losses", LOSS_NAMES, LOSSES)
check_implemented("metrics", METRIC_NAMES, METRICS)


@dataclass(frozen=True)
class Task:
    """A task of a run: its loss and metrics, and where its target is (`target` array, `column` of it).

    `standardize` (mean, std): the target is in its own units and the model predicts (target - mean) / std; the loss
    compares standardised values, the metrics compare the prediction brought back to the target's units.
    """

    name: str
    loss: str
    metrics: tuple[str, ...]
    loss_scale: float = 1.0
    target: str = "labels"
    column: int | None = None
    num_outputs: int = 0
    standardize: tuple[float, float] | None = None

    def target_of(self, targets: dict[str, Tensor]) -> Tensor:
        array = targets[self.target]
        return array if self.column is None else array[:, self.column]

    def compute_loss(self, output: Tensor, target: Tensor) -> Tensor:
        if self.standardize is not None:
            mean, std = self.standardize
            target = (target - mean) / std
        return LOSSES[self.loss](output, target)

    def in_target_units(self, output: Tensor) -> Tensor:
        """The prediction in the target's units (what the metrics compare)."""
        if self.standardize is None:
            return output
        mean, std = self.standardize
        return output * std + mean
