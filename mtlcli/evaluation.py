"""Evaluation: per-task metrics of a model on a split that lives on the device as tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtlcli.models import MultiTaskModel
from mtlcli.tasks import METRICS, Task


@dataclass
class DeviceSplit:
    """A split ready for training: uint8 images [N, H, W] or [N, H, W, C] and int64 labels [N, T].

    Labels live on the device; images too when they fit, otherwise in host memory (memory-mapped
    from the prepared files), and each batch is gathered there and moved. `batch` turns images into
    float [B, C, H, W] normalised per channel by `mean` and `std` ([C, 1, 1] on the device).
    """

    images: Tensor
    labels: Tensor
    mean: Tensor
    std: Tensor

    @classmethod
    def create(cls, images: Tensor, labels: Tensor, mean: list[float], std: list[float], device: torch.device) -> DeviceSplit:
        stats = {k: torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for k, v in (("mean", mean), ("std", std))}
        return cls(images=images, labels=labels.to(device), **stats)

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        if isinstance(index, Tensor) and index.device != self.images.device:
            x = self.images[index.to(self.images.device)]
        else:
            x = self.images[index]
        x = x.to(self.device, non_blocking=True)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        x = x.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x, self.labels[index]


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, tasks: list[Task], columns: list[int], split: DeviceSplit, *, batch_size: int
) -> dict[str, dict[str, float]]:
    """{task: {metric: value, 'loss': mean loss}}; metrics in %, accumulated on device, one sync."""
    was_training = model.training
    model.eval()
    names = [(t.name, m) for t in tasks for m in t.metrics]
    device = split.device
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    n = len(split)
    for start in range(0, n, batch_size):
        x, y = split.batch(slice(start, start + batch_size))
        _, outputs = model(x)
        parts = []
        for task, col in zip(tasks, columns, strict=True):
            target = y[:, col]
            parts.extend(METRICS[m].batch_sum(outputs[task.name], target) for m in task.metrics)
        sums += torch.stack(parts).to(torch.float64)
        losses = [task.compute_loss(outputs[task.name], y[:, col]) * len(y) for task, col in zip(tasks, columns, strict=True)]
        loss_sums += torch.stack(losses).to(torch.float64)
    values = (sums * (100.0 / max(n, 1))).tolist()
    mean_losses = (loss_sums / max(n, 1)).tolist()
    model.train(was_training)
    result: dict[str, dict[str, float]] = {t.name: {} for t in tasks}
    for (task, metric), value in zip(names, values, strict=True):
        result[task][metric] = value
    for task, loss in zip(tasks, mean_losses, strict=True):
        result[task.name]["loss"] = loss
    return result


def selection_score(metrics: dict[str, dict[str, float]], tasks: list[Task]) -> float:
    """Mean over tasks of each task's first metric (negated when lower is better): the best-epoch rule."""
    values = []
    for task in tasks:
        metric = task.metrics[0]
        value = metrics[task.name][metric]
        values.append(value if METRICS[metric].higher_is_better else -value)
    return sum(values) / len(values)
