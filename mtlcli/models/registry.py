"""The encoder registry: each encoder's options schema, input check and builders, apart from torch.

Validating a recipe (`model:` options, whether `data.size` fits the encoder) and listing encoders read this
module without importing torch; the builders of each encoder and its head are in `mtlcli.models.builders`,
imported when a run builds the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mtlcli.models._input import (
    dilated_resnet_input_problem,
    resnet18_input_problem,
    resnet_cifar_input_problem,
    segnet_input_problem,
)
from mtlcli.schema import Problem, option_problems

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


class ResNet18Options(BaseModel):
    """Options of `resnet18` (torchvision's ResNet-18: LibMTL's Office-31 / Office-Home encoder)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    pretrained: bool = Field(True, description="start from torchvision's ImageNet weights (the torch.hub cache)")
    hidden: int = Field(0, ge=0, description="a shared Linear-BatchNorm-ReLU-dropout(0.5) of this width after the pool "
                        "(LibMTL's Office encoder: 512), z its output; 0: none, z the 512 pooled features")  # fmt: skip


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


class MLPOptions(BaseModel):
    """Options of `mlp` (the encoder of feature tables)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    hidden: int = Field(256, gt=0, description="width of each hidden layer and of z")
    layers: int = Field(2, ge=1, description="hidden layers (Linear, ReLU, dropout)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout after each hidden layer")


class MPNNOptions(BaseModel):
    """Options of `mpnn` (the QM9 network of Nash-MTL and FAMO)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dim: int = Field(64, gt=0, description="width of the node states and of z (64: the reference)")
    steps: int = Field(3, ge=1, description="message-passing rounds (NNConv + GRU)")
    set2set_steps: int = Field(3, ge=1, description="processing steps of the Set2Set readout")


InputShape = tuple[int, int, int]  # (channels, height, width); a graph dataset's is (node features, 1, 1)


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry: an encoder (input shape -> z, with `out_features` and `last_layer`), its options and input check."""

    name: str
    description: str
    options: type[BaseModel]
    input_problem: Callable[[InputShape], str | None] = lambda _shape: None  # why it cannot take this input, if so
    channels_last: bool = False  # wide convolutions on images: `train.channels_last` (NHWC, Tensor Core kernels) applies
    graph: bool = False  # takes molecular graphs (a graph dataset's batches), not images


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec(
            "multilenet",
            "MultiLeNet (Sener & Koltun 2018): 2 conv + FC, z is `hidden`-d; heads FC-ReLU-dropout-FC",
            MultiLeNetOptions,
        ),
        EncoderSpec(
            "resnet18-cifar",
            "CIFAR-style ResNet-18 (3x3 stem, no max-pool, avg-pool 4): z is 2048-d at 64x64; heads Linear(z, classes)",
            ResNetOptions,
            resnet_cifar_input_problem,
            channels_last=True,
        ),
        EncoderSpec(
            "resnet18",
            "torchvision's ResNet-18 (ImageNet weights with pretrained: true; LibMTL's Office encoder): z is 512-d; "
            "heads Linear(z, classes)",
            ResNet18Options,
            resnet18_input_problem,
            channels_last=True,
        ),
        EncoderSpec(
            "resnet50-dilated",
            "ResNet-50 dilated to output stride 8 (Sener & Koltun 2018, Cityscapes): z is [2048, H/8, W/8]; a PSP head per task",
            DilatedResNetOptions,
            dilated_resnet_input_problem,
            channels_last=True,
        ),
        EncoderSpec(
            "segnet-split",
            "split SegNet (MTAN, Liu et al. 2019, NYUv2): shared SegNet, z is [64, H, W]; heads conv 3x3 + conv 1x1",
            SegNetOptions,
            segnet_input_problem,
            channels_last=True,
        ),
        EncoderSpec(
            "mlp",
            "multilayer perceptron on the flattened input (feature tables): `layers` x Linear-ReLU, z is `hidden`-d; "
            "heads Linear(z, outputs)",
            MLPOptions,
        ),
        EncoderSpec(
            "mpnn",
            "message passing on molecular graphs (Nash-MTL / FAMO on QM9): NNConv + GRU x3, Set2Set; z is `dim`-d; "
            "heads Linear(z, 1); needs the graph extra",
            MPNNOptions,
            graph=True,
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
