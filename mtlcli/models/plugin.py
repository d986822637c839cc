"""An encoder from another package: `model.encoder: "package.module:factory"` in a recipe.

The factory is called with the other keys of the recipe's `model:` section as keyword arguments (and with
`input_shape=(channels, height, width)` too when it has a parameter of that name the recipe does not set); it
returns the encoder, an `nn.Module` mapping images [B, C, H, W] to z. The width of z is found by one forward pass
of a single zero image in eval mode, without gradients (nothing is required of the module), and sets the heads:

- z [B, F] (flat): each head is `Linear(F, outputs)` (classification and other per-image tasks);
- z [B, C, h, w]: each head is a 1x1 convolution to the task's outputs, resized to the input's H x W (dense tasks).

GradNorm also reads the encoder's `last_layer` attribute (an `nn.Module` with a `weight`), as for the built-in ones.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlcli.errors import MtlError
from mtlcli.plugins import resolve

InputShape = tuple[int, int, int]
OUTPUT_HINT = "the factory must return an nn.Module whose forward maps images [B, C, H, W] to z: [B, F] or [B, C, h, w]"


class DenseHead(nn.Module):
    """A 1x1 convolution from z's channels to the task's outputs, resized to the input's height and width."""

    def __init__(self, channels: int, outputs: int, size: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, outputs, kernel_size=1)
        self.size = size

    def forward(self, z: Tensor) -> Tensor:
        out = self.conv(z)
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return out


def encoder_factory(path: str, options: dict[str, Any], input_shape: InputShape) -> tuple[Any, dict[str, Any]]:
    """The factory at `path` and the keyword arguments it gets; one MtlError when it cannot take them."""
    what = f"model.encoder {path}"
    factory = resolve(path, what="model.encoder")
    if not callable(factory):
        raise MtlError(f"{what} is a {type(factory).__name__}, not a function or class", hint=OUTPUT_HINT)
    kwargs = dict(options)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call itself will tell
        return factory, kwargs
    if "input_shape" in signature.parameters and "input_shape" not in kwargs:
        kwargs["input_shape"] = input_shape
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise MtlError(
            f"{what} cannot take the recipe's model options: {exc}",
            hint=f"the keys of model: besides encoder are its keyword arguments; it takes: {', '.join(signature.parameters)}",
        ) from None
    return factory, kwargs


def build_encoder(path: str, options: dict[str, Any], input_shape: InputShape) -> nn.Module:
    """Call the factory; one MtlError when it fails or returns something else than an `nn.Module`."""
    factory, kwargs = encoder_factory(path, options, input_shape)
    try:
        encoder = factory(**kwargs)
    except Exception as exc:  # the plug-in's own code: one line here, the traceback with MTL_DEBUG=1
        raise MtlError(
            f"model.encoder {path} failed: {type(exc).__name__}: {exc}", hint="MTL_DEBUG=1 shows the traceback"
        ) from exc
    if not isinstance(encoder, nn.Module):
        raise MtlError(f"model.encoder {path} returned a {type(encoder).__name__}, not a torch.nn.Module", hint=OUTPUT_HINT)
    return encoder


def z_shape(encoder: nn.Module, path: str, input_shape: InputShape) -> tuple[int, ...]:
    """The shape of z for one image (F,) or (C, h, w), by one forward pass of a zero image in eval mode."""
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            z = encoder(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise MtlError(
            f"model.encoder {path}: its forward pass on one {list(input_shape)} image failed: {type(exc).__name__}: {exc}",
            hint=OUTPUT_HINT,
        ) from exc
    finally:
        encoder.train(was_training)
    if not isinstance(z, Tensor) or z.dim() not in (2, 4) or z.shape[0] != 1:
        got = f"a tensor of shape {list(z.shape)}" if isinstance(z, Tensor) else f"a {type(z).__name__}"
        raise MtlError(f"model.encoder {path}: its forward returned {got} for one image", hint=OUTPUT_HINT)
    return tuple(z.shape[1:])


def build_head(shape: tuple[int, ...], outputs: int, input_shape: InputShape) -> nn.Module:
    """The head of one task on z of `shape` (one image's): linear on a flat z, 1x1 conv on a spatial one."""
    if len(shape) == 1:
        return nn.Linear(shape[0], outputs)
    return DenseHead(shape[0], outputs, input_shape[1:])
