"""Training augmentation on the device, per sample, seeded by the step: resuming draws the same crops.

`scale-crop` is the RandomScaleCrop of the NYUv2 references (MTAN, Liu et al. CVPR 2019; Nash-MTL,
Navon et al. ICML 2022; FAMO): per sample a scale s from {1.0, 1.2, 1.5}, a random crop of
(H/s, W/s) resized back to (H, W); depth is divided by s (the scene comes closer), disparity and
instance offsets (pixels) are multiplied by s. `scale-crop-flip` adds a horizontal flip with
probability 1/2, which negates the x component of surface normals and of offsets.

Differences from the references, all deliberate: the whole batch is resampled in one `grid_sample`
on the device (no per-sample Python loop); every target other than the image is sampled with
nearest neighbour, so invalid (NaN) pixels never blend into valid ones and normals stay unit
vectors (the references interpolate normals bilinearly); the draws come from a generator seeded
by (seed, step), so a resumed run sees the same augmentation as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENT_CHOICES", "SCALES", "Augment", "build_augment", "scale_crop"]

AUGMENT_CHOICES = ("default", "none", "scale-crop", "scale-crop-flip")
SCALES = (1.0, 1.2, 1.5)

Augment = Callable[[Tensor, dict[str, Tensor], int], tuple[Tensor, dict[str, Tensor]]]


def _identity(x: Tensor, targets: dict[str, Tensor], _step: int) -> tuple[Tensor, dict[str, Tensor]]:
    return x, targets


def _sample(array: Tensor, grid: Tensor, mode: str) -> Tensor:
    """[B, C, H, W] (or [B, H, W]) resampled at `grid` [B, H, W, 2]."""
    squeeze = array.ndim == 3
    source = array.unsqueeze(1) if squeeze else array
    out = F.grid_sample(source.to(torch.float32), grid, mode=mode, padding_mode="border", align_corners=True)
    out = out.squeeze(1) if squeeze else out
    return out.round().to(array.dtype) if not array.is_floating_point() else out.to(array.dtype)


def scale_crop(
    x: Tensor, targets: dict[str, Tensor], kinds: dict[str, str], generator: torch.Generator, *, flip: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """Random scale-crop (and flip) of a batch: images bilinear, targets nearest, values rescaled by kind."""
    batch, _channels, height, width = x.shape
    device = x.device
    scales = torch.tensor(SCALES, device=device)[torch.randint(len(SCALES), (batch,), generator=generator, device=device)]
    crop_h, crop_w = (height / scales).floor(), (width / scales).floor()  # the references' int(H / s)
    top = (torch.rand(batch, generator=generator, device=device) * (height - crop_h + 1)).floor()
    left = (torch.rand(batch, generator=generator, device=device) * (width - crop_w + 1)).floor()
    mirrored = (
        torch.rand(batch, generator=generator, device=device) < 0.5
        if flip
        else torch.zeros(batch, dtype=torch.bool, device=device)
    )
    # output pixel (r, c) reads source pixel (top + r * (crop_h - 1) / (H - 1), left + c' * (crop_w - 1) / (W - 1)),
    # c' = W - 1 - c when mirrored (align_corners=True: pixel centres at the grid's end points)
    rows = torch.linspace(0, 1, height, device=device)
    cols = torch.linspace(0, 1, width, device=device)
    cols = torch.where(mirrored[:, None], 1 - cols[None, :], cols[None, :])  # [B, W]
    src_r = top[:, None] + rows[None, :] * (crop_h[:, None] - 1)  # [B, H]
    src_c = left[:, None] + cols * (crop_w[:, None] - 1)  # [B, W]
    grid_y = (src_r / max(height - 1, 1) * 2 - 1)[:, :, None].expand(batch, height, width)
    grid_x = (src_c / max(width - 1, 1) * 2 - 1)[:, None, :].expand(batch, height, width)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    out_x = _sample(x, grid, "bilinear")
    sign = torch.where(mirrored, -1.0, 1.0).view(batch, 1, 1)
    out = {}
    for name, target in targets.items():
        kind = kinds[name]
        if kind == "class":
            out[name] = target
            continue
        sampled = _sample(target, grid, "nearest")
        scale = scales.view(batch, *([1] * (sampled.ndim - 1)))
        if kind == "depth":
            sampled = sampled / scale
        elif kind == "disparity":
            sampled = sampled * scale
        elif kind == "offset":
            sampled = sampled * scale
            sampled = torch.stack([sampled[:, 0], sampled[:, 1] * sign], dim=1)
        elif kind == "normal":
            sampled = torch.stack([sampled[:, 0] * sign, sampled[:, 1], sampled[:, 2]], dim=1)
        out[name] = sampled
    return out_x, out


def build_augment(name: str, kinds: dict[str, str], seed: int, device: torch.device) -> Augment:
    """The augmentation `name` (after `default` is resolved) as a function of (x, targets, global step)."""
    if name == "none":
        return _identity
    if name not in ("scale-crop", "scale-crop-flip"):
        raise ValueError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENT_CHOICES)}")
    flip = name == "scale-crop-flip"
    generator = torch.Generator(device=device)

    def augment(x: Tensor, targets: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        generator.manual_seed((seed * 1_000_003 + step) % (2**63))
        return scale_crop(x, targets, kinds, generator, flip=flip)

    return augment
