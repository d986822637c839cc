"""Multi-task models: a shared encoder producing the representation z and one head per task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mtlcli.errors import MtlError
from mtlcli.models import plugin
from mtlcli.models.builders import BUILDERS
from mtlcli.models.registry import ENCODERS, InputShape
from mtlcli.plugins import is_import_path

__all__ = ["IndependentEncoders", "MultiTaskModel", "SliceHead", "build_model", "count_parameters"]


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
        layer = getattr(self.encoder, "last_layer", None)
        if not isinstance(layer, nn.Module):
            raise MtlError(
                f"this method reads the encoder's last layer, and {type(self.encoder).__name__} has no `last_layer`",
                hint="give the encoder a `last_layer` attribute (its last nn.Module with a weight), or choose another method",
            )
        return layer

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
    input_shape: InputShape,
    options: dict[str, Any] | None = None,
    independent: bool = False,
) -> MultiTaskModel:
    """Build the recipe's model; `num_classes` maps each task (in order) to its number of classes.

    `independent`: one encoder per task and each head on its own encoder's slice of z (single-task
    baseline: T separate networks in one module, so L_t reaches only network t). An `encoder` written
    `package.module:factory` is a plug-in (`mtlcli.models.plugin`): `options` are its keyword arguments.
    """
    if is_import_path(encoder):
        return _plugin_model(encoder, num_classes, input_shape, options or {}, independent=independent)
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose one of: {', '.join(ENCODERS)}")
    spec = ENCODERS[encoder]
    opts = spec.options.model_validate(options or {})

    build_encoder, build_head = BUILDERS[encoder]

    def new_encoder() -> nn.Module:
        return build_encoder(input_shape, opts)

    if independent:
        encoders = [new_encoder() for _ in num_classes]
        width = encoders[0].out_features
        heads: dict[str, nn.Module] = {
            name: SliceHead(build_head(width, n, input_shape, opts), i * width, (i + 1) * width)
            for i, (name, n) in enumerate(num_classes.items())
        }
        return MultiTaskModel(IndependentEncoders(encoders), heads)
    shared = new_encoder()
    heads = {name: build_head(shared.out_features, n, input_shape, opts) for name, n in num_classes.items()}
    return MultiTaskModel(shared, heads)


def _plugin_model(
    path: str, num_classes: dict[str, int], input_shape: InputShape, options: dict[str, Any], *, independent: bool
) -> MultiTaskModel:
    """`build_model` for a plug-in encoder: its heads follow z's shape (`plugin.build_head`)."""
    shared = plugin.build_encoder(path, options, input_shape)
    shape = plugin.z_shape(shared, path, input_shape)
    if not independent:
        heads = {name: plugin.build_head(shape, n, input_shape) for name, n in num_classes.items()}
        return MultiTaskModel(shared, heads)
    encoders = [shared, *(plugin.build_encoder(path, options, input_shape) for _ in list(num_classes)[1:])]
    width = shape[0]  # z's features, or its channels: the independent encoders' outputs are concatenated on dim 1
    heads = {
        name: SliceHead(plugin.build_head(shape, n, input_shape), i * width, (i + 1) * width)
        for i, (name, n) in enumerate(num_classes.items())
    }
    return MultiTaskModel(IndependentEncoders(encoders), heads)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
