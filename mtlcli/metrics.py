"""Metrics read from device-side states: the generic mechanism and the classification metrics.

A metric is read from a state summed over the batches of a split on the device (counts, a confusion matrix,
an angle histogram), so evaluation is exact over the whole split (not a mean of batch means) and needs one
host sync per split. Metrics that share a state share its `Accumulator`, computed once. The dense metrics
(`mtlcli.dense`) and any new family build on the two classes here; `mtlcli.tasks.METRICS` lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ARGMAX_COUNTS", "CLASSIFICATION_METRICS", "Accumulator", "Metric"]


@dataclass(frozen=True)
class Accumulator:
    """A device-side state: `size(num_outputs)` entries, `state(prediction, target, num_outputs)` per batch."""

    name: str
    size: Callable[[int], int]
    state: Callable[[Tensor, Tensor, int], Tensor]


@dataclass(frozen=True)
class Metric:
    """A metric read on the host from the summed state of its accumulator: `read(state, num_outputs) -> float`."""

    name: str
    higher_is_better: bool
    accumulator: Accumulator
    read: Callable[[Tensor, int], float]
    unit: str


def _argmax_counts(logits: Tensor, target: Tensor, _classes: int) -> Tensor:
    """[correct, labelled samples] of a classifier's argmax; a negative label (a sample without one) is not counted."""
    labels = target.long()
    labelled = labels >= 0
    correct = ((logits.argmax(dim=1) == labels) & labelled).sum()
    return torch.stack([correct.to(torch.float64), labelled.sum().to(torch.float64)])


ARGMAX_COUNTS = Accumulator("argmax_counts", lambda _classes: 2, _argmax_counts)


def _percent(part: Tensor, total: Tensor) -> float:
    return float(part) * (100.0 / max(float(total), 1.0))


CLASSIFICATION_METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", True, ARGMAX_COUNTS, lambda s, _c: _percent(s[0], s[1]), "%"),
    "error": Metric("error", False, ARGMAX_COUNTS, lambda s, _c: _percent(s[1] - s[0], s[1]), "%"),
}
