"""torchvision's ResNet-18 as an encoder (`resnet18`): LibMTL's Office-31 / Office-Home network
(median-research-group/LibMTL, examples/office/main_office.py: `resnet18(pretrained=True)` without its fc, z the
512-d average-pooled features, a Linear(512, classes) head per task). `hidden: 512` adds LibMTL's shared layer after
the pool: Linear(512, 512) (weights N(0, 0.005), bias 0.1), BatchNorm1d, ReLU, dropout 0.5.

`pretrained: true` loads torchvision's ImageNet weights (ResNet18_Weights.IMAGENET1K_V1) from the torch.hub cache,
downloading them there when they are absent; offline, one error names the URL and the exact file to put it in.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock

from mtlcli.errors import DataError
from mtlcli.models._input import resnet18_input_problem
from mtlcli.models._pretrained import fetch_state, hub_path
from mtlcli.models.registry import ResNet18Options

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1
FEATURES = 512


class ResNet18Encoder(nn.Module):
    """[B, 3, H, W] -> [B, 512] (or [B, hidden]): torchvision's ResNet-18 up to its average pool (no fc), then
    LibMTL's shared hidden layer when `hidden` > 0."""

    def __init__(self, hidden: int = 0) -> None:
        super().__init__()
        net = resnet18(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.hidden: nn.Sequential | None = None
        if hidden:
            linear = nn.Linear(FEATURES, hidden)
            nn.init.normal_(linear.weight, 0.0, 0.005)  # LibMTL examples/office/main.py
            nn.init.constant_(linear.bias, 0.1)
            self.hidden = nn.Sequential(linear, nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5))
        self.out_features = hidden or FEATURES

    @property
    def last_layer(self) -> nn.Module:
        """The last shared layer with weights: the hidden Linear, else the second conv of the last block."""
        return self.hidden[0] if self.hidden is not None else cast(BasicBlock, self.layer4[-1]).conv2

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        z = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.hidden(z) if self.hidden is not None else z


def imagenet_weights_path() -> Path:
    """Where torch.hub caches the ImageNet weights (`$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth`)."""
    return hub_path(IMAGENET_WEIGHTS)


def _torchvision_names(key: str) -> str:
    """Our key -> torchvision's (the stem's Sequential indices name conv1, bn1)."""
    for index, name in (("stem.0.", "conv1."), ("stem.1.", "bn1.")):
        if key.startswith(index):
            return name + key[len(index) :]
    return key


def load_imagenet_weights(encoder: ResNet18Encoder) -> None:
    """Load torchvision's ResNet-18 ImageNet weights (without fc) into `encoder`, strictly; DataError when they
    can be neither downloaded nor read (the hint says where to put the file for offline use)."""
    url, path = IMAGENET_WEIGHTS.url, imagenet_weights_path()
    state = fetch_state(IMAGENET_WEIGHTS, path, "ResNet-18", offline_hint=", or set pretrained: false")
    ours = {key: _torchvision_names(key) for key in encoder.state_dict() if not key.startswith("hidden.")}
    try:
        missing, unexpected = encoder.load_state_dict({key: state[name] for key, name in ours.items()}, strict=False)
        if unexpected or any(not key.startswith("hidden.") for key in missing):
            raise RuntimeError(f"missing {missing[:1]}, unexpected {unexpected[:1]}")
    except (KeyError, RuntimeError) as exc:
        raise DataError(f"{path} does not hold torchvision's ResNet-18 weights ({type(exc).__name__})",
                        hint=f"replace it with {url}") from None  # fmt: skip


def build_encoder(shape: tuple[int, int, int], o: ResNet18Options) -> nn.Module:
    """The registry's `resnet18` encoder, with torchvision's ImageNet weights when `pretrained`."""
    problem = resnet18_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    encoder = ResNet18Encoder(hidden=o.hidden)
    if o.pretrained:
        load_imagenet_weights(encoder)
    return encoder


def build_head(features: int, classes: int, _shape: tuple[int, int, int], _o: ResNet18Options) -> nn.Module:
    """LibMTL's Office head: Linear(512, classes)."""
    return nn.Linear(features, classes)
