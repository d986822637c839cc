"""Training augmentation on the device, per sample, seeded by the step: resuming draws the same crops.

`scale-crop` is the RandomScaleCrop of the NYUv2 references (MTAN, Liu et al. CVPR 2019; Nash-MTL,
Navon et al. ICML 2022; FAMO): per sample a scale s from {1.0, 1.2, 1.5}, a random crop of
(int(H/s), int(W/s)) at an integer position drawn uniformly (both ends included), resized back to
(H, W); depth is divided by s (the scene comes closer), disparity and instance offsets (pixels) are
multiplied by s. `scale-crop-flip` adds a horizontal flip with probability 1/2, which negates the x
component of surface normals and of offsets.

The resize is the `align_corners=True` one of the references: output pixel (r, c) of a crop of
(h, w) at (top, left) reads the source position (top + r (h - 1) / (H - 1), left + c' (w - 1) / (W - 1)),
c' = W - 1 - c when flipped. The image is interpolated bilinearly there (what
`F.interpolate(crop, (H, W), mode="bilinear", align_corners=True)` gives); every other target takes the
source pixel nearest to it, with ties (x.5, e.g. H = 7 and s = 1.5) going to the even index: the rule of
`grid_sample(mode="nearest")`, which rounds with nearbyint. The positions are computed in integer
arithmetic (numerator r (h - 1) + top (H - 1) over H - 1), so the rounding and the bilinear weights are
exact: s = 1 without a flip returns the input bit for bit, and a tie never depends on float noise.

Differences from the references, all deliberate: the whole batch is resampled at once on the device
(gathers and lerps over the batch, no per-sample Python loop, no host sync); every target other than
the image is sampled with nearest neighbour, so invalid (NaN) pixels never blend into valid ones and
normals stay unit vectors (the references interpolate normals bilinearly); the draws come from a
generator seeded by (seed, step), so a resumed run sees the same augmentation as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from mtlcli.names import AUGMENT_CHOICES

__all__ = ["AUGMENT_CHOICES", "SCALES", "Augment", "Crops", "apply_crops", "build_augment", "draw_crops", "scale_crop"]

SCALES = (1.0, 1.2, 1.5)

Augment = Callable[[Tensor, dict[str, Tensor], int], tuple[Tensor, dict[str, Tensor]]]


class Crops(NamedTuple):
    """The per-sample draws of one batch, all [B] tensors on the device."""

    scale: Tensor  # float32: s
    height: Tensor  # int64: int(H / s), the references' crop height
    width: Tensor  # int64: int(W / s)
    top: Tensor  # int64: 0 .. H - height, both included
    left: Tensor  # int64: 0 .. W - width, both included
    mirrored: Tensor  # bool: flipped along the width


def _identity(x: Tensor, targets: dict[str, Tensor], _step: int) -> tuple[Tensor, dict[str, Tensor]]:
    return x, targets


def _crop_sizes(size: int) -> list[int]:
    """The references' int(size / s) for each scale (at least one pixel)."""
    return [max(int(size / scale), 1) for scale in SCALES]


def draw_crops(batch: int, height: int, width: int, generator: torch.Generator, *, flip: bool, device: torch.device) -> Crops:
    """Per sample: a scale from SCALES (uniform), a crop position (uniform over the integers, both ends), a flip (p 1/2)."""
    choice = torch.randint(len(SCALES), (batch,), generator=generator, device=device)
    scale = torch.tensor(SCALES, dtype=torch.float32, device=device)[choice]
    crop_h = torch.tensor(_crop_sizes(height), dtype=torch.int64, device=device)[choice]
    crop_w = torch.tensor(_crop_sizes(width), dtype=torch.int64, device=device)[choice]
    # floor(u * n) with u in [0, 1): uniform over 0 .. n - 1 (float32 u * n stays below n for n < 2**24)
    top = (torch.rand(batch, generator=generator, device=device) * (height - crop_h + 1)).floor().long()
    left = (torch.rand(batch, generator=generator, device=device) * (width - crop_w + 1)).floor().long()
    if flip:
        mirrored = torch.rand(batch, generator=generator, device=device) < 0.5
    else:
        mirrored = torch.zeros(batch, dtype=torch.bool, device=device)
    return Crops(scale, crop_h, crop_w, top, left, mirrored)


def _positions(size: int, start: Tensor, crop: Tensor) -> tuple[Tensor, Tensor, int]:
    """Source positions start + k (crop - 1) / (size - 1) of the outputs k = 0 .. size - 1, exactly, as
    (integer part [B, size], remainder [B, size], denominator): position = integer part + remainder / denominator."""
    denominator = max(size - 1, 1)
    k = torch.arange(size, dtype=torch.int64, device=start.device)
    numerator = start[:, None] * denominator + k[None, :] * (crop[:, None] - 1)
    whole = torch.div(numerator, denominator, rounding_mode="floor")
    return whole, numerator - whole * denominator, denominator


def _nearest(whole: Tensor, remainder: Tensor, denominator: int) -> Tensor:
    """round(whole + remainder / denominator), ties to even: grid_sample's nearbyint, without float noise."""
    twice = 2 * remainder
    up = (twice > denominator) | ((twice == denominator) & (whole % 2 == 1))
    return whole + up.long()


def _mirror(index: Tensor, mirrored: Tensor) -> Tensor:
    """Output column c reads what column W - 1 - c reads unflipped, for the mirrored samples."""
    return torch.where(mirrored[:, None], index.flip(1), index)


def _rows(array: Tensor, index: Tensor) -> Tensor:
    """array [B, C, H, W] at rows index [B, H'] -> [B, C, H', W]."""
    batch, channels, _height, width = array.shape
    return array.gather(2, index[:, None, :, None].expand(batch, channels, index.shape[1], width))


def _cols(array: Tensor, index: Tensor) -> Tensor:
    """array [B, C, H, W] at columns index [B, W'] -> [B, C, H, W']."""
    batch, channels, height, _width = array.shape
    return array.gather(3, index[:, None, None, :].expand(batch, channels, height, index.shape[1]))


def _bilinear(x: Tensor, crops: Crops) -> Tensor:
    """x [B, C, H, W] resized from each sample's crop with align_corners=True: separable, exact at integer positions."""
    _batch, _channels, height, width = x.shape
    source = x if x.is_floating_point() else x.to(torch.float32)
    row, row_rem, row_den = _positions(height, crops.top, crops.height)
    col, col_rem, col_den = _positions(width, crops.left, crops.width)
    row_weight = row_rem.to(source.dtype) / row_den
    col_weight = _mirror(col_rem.to(source.dtype) / col_den, crops.mirrored)
    # the next pixel is read only with a weight > 0, i.e. inside the crop; the clamp keeps the last one in range
    row_next, col_next = (row + 1).clamp(max=height - 1), _mirror((col + 1).clamp(max=width - 1), crops.mirrored)
    col = _mirror(col, crops.mirrored)
    rows = torch.lerp(_rows(source, row), _rows(source, row_next), row_weight[:, None, :, None])  # lerp(a, b, 0) == a
    out = torch.lerp(_cols(rows, col), _cols(rows, col_next), col_weight[:, None, None, :])
    return out if x.is_floating_point() else out.round().clamp(*_bounds(x.dtype)).to(x.dtype)


def _bounds(dtype: torch.dtype) -> tuple[int, int]:
    info = torch.iinfo(dtype)
    return info.min, info.max


def _nearest_target(target: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """target [B, H, W] or [B, C, H, W] at rows [B, H] x cols [B, W]: one gather, any dtype, values copied bit for bit."""
    source = target.unsqueeze(1) if target.ndim == 3 else target
    batch, channels, _height, width = source.shape
    index = (rows[:, :, None] * width + cols[:, None, :]).flatten(1)  # [B, H W]
    out = source.flatten(2).gather(2, index[:, None, :].expand(batch, channels, index.shape[1]))
    out = out.view(batch, channels, rows.shape[1], cols.shape[1])
    return out.squeeze(1) if target.ndim == 3 else out


def apply_crops(x: Tensor, targets: dict[str, Tensor], kinds: dict[str, str], crops: Crops) -> tuple[Tensor, dict[str, Tensor]]:
    """Resample a batch by its draws: the image bilinear, every target nearest, values rescaled and mirrored by kind."""
    batch, _channels, height, width = x.shape
    row, row_rem, row_den = _positions(height, crops.top, crops.height)
    col, col_rem, col_den = _positions(width, crops.left, crops.width)
    rows = _nearest(row, row_rem, row_den)
    cols = _mirror(_nearest(col, col_rem, col_den), crops.mirrored)
    out: dict[str, Tensor] = {}
    for name, target in targets.items():
        kind = kinds[name]
        if kind in ("class", "label", "value"):  # one value per sample: the same whatever the crop
            out[name] = target
            continue
        if target.shape[0] != batch or tuple(target.shape[-2:]) != (height, width):
            raise ValueError(f"target {name!r} of shape {tuple(target.shape)} does not match the images' {tuple(x.shape)}")
        sampled = _nearest_target(target, rows, cols)
        if kind in ("depth", "disparity", "offset", "normal"):
            shape = (batch, *([1] * (sampled.ndim - 1)))
            scale = crops.scale.to(sampled.dtype).view(shape)
            sign = torch.where(crops.mirrored, -1.0, 1.0).to(sampled.dtype).view(batch, *([1] * (sampled.ndim - 2)))
            if kind == "depth":
                sampled = sampled / scale
            elif kind == "disparity":
                sampled = sampled * scale
            elif kind == "offset":  # channels (dy, dx), in pixels
                sampled = sampled * scale
                sampled = torch.stack([sampled[:, 0], sampled[:, 1] * sign], dim=1)
            else:  # unit normals (x, y, z): a flip negates x
                sampled = torch.stack([sampled[:, 0] * sign, sampled[:, 1], sampled[:, 2]], dim=1)
        out[name] = sampled
    return _bilinear(x, crops), out


def scale_crop(
    x: Tensor, targets: dict[str, Tensor], kinds: dict[str, str], generator: torch.Generator, *, flip: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """Random scale-crop (and flip) of a batch: images bilinear, targets nearest, values rescaled by kind."""
    batch, _channels, height, width = x.shape
    crops = draw_crops(batch, height, width, generator, flip=flip, device=x.device)
    return apply_crops(x, targets, kinds, crops)


def _seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def build_augment(name: str, kinds: dict[str, str], seed: int, device: torch.device) -> Augment:
    """The augmentation `name` (after `default` is resolved) as a function of (x, targets, global step)."""
    if name == "none":
        return _identity
    if name not in ("scale-crop", "scale-crop-flip"):
        raise ValueError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENT_CHOICES)}")
    flip = name == "scale-crop-flip"
    generator = torch.Generator(device=device)

    def augment(x: Tensor, targets: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        generator.manual_seed(_seed(seed, step))
        return scale_crop(x, targets, kinds, generator, flip=flip)

    return augment
