"""What input each encoder can take, checked before anything is built (torch-free: recipe validation asks).

The fully convolutional encoders share one rule: channels, and sides a multiple of their reduction.
"""

from __future__ import annotations


def sides_problem(encoder: str, shape: tuple[int, int, int], multiple: int, why: str) -> str | None:
    """Why `encoder` cannot take (channels, height, width) inputs, or None: at least one channel, and height and
    width multiples of `multiple` (at least `multiple`), for the reason `why`."""
    channels, height, width = shape
    if channels < 1:
        return f"{encoder} needs at least 1 input channel, got {channels}"
    if min(height, width) < multiple or height % multiple or width % multiple:
        return (
            f"{encoder} takes images whose height and width are multiples of {multiple} (>= {multiple}), "
            f"got {height}x{width}: {why}"
        )
    return None


DILATED_OUTPUT_STRIDE = 8  # the dilated ResNet-50: layer3 and layer4 dilated instead of strided
SEGNET_STAGES = 5  # the split SegNet's max-pool/unpool stages


def resnet_cifar_input_problem(shape: tuple[int, int, int]) -> str | None:
    """Why the CIFAR-style ResNet-18 cannot take (channels, height, width) inputs, or None when it can."""
    _channels, height, width = shape
    if height != width:
        return f"resnet18-cifar takes square images, got {height}x{width}"
    if height < 32 or height % 32:
        return f"resnet18-cifar takes images whose side is a multiple of 32 (32, 64, 96, ...), got {height}"
    return None


def dilated_resnet_input_problem(shape: tuple[int, int, int]) -> str | None:
    """Why the dilated ResNet-50 cannot take (channels, height, width) inputs, or None when it can."""
    stride = DILATED_OUTPUT_STRIDE
    return sides_problem("dilated-resnet50", shape, stride, f"its output stride is {stride}")


def segnet_input_problem(shape: tuple[int, int, int]) -> str | None:
    """Why the split SegNet cannot take (channels, height, width) inputs, or None when it can."""
    why = f"its {SEGNET_STAGES} max-pool/unpool stages must divide them exactly"
    return sides_problem("segnet-split", shape, 2**SEGNET_STAGES, why)


def resnet18_input_problem(shape: tuple[int, int, int]) -> str | None:
    """Why torchvision's ResNet-18 cannot take (channels, height, width) inputs, or None: RGB, sides >= 32."""
    channels, height, width = shape
    if channels != 3:
        return f"resnet18 takes RGB images (3 channels), got {channels}"
    if min(height, width) < 32:
        return f"resnet18 takes images at least 32 pixels a side (it reduces them 32-fold), got {height}x{width}"
    return None
