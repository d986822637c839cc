"""How each registered encoder and its head are built: the torch side of the encoder registry.

`mtlcli.models.registry` holds what validation needs (options, input checks) without torch; this module
imports every encoder. A test checks that both list the same names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mtlcli.models import dilated_resnet, lenet, mlp, mpnn, psp, resnet, resnet18, segnet
from mtlcli.models.registry import InputShape

EncoderBuilder = Callable[[InputShape, Any], nn.Module]  # (input shape, options) -> encoder
HeadBuilder = Callable[[int, int, InputShape, Any], nn.Module]  # (z features or channels, outputs, input shape, options)

BUILDERS: dict[str, tuple[EncoderBuilder, HeadBuilder]] = {
    "multilenet": (lenet.build_encoder, lenet.build_head),
    "resnet18-cifar": (resnet.build_encoder, resnet.build_head),
    "resnet18": (resnet18.build_encoder, resnet18.build_head),
    "resnet50-dilated": (dilated_resnet.build_encoder, psp.build_head),
    "segnet-split": (segnet.build_encoder, segnet.build_head),
    "mlp": (mlp.build_encoder, mlp.build_head),
    "mpnn": (mpnn.build_encoder, mpnn.build_head),
}
