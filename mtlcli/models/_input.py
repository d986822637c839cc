"""The input check the fully convolutional encoders share: channels, and sides a multiple of their reduction."""

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
