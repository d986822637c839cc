"""Dilated ResNet-50, the Cityscapes encoder of Sener & Koltun (2018), "Multi-Task Learning as Multi-Objective
Optimization" (NeurIPS), as in their multi_task/models/pspnet.py (`ResnetDilated(resnet50, dilate_scale=8)`).

The architecture is torchvision's `resnet50(replace_stride_with_dilation=[False, True, True])` without avgpool
and fc: 7x7 stride-2 stem, 3x3 stride-2 max-pool, then four stages of [3, 4, 6, 3] Bottleneck blocks with
w, 2w, 4w, 8w planes (expansion 4). Only layer2 downsamples; layer3 and layer4 keep stride 1 and dilate their
3x3 convs instead (layer3: 1 in its first block, then 2; layer4: 2, then 4), so the output stride is 8:
[B, C, H, W] -> [B, 32w, ceil(H/8), ceil(W/8)]. At w = 64 the attribute names, and so the state_dict, are
torchvision's (without `fc.*`), and the encoder has 23,508,032 parameters (torchvision's 25,557,032 minus the
2,049,000 of fc). `load_imagenet_weights` loads torchvision's ImageNet weights (ResNet50_Weights.IMAGENET1K_V1)
into it strictly; the authors loaded torchvision's ResNet-50 ImageNet file of their time (resnet50-19c8e357.pth),
with strict=False, into the same architecture (CSAIL's resnet50 with `relu1` for `relu`, dilated in place).

Batch size: at the smallest input (8x8) layer2..layer4 work on 1x1 maps, where BatchNorm in training mode
needs a batch of at least 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from torch import Tensor, nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck

from mtlcli.errors import DataError
from mtlcli.models._input import DILATED_OUTPUT_STRIDE, dilated_resnet_input_problem
from mtlcli.models._pretrained import fetch_state, hub_path
from mtlcli.models.registry import DilatedResNetOptions

__all__ = [
    "DilatedResNet50Encoder",
    "dilated_resnet_input_problem",
    "imagenet_weights_path",
    "load_imagenet_weights",
]

_LAYERS = (3, 4, 6, 3)
OUTPUT_STRIDE = DILATED_OUTPUT_STRIDE
IMAGENET_WEIGHTS = ResNet50_Weights.IMAGENET1K_V1
_PRETRAINED_WIDTH = 64
_PRETRAINED_CHANNELS = 3



class DilatedResNet50Encoder(nn.Module):
    """[B, in_channels, H, W] -> [B, out_features, ceil(H/8), ceil(W/8)], out_features = 32 * width (2048 at 64)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"dilated-resnet50 needs at least 1 input channel, got {in_channels}")
        if width < 1:
            raise ValueError(f"dilated-resnet50 width must be >= 1, got {width}")
        self.in_channels = in_channels
        self.width = width
        self._inplanes = width
        self._dilation = 1
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, _LAYERS[0])
        self.layer2 = self._make_layer(2 * width, _LAYERS[1], stride=2)
        self.layer3 = self._make_layer(4 * width, _LAYERS[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(8 * width, _LAYERS[3], stride=2, dilate=True)
        self.out_features = 8 * width * Bottleneck.expansion
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        """torchvision's ResNet._make_layer: a dilated stage trades its stride for dilation after its first block."""
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out_planes = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers = [Bottleneck(self._inplanes, planes, stride, downsample, dilation=previous_dilation)]
        self._inplanes = out_planes
        layers += [Bottleneck(self._inplanes, planes, dilation=self._dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def last_layer(self) -> nn.Module:
        """The last conv of the encoder: layer4's last block's 1x1 expansion conv."""
        return cast(Bottleneck, self.layer4[-1]).conv3

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def imagenet_weights_path() -> Path:
    """Where torch.hub caches the ImageNet weights: torch.hub.get_dir()/checkpoints/<file name of the URL>."""
    return hub_path(IMAGENET_WEIGHTS)


def load_imagenet_weights(encoder: DilatedResNet50Encoder) -> None:
    """Load torchvision's ResNet-50 ImageNet weights (IMAGENET1K_V1, without fc) into `encoder`, strictly.

    Reads the torch.hub cache (`imagenet_weights_path()`) and downloads into it when the file is not there.
    Raises DataError when the encoder is not the width-64, 3-channel architecture, when the download fails
    (the hint says where to put the file for offline use) or when the file cannot be read.
    """
    if encoder.width != _PRETRAINED_WIDTH or encoder.in_channels != _PRETRAINED_CHANNELS:
        raise DataError(
            f"ImageNet weights exist only for the dilated ResNet-50 of width {_PRETRAINED_WIDTH} on "
            f"{_PRETRAINED_CHANNELS}-channel images, this encoder has width {encoder.width} and "
            f"{encoder.in_channels} input channel(s)",
            hint=f"use width {_PRETRAINED_WIDTH} and RGB inputs, or train from scratch (no pretrained weights)",
        )
    url, path = IMAGENET_WEIGHTS.url, imagenet_weights_path()
    state = fetch_state(IMAGENET_WEIGHTS, path, "ResNet-50")
    if not isinstance(state, dict):
        raise DataError(f"{path} does not hold a state dict but a {type(state).__name__}", hint=f"replace it with {url}")
    state = {key: value for key, value in state.items() if not str(key).startswith("fc.")}
    problem = _state_dict_problem(encoder, state)
    if problem is not None:
        raise DataError(f"{path} does not hold torchvision's ResNet-50 weights: {problem}", hint=f"replace it with {url}")
    encoder.load_state_dict(state, strict=True)


def _state_dict_problem(encoder: nn.Module, state: dict[object, object]) -> str | None:
    """What keeps `state` from loading strictly into `encoder` (missing or unexpected keys, wrong shapes), if anything."""
    expected = encoder.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [str(key) for key in state if key not in expected]
    wrong = [
        key
        for key, value in expected.items()
        if key in state and not (isinstance(state[key], Tensor) and state[key].shape == value.shape)
    ]
    problems = [
        f"{len(keys)} {what} (first: {keys[0]})"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("tensors of the wrong shape", wrong))
        if keys
    ]
    return "; ".join(problems) or None


def build_encoder(shape: tuple[int, int, int], o: DilatedResNetOptions) -> nn.Module:
    """The registry's `resnet50-dilated` encoder, with torchvision's ImageNet weights when `pretrained`."""
    problem = dilated_resnet_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    encoder = DilatedResNet50Encoder(in_channels=shape[0], width=o.width)
    if o.pretrained:
        load_imagenet_weights(encoder)
    return encoder
