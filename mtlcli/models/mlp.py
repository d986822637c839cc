"""A multilayer perceptron: the encoder of feature tables (`mtl prepare table` without images).

Encoder: the input flattened ([B, F, 1, 1] for a table of F standardised features), then `layers` x (Linear, ReLU,
dropout), each `hidden` wide; z is `hidden`-d. Head per task: Linear(z, outputs) (logits, or a standardised value).
PyTorch's default initialisation.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mtlcli.models.registry import MLPOptions


class MLPEncoder(nn.Module):
    def __init__(self, *, in_features: int, hidden: int = 256, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            width = hidden
        self.body = nn.Sequential(nn.Flatten(), *blocks)
        self.out_features = hidden
        self._last = next(m for m in reversed(blocks) if isinstance(m, nn.Linear))

    @property
    def last_layer(self) -> nn.Module:
        return self._last

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def build_encoder(shape: tuple[int, int, int], o: MLPOptions) -> nn.Module:
    """The registry's `mlp` encoder for (channels, height, width) inputs (flattened: channels x height x width)."""
    return MLPEncoder(in_features=math.prod(shape), hidden=o.hidden, layers=o.layers, dropout=o.dropout)


def build_head(features: int, outputs: int, _shape: tuple[int, int, int], _o: MLPOptions) -> nn.Module:
    """The registry's `mlp` head: Linear(z, outputs)."""
    return nn.Linear(features, outputs)
