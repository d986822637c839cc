"""Multi-task models: a shared encoder producing the representation z and one head per task.

`registry` (the encoders, their options and input checks) is torch-free, so importing this package is
cheap; the torch side (`MultiTaskModel`, `build_model`, ...) is loaded on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtlcli.models.registry import ENCODERS, EncoderSpec, encoder_option_problems

if TYPE_CHECKING:
    from mtlcli.models.lenet import MultiLeNetEncoder, MultiLeNetHead
    from mtlcli.models.multitask import IndependentEncoders, MultiTaskModel, SliceHead, build_model, count_parameters

__all__ = [
    "ENCODERS",
    "EncoderSpec",
    "IndependentEncoders",
    "MultiLeNetEncoder",
    "MultiLeNetHead",
    "MultiTaskModel",
    "SliceHead",
    "build_model",
    "count_parameters",
    "encoder_option_problems",
]

def __getattr__(name: str) -> Any:
    """The torch side of the public API, imported on first use."""
    if name in ("IndependentEncoders", "MultiTaskModel", "SliceHead", "build_model", "count_parameters"):
        from mtlcli.models import multitask

        return getattr(multitask, name)
    if name in ("MultiLeNetEncoder", "MultiLeNetHead"):
        from mtlcli.models import lenet

        return getattr(lenet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
