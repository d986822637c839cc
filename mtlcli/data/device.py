"""A split on the training device: images and targets as tensors, batched and normalised there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

Batch = tuple[Tensor, dict[str, Tensor]]  # normalised float images [B, C, H, W] on the device, targets by name
Feed = Iterator[Batch]


def whole(index: Tensor) -> Tensor:
    """One process's share of a batch: all of it (`EpochPlan.shard` without torchrun)."""
    return index


@dataclass(frozen=True)
class EpochPlan:
    """Which rows each step of an epoch takes, for this rank: every split's `feed` reads it, the loop too.

    Step b takes rows `perm[b * batch_size : (b + 1) * batch_size]`, or, in a multi-input epoch (whose steps hold a
    batch of every task: mtlcli.training.multi_input), those between `bounds[b]` and `bounds[b + 1]`; `shard` picks
    this rank's rows of them. The plan covers steps `start` .. `steps - 1` (a resumed epoch starts part-way)."""

    perm: Tensor
    batch_size: int
    steps: int
    start: int = 0
    shard: Callable[[Tensor], Tensor] = whole
    bounds: list[int] | None = None

    def rows(self, step: int) -> Tensor:
        """The global batch of step `step` (every rank's rows)."""
        if self.bounds is None:
            return self.perm[step * self.batch_size : (step + 1) * self.batch_size]
        return self.perm[self.bounds[step] : self.bounds[step + 1]]

    def indices(self) -> Iterator[Tensor]:
        """This rank's rows of steps `start` .. `steps - 1`, in order."""
        for step in range(self.start, self.steps):
            yield self.shard(self.rows(step))


@dataclass
class DeviceSplit:
    """A split ready for training: uint8 images [N, H, W] or [N, H, W, C] (or float32 features [N, 1, 1, F], taken
    as they are) and target arrays by name.

    Class labels (int64 [N, T]) live on the device; images and per-pixel targets too when they fit,
    otherwise in host memory (memory-mapped from the prepared files), and each batch is gathered there
    and moved. `batch` turns images into float [B, C, H, W] normalised per channel by `mean` and `std`
    ([C, 1, 1] on the device) and returns the batch's targets by name; `feed` hands an epoch's batches
    to the training loop (here: gathered when asked for; `data.stream.StreamedSplit` reads them ahead).
    """

    images: Tensor
    targets: dict[str, Tensor]
    mean: Tensor
    std: Tensor
    device: torch.device

    @classmethod
    def create(
        cls, images: Tensor, targets: dict[str, Tensor], mean: list[float], std: list[float], device: torch.device
    ) -> DeviceSplit:
        stats = {k: torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for k, v in (("mean", mean), ("std", std))}
        return cls(images=images, targets=targets, device=device, **stats)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: Tensor | slice) -> Batch:
        on_host: dict[torch.device, Tensor | slice] = {}  # the index moved once per place the arrays live

        def take(array: Tensor) -> Tensor:
            if array.device not in on_host:
                on_host[array.device] = index.to(array.device) if isinstance(index, Tensor) else index
            return array[on_host[array.device]].to(self.device, non_blocking=True)

        return self.finish(take(self.images), {name: take(array) for name, array in self.targets.items()})

    def finish(self, x: Tensor, targets: dict[str, Tensor]) -> Batch:
        """Gathered images on the device (as stored) -> float [B, C, H, W], normalised; targets as they are."""
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        floating = x.is_floating_point()  # a feature table [N, 1, 1, F]: standardised when it was prepared
        x = x.to(torch.float32) if floating else x.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x, targets

    @contextlib.contextmanager
    def feed(self, plan: EpochPlan) -> Iterator[Feed]:
        """The batches of `plan` (this rank's rows of each step), in order, gathered when asked for."""
        yield (self.batch(index) for index in plan.indices())
