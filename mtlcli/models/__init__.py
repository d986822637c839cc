"""Multi-task models: a shared encoder producing the representation z and one head per task."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mtlcli.models.lenet import MultiLeNetEncoder, MultiLeNetHead

__all__ = ["IndependentEncoders", "MultiLeNetEncoder", "MultiLeNetHead", "MultiTaskModel", "SliceHead", "build_model"]


class MultiTaskModel(nn.Module):
    """Hard parameter sharing: `z = encoder(x)`, `outputs[t] = heads[t](z)`.

    The encoder's parameters are the shared parameters theta_sh of Sener & Koltun (2018); each head
    holds the task-specific parameters theta_t.
    """

    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.encoder(x)
        return z, {name: head(z) for name, head in self.heads.items()}

    def shared_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def task_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for p in self.heads[name].parameters() if p.requires_grad]

    def last_shared_layer(self) -> nn.Module:
        """The encoder's last layer (GradNorm measures gradient norms on its weights)."""
        return self.encoder.last_layer

    def named_task_parameters(self) -> Iterator[tuple[str, list[nn.Parameter]]]:
        for name in self.heads:
            yield name, self.task_parameters(name)


class IndependentEncoders(nn.Module):
    """T encoders side by side (nothing shared): z is the concatenation of their outputs."""

    def __init__(self, encoders: list[nn.Module]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([encoder(x) for encoder in self.encoders], dim=1)


class SliceHead(nn.Module):
    """A head that reads only columns [start, stop) of z: its own encoder's output."""

    def __init__(self, head: nn.Module, start: int, stop: int) -> None:
        super().__init__()
        self.head = head
        self.start, self.stop = start, stop

    def forward(self, z: Tensor) -> Tensor:
        return self.head(z[:, self.start : self.stop])


def build_model(
    *,
    encoder: str,
    num_classes: dict[str, int],
    input_size: int,
    dropout: float,
    hidden: int = 50,
    independent: bool = False,
) -> MultiTaskModel:
    """Build the recipe's model; `num_classes` maps each task (in order) to its number of classes.

    `independent`: one encoder per task and each head on its own encoder's slice of z (single-task
    baseline: T separate networks in one module, so L_t reaches only network t).
    """
    if encoder != "multilenet":
        raise ValueError(f"unknown encoder {encoder!r}")

    def new_encoder() -> MultiLeNetEncoder:
        return MultiLeNetEncoder(input_size=input_size, dropout=dropout, out_features=hidden)

    def new_head(n: int) -> MultiLeNetHead:
        return MultiLeNetHead(in_features=hidden, hidden=hidden, num_classes=n, dropout=dropout)

    if independent:
        encoders = [new_encoder() for _ in num_classes]
        heads: dict[str, nn.Module] = {
            name: SliceHead(new_head(n), i * hidden, (i + 1) * hidden) for i, (name, n) in enumerate(num_classes.items())
        }
        return MultiTaskModel(IndependentEncoders(encoders), heads)
    return MultiTaskModel(new_encoder(), {name: new_head(n) for name, n in num_classes.items()})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

