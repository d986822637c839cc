"""The encoder registry: each encoder's options schema, input check and builders, apart from torch.

Validating a recipe (`model:` options, whether `data.size` fits the encoder) and listing encoders read this
module without importing torch; the builders import their torch module when a run builds the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from mtlcli.models._input import dilated_resnet_input_problem, resnet_cifar_input_problem, segnet_input_problem
from mtlcli.schema import Problem, option_problems

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ENCODERS", "EncoderSpec", "InputShape", "encoder_option_problems"]


class MultiLeNetOptions(BaseModel):
    """Options of `multilenet` (Sener & Koltun 2018, appendix C.1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: int = Field(50, gt=0, description="width of z and of the heads' hidden layer")
    dropout: float = Field(0.5, ge=0, lt=1, description="channel dropout in the encoder, dropout in the heads")


class ResNetOptions(BaseModel):
    """Options of `resnet18-cifar` (the authors' CelebA encoder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(64, gt=0, description="channels of the first stage (64: the authors'; stages are x1, x2, x4, x8)")


class DilatedResNetOptions(BaseModel):
    """Options of `resnet50-dilated` (the authors' Cityscapes encoder) and its PSP heads."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(64, gt=0, description="planes of the first stage (64: torchvision's ResNet-50; stages x1, x2, x4, x8)")
    pretrained: bool = Field(False, description="start from torchvision's ImageNet weights (width 64, 3 channels; cached)")
    head_width: int = Field(512, gt=0, description="channels of each PSP head's pyramid branches and last conv")


class SegNetOptions(BaseModel):
    """Options of `segnet-split` (the split SegNet of MTAN on NYUv2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    width: int = Field(64, gt=0, description="channels of the first block (64: the reference; blocks x1, x2, x4, x8, x8)")


InputShape = tuple[int, int, int]  # (channels, height, width)


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry: the encoder (input shape -> z, with `out_features` and `last_layer`) and its head."""

    name: str
    description: str
    options: type[BaseModel]
    encoder: Callable[[InputShape, Any], nn.Module]
    head: Callable[[int, int, InputShape, Any], nn.Module]  # (z features or channels, outputs, input shape, options) -> head
    input_problem: Callable[[InputShape], str | None] = lambda _shape: None  # why it cannot take this input, if so


def _lenet(shape: InputShape, o: MultiLeNetOptions) -> nn.Module:
    from mtlcli.models.lenet import MultiLeNetEncoder

    return MultiLeNetEncoder(input_size=shape[1:], dropout=o.dropout, out_features=o.hidden, in_channels=shape[0])


def _lenet_head(features: int, classes: int, _shape: InputShape, o: MultiLeNetOptions) -> nn.Module:
    from mtlcli.models.lenet import MultiLeNetHead

    return MultiLeNetHead(in_features=features, hidden=o.hidden, num_classes=classes, dropout=o.dropout)


def _resnet(shape: InputShape, o: ResNetOptions) -> nn.Module:
    from mtlcli.models.resnet import ResNet18CifarEncoder

    problem = resnet_cifar_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    return ResNet18CifarEncoder(in_channels=shape[0], input_size=shape[1], width=o.width)


def _resnet_head(features: int, classes: int, _shape: InputShape, _o: ResNetOptions) -> nn.Module:
    from mtlcli.models.resnet import resnet_head

    return resnet_head(features, classes)


def _dilated(shape: InputShape, o: DilatedResNetOptions) -> nn.Module:
    from mtlcli.models.dilated_resnet import DilatedResNet50Encoder, load_imagenet_weights

    problem = dilated_resnet_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    encoder = DilatedResNet50Encoder(in_channels=shape[0], width=o.width)
    if o.pretrained:
        load_imagenet_weights(encoder)
    return encoder


def _psp_head(channels: int, outputs: int, shape: InputShape, o: DilatedResNetOptions) -> nn.Module:
    from mtlcli.models.psp import PSPHead

    return PSPHead(channels, outputs, output_size=(shape[1], shape[2]), branch_channels=o.head_width)


def _segnet(shape: InputShape, o: SegNetOptions) -> nn.Module:
    from mtlcli.models.segnet import SegNetSplitEncoder

    problem = segnet_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    return SegNetSplitEncoder(in_channels=shape[0], width=o.width)


def _segnet_head(channels: int, outputs: int, _shape: InputShape, _o: SegNetOptions) -> nn.Module:
    from mtlcli.models.segnet import segnet_head

    return segnet_head(channels, outputs)


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "multilenet",
            "MultiLeNet (Sener & Koltun 2018): 2 conv + FC, z is `hidden`-d; heads FC-ReLU-dropout-FC",
            MultiLeNetOptions,
            _lenet,
            _lenet_head,
        ),
        EncoderSpec(
            "resnet18-cifar",
            "CIFAR-style ResNet-18 (3x3 stem, no max-pool, avg-pool 4): z is 2048-d at 64x64; heads Linear(z, classes)",
            ResNetOptions,
            _resnet,
            _resnet_head,
            resnet_cifar_input_problem,
        ),
        EncoderSpec(
            "resnet50-dilated",
            "ResNet-50 dilated to output stride 8 (Sener & Koltun 2018, Cityscapes): z is [2048, H/8, W/8]; a PSP head per task",
            DilatedResNetOptions,
            _dilated,
            _psp_head,
            dilated_resnet_input_problem,
        ),
        EncoderSpec(
            "segnet-split",
            "split SegNet (MTAN, Liu et al. 2019, NYUv2): shared SegNet, z is [64, H, W]; heads conv 3x3 + conv 1x1",
            SegNetOptions,
            _segnet,
            _segnet_head,
            segnet_input_problem,
        ),
    )
}


def encoder_option_problems(name: str, options: dict[str, Any]) -> list[Problem]:
    """(key path, message) for every problem with an encoder's options; [] when they are valid."""

    def unknown_key(key: str) -> str:
        others = [n for n, spec in ENCODERS.items() if key in spec.options.model_fields]
        where = f"; it is an option of {', '.join(others)}" if others else ""
        return f"not an option of encoder {name}{where}"

    return option_problems(ENCODERS[name].options, options, unknown_key)
