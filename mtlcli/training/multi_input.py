"""Multi-input training (LibMTL's `multi_input: True`, examples/office): each task draws its own batches.

A multi-input dataset (`DatasetSpec.multi_input`) stores every task's images in one split, a row labelled for its
own task only (`MISSING_LABEL` elsewhere). `TaskStreams` holds each task's rows of the training split and where it
is in them. One step takes the next `batch_size` rows of every task; a task without a full batch left starts its
next pass over its rows, in a new order, at once (LibMTL's `trainer.py`: `train_batch = max(len(loader))`, each
task's loader restarting when exhausted; examples/office/create_dataset.py: `drop_last=True` in training). An
epoch is therefore the steps of the largest task, max_t floor(n_t / B); every batch holds B rows of every task.

The step's batch is the tasks' batches together, their rows interleaved (task 0's first row, task 1's first row,
...), so halves of the batch (`Step.samples`) and the ranks' shards (`task_shard`) hold every task in proportion.
The encoder sees the batch at once (batch-norm statistics over all tasks' rows; LibMTL runs one forward per task);
each task's loss and metrics see only its rows (the masked losses), so its head learns only from its own
representation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlcli.distributed import Distributed


class TaskStreams:
    """Each task's rows of the training split, its current order over them and the next batch in it."""

    def __init__(self, rows: Sequence[Tensor]) -> None:
        self.rows = list(rows)
        self.perms: list[Tensor | None] = [None] * len(self.rows)
        self.cursors = [0] * len(self.rows)

    @classmethod
    def of(cls, labels: Sequence[Tensor]) -> TaskStreams:
        """From each task's label column [N] over the split: its rows are those with a label (>= 0)."""
        return cls([torch.nonzero(column >= 0).flatten() for column in labels])

    def steps(self, batch_size: int) -> int:
        """The steps of an epoch: the largest task's full batches."""
        return max(len(rows) // batch_size for rows in self.rows)

    def plan(self, batch_size: int, steps: int, generator: torch.Generator) -> tuple[Tensor, list[int]]:
        """The epoch's rows, step after step (flat), and the step bounds [steps + 1]; advances every task."""
        chunks: list[Tensor] = []
        bounds = [0]
        for _ in range(steps):
            parts, keys = [], []
            for t, rows in enumerate(self.rows):
                n = len(rows)
                if self.perms[t] is None or (self.cursors[t] + 1) * batch_size > n:  # no full batch left
                    self.perms[t] = rows[torch.randperm(n, generator=generator, device=generator.device).to(rows.device)]
                    self.cursors[t] = 0
                perm = self.perms[t]
                assert perm is not None
                part = perm[self.cursors[t] * batch_size : (self.cursors[t] + 1) * batch_size]
                self.cursors[t] += 1
                parts.append(part)
                keys.append(torch.arange(len(part), device=part.device) * len(self.rows) + t)
            order = torch.argsort(torch.cat(keys))  # interleave the tasks' rows
            chunks.append(torch.cat(parts)[order])
            bounds.append(bounds[-1] + len(order))
        return torch.cat(chunks), bounds

    def state_dict(self) -> dict[str, Any]:
        return {"perms": list(self.perms), "cursors": list(self.cursors)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["perms"]) != len(self.rows):
            raise ValueError(f"the checkpoint has {len(state['perms'])} task streams, this run {len(self.rows)}")
        device = self.rows[0].device if self.rows else torch.device("cpu")
        self.perms = [p.to(device) if p is not None else None for p in state["perms"]]
        self.cursors = [int(c) for c in state["cursors"]]


def task_shard(job: Distributed, tasks: int) -> Callable[[Tensor], Tensor]:
    """This rank's rows of a planned step: samples r, r + N, ... of every task.

    A step's rows come in groups of T, one row of each task (`TaskStreams.plan`); rank r takes groups r, r + N, ...
    So every rank holds the same number of rows of every task (B // N or B // N + 1, B % N != 0 included), its
    share of each task's rows is its share of the batch, and the ranks' masked per-task mean losses, each weighted
    by its share of the batch (the trainer), add up to the batch's. The plan does not depend on N: a run resumes
    mid-epoch on any number of processes. One process: the step's rows as they are."""
    if not job.active:
        return job.shard
    rank, world = job.rank, job.world
    return lambda index: index.view(-1, tasks)[rank::world].reshape(-1)
