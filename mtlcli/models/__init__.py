"""Multi-task models: a shared encoder producing the representation z and one head per task."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor, nn

from mtlcli.models.lenet import MultiLeNetEncoder, MultiLeNetHead

__all__ = ["MultiLeNetEncoder", "MultiLeNetHead", "MultiTaskModel", "build_model"]


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


def build_model(
    *, encoder: str, num_classes: dict[str, int], input_size: int, dropout: float, hidden: int = 50
) -> MultiTaskModel:
    """Build the recipe's model; `num_classes` maps each task (in order) to its number of classes."""
    if encoder != "multilenet":
        raise ValueError(f"unknown encoder {encoder!r}")
    enc = MultiLeNetEncoder(input_size=input_size, dropout=dropout, out_features=hidden)
    heads = {
        name: MultiLeNetHead(in_features=hidden, hidden=hidden, num_classes=n, dropout=dropout)
        for name, n in num_classes.items()
    }
    return MultiTaskModel(enc, heads)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

