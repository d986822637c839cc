"""A split on the training device: images and targets as tensors, batched and normalised there."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

Batch = tuple[Tensor, dict[str, Tensor]]  # normalised float images [B, C, H, W] on the device, targets by name
Feed = Iterator[Batch]


def step_rows(perm: Tensor, step: int, batch_size: int, bounds: list[int] | None = None) -> Tensor:
    """The rows of batch `step` of an epoch ordered by `perm`: `batch_size` of them, or those between its `bounds`
    (a multi-input epoch, whose steps hold a batch of every task: mtlcli.training.multi_input)."""
    if bounds is None:
        return perm[step * batch_size : (step + 1) * batch_size]
    return perm[bounds[step] : bounds[step + 1]]


def batch_indices(
    perm: Tensor,
    batch_size: int,
    shard: Callable[[Tensor], Tensor],
    start: int,
    steps: int,
    bounds: list[int] | None = None,
) -> Iterator[Tensor]:
    """The rows of batches `start` .. `steps - 1` of an epoch (`step_rows`), this rank's share of each (`shard`)."""
    for b in range(start, steps):
        yield shard(step_rows(perm, b, batch_size, bounds))


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
    def feed(
        self,
        perm: Tensor,
        batch_size: int,
        shard: Callable[[Tensor], Tensor],
        *,
        start: int,
        steps: int,
        bounds: list[int] | None = None,
    ) -> Iterator[Feed]:
        """The batches `start` .. `steps - 1` of the epoch ordered by `perm` (`step_rows`; this rank's rows: `shard`),
        in order."""
        yield (self.batch(index) for index in batch_indices(perm, batch_size, shard, start, steps, bounds))
