"""Multi-task models: a shared encoder producing the representation z and one head per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from mtlcli.models.lenet import MultiLeNetEncoder, MultiLeNetHead

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "IndependentEncoders",
    "MultiLeNetEncoder",
    "MultiLeNetHead",
    "MultiTaskModel",
    "SliceHead",
    "build_model",
    "encoder_option_problems",
]


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
    return MultiLeNetEncoder(input_size=shape[1:], dropout=o.dropout, out_features=o.hidden, in_channels=shape[0])


def _lenet_head(features: int, classes: int, _shape: InputShape, o: MultiLeNetOptions) -> nn.Module:
    return MultiLeNetHead(in_features=features, hidden=o.hidden, num_classes=classes, dropout=o.dropout)


def _resnet_input_problem(shape: InputShape) -> str | None:
    _channels, height, width = shape
    if height != width:
        return f"resnet18-cifar takes square images, got {height}x{width}"
    if height < 32 or height % 32:
        return f"resnet18-cifar takes images whose side is a multiple of 32 (32, 64, 96, ...), got {height}"
    return None


def _resnet(shape: InputShape, o: ResNetOptions) -> nn.Module:
    from mtlcli.models.resnet import ResNet18CifarEncoder

    problem = _resnet_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    return ResNet18CifarEncoder(in_channels=shape[0], input_size=shape[1], width=o.width)


def _resnet_head(features: int, classes: int, _shape: InputShape, _o: ResNetOptions) -> nn.Module:
    from mtlcli.models.resnet import resnet_head

    return resnet_head(features, classes)


def _dilated_input_problem(shape: InputShape) -> str | None:
    from mtlcli.models.dilated_resnet import dilated_resnet_input_problem

    return dilated_resnet_input_problem(shape)


def _dilated(shape: InputShape, o: DilatedResNetOptions) -> nn.Module:
    from mtlcli.models.dilated_resnet import DilatedResNet50Encoder, load_imagenet_weights

    problem = _dilated_input_problem(shape)
    if problem is not None:
        raise ValueError(problem)
    encoder = DilatedResNet50Encoder(in_channels=shape[0], width=o.width)
    if o.pretrained:
        load_imagenet_weights(encoder)
    return encoder


def _psp_head(channels: int, outputs: int, shape: InputShape, o: DilatedResNetOptions) -> nn.Module:
    from mtlcli.models.psp import PSPHead

    return PSPHead(channels, outputs, output_size=(shape[1], shape[2]), branch_channels=o.head_width)


def _segnet_input_problem(shape: InputShape) -> str | None:
    from mtlcli.models.segnet import segnet_input_problem

    return segnet_input_problem(shape)


def _segnet(shape: InputShape, o: SegNetOptions) -> nn.Module:
    from mtlcli.models.segnet import SegNetSplitEncoder

    problem = _segnet_input_problem(shape)
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
            _resnet_input_problem,
        ),
        EncoderSpec(
            "resnet50-dilated",
            "ResNet-50 dilated to output stride 8 (Sener & Koltun 2018, Cityscapes): z is [2048, H/8, W/8]; a PSP head per task",
            DilatedResNetOptions,
            _dilated,
            _psp_head,
            _dilated_input_problem,
        ),
        EncoderSpec(
            "segnet-split",
            "split SegNet (MTAN, Liu et al. 2019, NYUv2): shared SegNet, z is [64, H, W]; heads conv 3x3 + conv 1x1",
            SegNetOptions,
            _segnet,
            _segnet_head,
            _segnet_input_problem,
        ),
    )
}


def encoder_option_problems(name: str, options: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, message) for every problem with an encoder's options; [] when they are valid."""
    try:
        ENCODERS[name].options.model_validate(options)
    except ValidationError as exc:
        from mtlcli.recipe import describe_error

        problems = []
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                key = str(err["loc"][-1])
                others = [n for n, spec in ENCODERS.items() if key in spec.options.model_fields]
                where = f"; it is an option of {', '.join(others)}" if others else ""
                problems.append((tuple(err["loc"]), f"not an option of encoder {name}{where}"))
            else:
                problems.append((tuple(err["loc"]), describe_error(err)))
        return problems
    return []


def build_model(
    *,
    encoder: str,
    num_classes: dict[str, int],
    input_shape: InputShape,
    options: dict[str, Any] | None = None,
    independent: bool = False,
) -> MultiTaskModel:
    """Build the recipe's model; `num_classes` maps each task (in order) to its number of classes.

    `independent`: one encoder per task and each head on its own encoder's slice of z (single-task
    baseline: T separate networks in one module, so L_t reaches only network t).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of: {', '.join(ENCODERS)}")
    spec = ENCODERS[encoder]
    opts = spec.options.model_validate(options or {})

    def new_encoder() -> nn.Module:
        return spec.encoder(input_shape, opts)

    if independent:
        encoders = [new_encoder() for _ in num_classes]
        width = encoders[0].out_features
        heads: dict[str, nn.Module] = {
            name: SliceHead(spec.head(width, n, input_shape, opts), i * width, (i + 1) * width)
            for i, (name, n) in enumerate(num_classes.items())
        }
        return MultiTaskModel(IndependentEncoders(encoders), heads)
    shared = new_encoder()
    heads = {name: spec.head(shared.out_features, n, input_shape, opts) for name, n in num_classes.items()}
    return MultiTaskModel(shared, heads)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
