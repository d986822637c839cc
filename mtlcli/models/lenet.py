"""MultiLeNet, the MultiMNIST model of Sener & Koltun (2018), appendix C.1.

Encoder (21,330 parameters at 28x28): conv 1->10 k5, max-pool 2, ReLU, conv 10->20 k5, channel
dropout, max-pool 2, ReLU, flatten (320), FC 320->50, ReLU; z is 50-d. Head per task: FC 50->50,
ReLU, dropout, FC 50->classes. Standard (inverted, per-sample) dropout replaces the authors'
batch-shared unscaled masks.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.models.registry import MultiLeNetOptions


def _conv_out(size: int) -> int:
    size = (size - 4) // 2  # conv k5 then pool 2
    return (size - 4) // 2


class MultiLeNetEncoder(nn.Module):
    def __init__(
        self, *, input_size: int | tuple[int, int] = 28, dropout: float = 0.5, out_features: int = 50, in_channels: int = 1
    ) -> None:
        super().__init__()
        height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
        rows, cols = _conv_out(height), _conv_out(width)
        if rows < 1 or cols < 1:
            raise ValueError(f"input size {height}x{width} is too small for MultiLeNet (needs >= 16)")
        self.conv1 = nn.Conv2d(in_channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.dropout = nn.Dropout2d(dropout)
        self.fc = nn.Linear(20 * rows * cols, out_features)
        self.out_features = out_features

    @property
    def last_layer(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.dropout(self.conv2(x)), 2))
        return F.relu(self.fc(x.flatten(1)))


class MultiLeNetHead(nn.Module):
    def __init__(self, *, in_features: int = 50, hidden: int = 50, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(z))))


def build_encoder(shape: tuple[int, int, int], o: MultiLeNetOptions) -> nn.Module:
    """The registry's `multilenet` encoder for (channels, height, width) inputs."""
    return MultiLeNetEncoder(input_size=shape[1:], dropout=o.dropout, out_features=o.hidden, in_channels=shape[0])


def build_head(features: int, classes: int, _shape: tuple[int, int, int], o: MultiLeNetOptions) -> nn.Module:
    """The registry's `multilenet` head: FC-ReLU-dropout-FC on the `features`-d z."""
    return MultiLeNetHead(in_features=features, hidden=o.hidden, num_classes=classes, dropout=o.dropout)
