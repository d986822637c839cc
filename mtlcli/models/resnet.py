"""CIFAR-style ResNet-18, the CelebA encoder of Sener & Koltun (2018), "Multi-Task Learning as
Multi-Objective Optimization" (NeurIPS), as in their multi_faces_resnet.py.

Stem: 3x3 conv (stride 1, no bias) + BatchNorm + ReLU, no max-pool; 4 stages of 2 BasicBlocks with
widths w, 2w, 4w, 8w and strides 1, 2, 2, 2; then avg-pool 4 and flatten. At input size S the
representation z has 8w * (S/32)^2 features: 2048 (2x2x512) at 64x64 with w = 64, for 11,168,832
parameters (the CIFAR ResNet-18 of kuangliu/pytorch-cifar without its linear layer). Head per task:
Linear(z, classes).
"""

from __future__ import annotations

from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from mtlcli.models._input import resnet_cifar_input_problem
from mtlcli.models.registry import ResNetOptions

__all__ = ["ResNet18CifarEncoder", "resnet_head"]

_BLOCKS_PER_STAGE = 2
_POOL = 4  # the authors' F.avg_pool2d(out, 4)
_REDUCTION = 8 * _POOL  # three stride-2 stages, then the pool


def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_planes != planes:
        downsample = nn.Sequential(
            nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes),
        )
    blocks = [BasicBlock(in_planes, planes, stride=stride, downsample=downsample)]
    blocks += [BasicBlock(planes, planes) for _ in range(_BLOCKS_PER_STAGE - 1)]
    return nn.Sequential(*blocks)


class ResNet18CifarEncoder(nn.Module):
    """[B, in_channels, S, S] -> z of shape [B, out_features]; S a multiple of 32."""

    def __init__(self, in_channels: int, input_size: int, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"resnet18-cifar needs at least 1 input channel, got {in_channels}")
        if width < 1:
            raise ValueError(f"resnet18-cifar width must be >= 1, got {width}")
        if input_size < _REDUCTION or input_size % _REDUCTION:
            raise ValueError(
                f"resnet18-cifar takes images whose side is a multiple of {_REDUCTION} (>= {_REDUCTION}), "
                f"got {input_size}: the three stride-2 stages and the final avg-pool {_POOL} must divide it exactly"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.layer1 = _stage(width, width, stride=1)
        self.layer2 = _stage(width, 2 * width, stride=2)
        self.layer3 = _stage(2 * width, 4 * width, stride=2)
        self.layer4 = _stage(4 * width, 8 * width, stride=2)
        self.out_features = 8 * width * (input_size // _REDUCTION) ** 2
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def last_layer(self) -> nn.Module:
        """The last shared layer with weights: the second conv of the last block."""
        return cast(BasicBlock, self.layer4[-1]).conv2

    def forward(self, x: Tensor) -> Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return F.avg_pool2d(out, _POOL).flatten(1)


def resnet_head(in_features: int, num_classes: int) -> nn.Module:
    """The authors' head per attribute: Linear(z, classes), giving logits (their log-softmax is in our cross-entropy)."""
    return nn.Linear(in_features, num_classes)


def build_encoder(shape: tuple[int, int, int], o: ResNetOptions) -> nn.Module:
    """The registry's `resnet18-cifar` encoder (square inputs, side a multiple of 32)."""
    problem = resnet_cifar_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    return ResNet18CifarEncoder(in_channels=shape[0], input_size=shape[1], width=o.width)


def build_head(features: int, classes: int, _shape: tuple[int, int, int], _o: ResNetOptions) -> nn.Module:
    """The registry's `resnet18-cifar` head: Linear(z, classes)."""
    return resnet_head(features, classes)
