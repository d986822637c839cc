"""Evaluation: per-task metrics of a model on a split that lives on the device as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtlcli import distributed
from mtlcli.models import MultiTaskModel
from mtlcli.tasks import METRICS, Task


@dataclass
class DeviceSplit:
    """A split ready for training: uint8 images [N, H, W] or [N, H, W, C] and target arrays by name.

    Class labels (int64 [N, T]) live on the device; images and per-pixel targets too when they fit,
    otherwise in host memory (memory-mapped from the prepared files), and each batch is gathered there
    and moved. `batch` turns images into float [B, C, H, W] normalised per channel by `mean` and `std`
    ([C, 1, 1] on the device) and returns the batch's targets by name.
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

    def batch(self, index: Tensor | slice) -> tuple[Tensor, dict[str, Tensor]]:
        on_host: dict[torch.device, Tensor | slice] = {}  # the index moved once per place the arrays live

        def take(array: Tensor) -> Tensor:
            if array.device not in on_host:
                on_host[array.device] = index.to(array.device) if isinstance(index, Tensor) else index
            return array[on_host[array.device]].to(self.device, non_blocking=True)

        x = take(self.images)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        x = x.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x, {name: take(array) for name, array in self.targets.items()}


@torch.no_grad()
def evaluate(model: MultiTaskModel, tasks: list[Task], split: DeviceSplit, *, batch_size: int) -> dict[str, dict[str, float]]:
    """{task: {metric: value, 'loss': mean loss}}: metric states summed over the split on the device, one sync."""
    was_training = model.training
    model.eval()
    accumulators = [list({id(METRICS[m].accumulator): METRICS[m].accumulator for m in task.metrics}.values()) for task in tasks]
    states = [[torch.zeros(a.size(task.num_outputs), dtype=torch.float64, device=split.device) for a in accs]
              for task, accs in zip(tasks, accumulators, strict=True)]  # fmt: skip
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=split.device)
    n = len(split)
    job = distributed.current()  # several ranks: batch k is evaluated by rank k mod N, the sums are all-reduced
    for start in range(job.rank * batch_size, n, job.world * batch_size):
        x, targets = split.batch(slice(start, start + batch_size))
        _, outputs = model(x)
        losses = []
        for task, accs, state in zip(tasks, accumulators, states, strict=True):
            output, target = outputs[task.name], task.target_of(targets)
            for acc, total in zip(accs, state, strict=True):
                total += acc.state(output, target, task.num_outputs)
            losses.append(task.compute_loss(output, target) * len(x))
        loss_sums += torch.stack(losses).to(torch.float64)
    flat = job.sum_(torch.cat([loss_sums, *(t for state in states for t in state)])).cpu()  # the one sync
    model.train(was_training)
    mean_losses, offset = (flat[: len(tasks)] / max(n, 1)).tolist(), len(tasks)
    result: dict[str, dict[str, float]] = {}
    for task, accs, state in zip(tasks, accumulators, states, strict=True):
        summed = {}
        for acc, total in zip(accs, state, strict=True):
            summed[id(acc)] = flat[offset : offset + len(total)]
            offset += len(total)
        result[task.name] = {m: METRICS[m].read(summed[id(METRICS[m].accumulator)], task.num_outputs) for m in task.metrics}
        result[task.name]["loss"] = mean_losses[tasks.index(task)]
    return result


def selection_score(metrics: dict[str, dict[str, float]], tasks: list[Task]) -> float:
    """Mean over tasks of each task's first metric (negated when lower is better): the best-epoch rule."""
    values = []
    for task in tasks:
        metric = task.metrics[0]
        value = metrics[task.name][metric]
        values.append(value if METRICS[metric].higher_is_better else -value)
    return sum(values) / len(values)
