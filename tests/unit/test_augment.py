"""The on-device NYUv2 scale-crop(-flip) augmentation against its mathematical definition.

Definition (Nash-MTL `experiments/nyuv2/data.py` RandomScaleCrop and flip, resize with align_corners=True):
per sample s in SCALES, (h, w) = (int(H / s), int(W / s)), top in 0 .. H - h and left in 0 .. W - w (both ends
included), output pixel (r, c) reads the source position (top + r (h - 1) / (H - 1), left + c' (w - 1) / (W - 1)),
c' = W - 1 - c when flipped. The image is bilinear there; every other target takes the nearest source pixel.

The rounding rule of `grid_sample(mode="nearest")`: the grid value g is unnormalised to ((g + 1) / 2) (size - 1)
(align_corners=True) and rounded with nearbyint, i.e. to nearest with ties to even (checked below on a grid whose
values are exact). A tie happens when r (h - 1) / (H - 1) has a half, e.g. H = 7, s = 1.5 (h = 4): 3 r / 6. In float
the position of a tie lands an ulp either side, so `mtlcli.augment` computes positions in integer arithmetic and rounds
ties to even exactly; the tests compute the expected source pixel with `fractions.Fraction` and Python's `round`
(which rounds ties to even as well).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mtlcli.augment import AUGMENT_CHOICES, SCALES, Crops, apply_crops, build_augment, draw_crops, scale_crop

CPU = torch.device("cpu")
KINDS = {
    "labels": "class",
    "semantic": "segmentation",
    "offset": "offset",
    "disparity": "disparity",
    "depth": "depth",
    "normal": "normal",
}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _targets(batch: int, height: int, width: int, seed: int = 0) -> dict[str, Tensor]:
    """One target of each kind, with NaN (255 for segmentation) at about 20% of the pixels."""
    g = _generator(seed)

    def invalid() -> Tensor:
        return torch.rand(batch, height, width, generator=g) < 0.2

    semantic = torch.randint(0, 13, (batch, height, width), generator=g).to(torch.uint8)
    semantic[invalid()] = 255
    offset = torch.randn(batch, 2, height, width, generator=g) * 5
    offset.masked_fill_(invalid()[:, None], float("nan"))
    disparity = torch.rand(batch, height, width, generator=g).masked_fill(invalid(), float("nan"))
    depth = (torch.rand(batch, height, width, generator=g) * 9 + 0.5).masked_fill(invalid(), float("nan"))
    normal = F.normalize(torch.randn(batch, 3, height, width, generator=g), dim=1)
    normal.masked_fill_(invalid()[:, None], float("nan"))
    labels = torch.randint(0, 10, (batch, 4), generator=g)
    return {"labels": labels, "semantic": semantic, "offset": offset, "disparity": disparity, "depth": depth, "normal": normal}


def _same(actual: Tensor, expected: Tensor) -> None:
    """Bit-for-bit equal, same dtype and shape, NaN where NaN."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _source_index(start: int, crop: int, size: int, k: int) -> int:
    """round(start + k (crop - 1) / (size - 1)), exact, ties to even."""
    return round(Fraction(start) + Fraction(k * (crop - 1), max(size - 1, 1)))


def _expected_indices(crops: Crops, b: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The source rows [H] and columns [W] that sample b's output pixels read (nearest)."""
    top, h, left, w = (int(crops.top[b]), int(crops.height[b]), int(crops.left[b]), int(crops.width[b]))
    rows = [_source_index(top, h, height, r) for r in range(height)]
    cols = [_source_index(left, w, width, c) for c in range(width)]
    if bool(crops.mirrored[b]):
        cols = cols[::-1]  # output column c reads what column W - 1 - c reads unflipped
    return torch.tensor(rows), torch.tensor(cols)


def _crops(scale: list[float], top: list[int], left: list[int], mirrored: list[bool], height: int, width: int) -> Crops:
    """Forced draws."""
    return Crops(
        scale=torch.tensor(scale, dtype=torch.float32),
        height=torch.tensor([int(height / s) for s in scale]),
        width=torch.tensor([int(width / s) for s in scale]),
        top=torch.tensor(top),
        left=torch.tensor(left),
        mirrored=torch.tensor(mirrored),
    )


def _drawn_scales(crops: Crops) -> set[float]:
    """The scales drawn (stored as float32: 1.2 reads 1.2000000476837158)."""
    return {round(s, 6) for s in crops.scale.tolist()}


def _identity_seed(batch: int) -> int:
    """A seed whose draws are s = 1 and no flip for every sample."""
    for seed in range(100_000):
        crops = draw_crops(batch, 8, 8, _generator(seed), flip=True, device=CPU)
        if bool((crops.scale == 1).all()) and not bool(crops.mirrored.any()):
            return seed
    raise AssertionError("no seed draws the identity")


# -- identity ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(7, 10), (24, 32)])
def test_scale_one_without_flip_is_the_identity_bit_for_bit(height: int, width: int) -> None:
    batch = 3
    x = torch.rand(batch, 3, height, width, generator=_generator(1))
    targets = _targets(batch, height, width)
    crops = _crops([1.0] * batch, [0] * batch, [0] * batch, [False] * batch, height, width)
    out_x, out = apply_crops(x, targets, KINDS, crops)
    _same(out_x, x)
    assert out.keys() == targets.keys()
    for name, target in targets.items():
        _same(out[name], target)


def test_a_generator_drawing_scale_one_and_no_flip_gives_the_identity() -> None:
    batch, height, width = 2, 8, 8
    seed = _identity_seed(batch)
    x = torch.rand(batch, 3, height, width, generator=_generator(2))
    targets = _targets(batch, height, width)
    out_x, out = scale_crop(x, targets, KINDS, _generator(seed), flip=True)
    _same(out_x, x)
    for name, target in targets.items():
        _same(out[name], target)


def test_scale_one_with_flip_mirrors_exactly_and_negates_x_components() -> None:
    batch, height, width = 2, 7, 10
    x = torch.rand(batch, 3, height, width, generator=_generator(3))
    targets = _targets(batch, height, width)
    crops = _crops([1.0] * batch, [0] * batch, [0] * batch, [True] * batch, height, width)
    out_x, out = apply_crops(x, targets, KINDS, crops)
    _same(out_x, x.flip(-1))
    _same(out["semantic"], targets["semantic"].flip(-1))
    _same(out["depth"], targets["depth"].flip(-1))
    _same(out["disparity"], targets["disparity"].flip(-1))
    offset, normal = targets["offset"].flip(-1), targets["normal"].flip(-1)
    _same(out["offset"], torch.stack([offset[:, 0], -offset[:, 1]], dim=1))
    _same(out["normal"], torch.stack([-normal[:, 0], normal[:, 1], normal[:, 2]], dim=1))
    _same(out["labels"], targets["labels"])


# -- the image: bilinear, align_corners=True ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "height", "width"), [(3, 24, 32), (3, 7, 10), (1, 7, 10), (1, 33, 17)])
def test_image_equals_interpolate_of_the_drawn_crop(channels: int, height: int, width: int) -> None:
    batch = 48
    x = torch.rand(batch, channels, height, width, generator=_generator(4))
    crops = draw_crops(batch, height, width, _generator(5), flip=True, device=CPU)
    assert _drawn_scales(crops) == set(SCALES) and crops.mirrored.any() and not crops.mirrored.all()
    out_x, _ = apply_crops(x, {}, {}, crops)
    assert out_x.shape == x.shape and out_x.dtype == x.dtype
    for b in range(batch):
        top, h, left, w = (int(crops.top[b]), int(crops.height[b]), int(crops.left[b]), int(crops.width[b]))
        crop = x[b : b + 1, :, top : top + h, left : left + w]
        expected = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=True)[0]
        if bool(crops.mirrored[b]):
            expected = expected.flip(-1)
        torch.testing.assert_close(out_x[b], expected, rtol=0, atol=1e-5)


def test_scale_crop_uses_the_draws_of_draw_crops() -> None:
    batch, height, width = 16, 7, 10
    x = torch.rand(batch, 1, height, width, generator=_generator(6))
    targets = _targets(batch, height, width)
    out_x, out = scale_crop(x, targets, KINDS, _generator(7), flip=True)
    crops = draw_crops(batch, height, width, _generator(7), flip=True, device=CPU)
    ref_x, ref = apply_crops(x, targets, KINDS, crops)
    _same(out_x, ref_x)
    for name in targets:
        _same(out[name], ref[name])


# -- nearest targets: which source pixel ---------------------------------------------------------------------------------


def test_grid_sample_nearest_rounds_ties_to_even() -> None:
    """The rule the augmentation reproduces: on a ramp of 5, the exact grid -0.75, -0.25, 0.25, 0.75 is 0.5 .. 3.5."""
    ramp = torch.arange(5.0).view(1, 1, 1, 5)
    gx = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    grid = torch.stack([gx, torch.zeros(4)], dim=-1).view(1, 1, 4, 2)
    out = F.grid_sample(ramp, grid, mode="nearest", align_corners=True)
    assert out.flatten().tolist() == [0.0, 2.0, 2.0, 4.0]
    assert [round(Fraction(k, 2)) for k in (1, 3, 5, 7)] == [0, 2, 2, 4]  # Python's round: the same rule


@pytest.mark.parametrize(("height", "width"), [(7, 10), (24, 32), (9, 6)])
def test_nearest_targets_read_the_rounded_source_pixel(height: int, width: int) -> None:
    """A segmentation map whose values encode their own (row, col) shows which pixel each output reads."""
    batch = 64
    where = torch.arange(height * width).view(1, height, width).expand(batch, height, width)
    targets = {"where": where.clone(), "small": where.to(torch.uint8) if height * width < 255 else where % 255}
    kinds = {"where": "segmentation", "small": "segmentation"}
    crops = draw_crops(batch, height, width, _generator(8), flip=True, device=CPU)
    _, out = apply_crops(torch.zeros(batch, 3, height, width), targets, kinds, crops)
    assert out["where"].dtype == torch.int64
    for b in range(batch):
        rows, cols = _expected_indices(crops, b, height, width)
        top, h, left, w = (int(crops.top[b]), int(crops.height[b]), int(crops.left[b]), int(crops.width[b]))
        assert top <= int(rows.min()) and int(rows.max()) <= top + h - 1  # inside the crop
        assert left <= int(cols.min()) and int(cols.max()) <= left + w - 1
        _same(out["where"][b], rows[:, None] * width + cols[None, :])
        _same(out["small"][b], targets["small"][b][rows[:, None], cols[None, :]])


def test_nearest_ties_go_to_the_even_pixel() -> None:
    """H = 7, s = 1.5: h = 4, output row r reads top + r / 2; the halves round to even whatever the float noise."""
    height, width = 7, 10
    where = torch.arange(height * width).view(1, height, width).expand(4, height, width).clone()
    crops = _crops([1.5] * 4, [0, 1, 2, 3], [0, 1, 2, 3], [False, False, True, True], height, width)
    _, out = apply_crops(torch.zeros(4, 1, height, width), {"where": where}, {"where": "segmentation"}, crops)
    rows = out["where"] // width
    assert rows[0, :, 0].tolist() == [0, 0, 1, 2, 2, 2, 3]  # 0, .5, 1, 1.5, 2, 2.5, 3
    assert rows[1, :, 0].tolist() == [1, 2, 2, 2, 3, 4, 4]  # 1, 1.5, 2, 2.5, 3, 3.5, 4
    assert rows[2, :, 0].tolist() == [2, 2, 3, 4, 4, 4, 5]
    assert rows[3, :, 0].tolist() == [3, 4, 4, 4, 5, 6, 6]
    for b in range(4):
        expected_rows, expected_cols = _expected_indices(crops, b, height, width)
        _same(out["where"][b], expected_rows[:, None] * width + expected_cols[None, :])


def test_nearest_agrees_with_grid_sample_where_there_is_no_tie() -> None:
    """H - 1 and W - 1 odd: no position is a half, so grid_sample nearest (float64 grid) is unambiguous."""
    batch, height, width = 32, 24, 32
    values = torch.randn(batch, 1, height, width, generator=_generator(9), dtype=torch.float64)
    crops = draw_crops(batch, height, width, _generator(10), flip=True, device=CPU)
    _, out = apply_crops(torch.zeros(batch, 1, height, width), {"v": values[:, 0]}, {"v": "disparity"}, crops)
    r = torch.arange(height, dtype=torch.float64)
    c = torch.arange(width, dtype=torch.float64)
    c = torch.where(crops.mirrored[:, None], (width - 1 - c)[None, :], c[None, :])
    src_r = crops.top[:, None] + r[None, :] * (crops.height[:, None] - 1) / (height - 1)
    src_c = crops.left[:, None] + c * (crops.width[:, None] - 1) / (width - 1)
    gy = (src_r / (height - 1) * 2 - 1)[:, :, None].expand(batch, height, width)
    gx = (src_c / (width - 1) * 2 - 1)[:, None, :].expand(batch, height, width)
    expected = F.grid_sample(values, torch.stack([gx, gy], dim=-1), mode="nearest", align_corners=True)[:, 0]
    scale = crops.scale.to(torch.float64).view(batch, 1, 1)
    torch.testing.assert_close(out["v"], expected * scale, rtol=1e-12, atol=0)


# -- values by kind ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(7, 10), (24, 32)])
def test_values_are_rescaled_and_mirrored_by_kind(height: int, width: int) -> None:
    batch = 64
    targets = _targets(batch, height, width, seed=11)
    crops = draw_crops(batch, height, width, _generator(12), flip=True, device=CPU)
    assert _drawn_scales(crops) == set(SCALES) and crops.mirrored.any() and not crops.mirrored.all()
    _, out = apply_crops(torch.zeros(batch, 3, height, width), targets, KINDS, crops)
    _same(out["labels"], targets["labels"])
    assert out["semantic"].dtype == torch.uint8
    assert set(out["semantic"].unique().tolist()) <= set(targets["semantic"].unique().tolist())
    for b in range(batch):
        rows, cols = _expected_indices(crops, b, height, width)
        s, sign = float(crops.scale[b]), -1.0 if bool(crops.mirrored[b]) else 1.0

        def at(name: str, b: int = b, rows: Tensor = rows, cols: Tensor = cols) -> Tensor:
            return targets[name][b][..., rows[:, None], cols[None, :]]

        _same(out["semantic"][b], at("semantic"))
        torch.testing.assert_close(out["depth"][b], at("depth") / s, equal_nan=True)
        torch.testing.assert_close(out["disparity"][b], at("disparity") * s, equal_nan=True)
        offset = at("offset")
        torch.testing.assert_close(out["offset"][b, 0], offset[0] * s, equal_nan=True)  # dy keeps its sign
        torch.testing.assert_close(out["offset"][b, 1], offset[1] * s * sign, equal_nan=True)  # dx flips with the image
        normal = at("normal")
        _same(out["normal"][b], torch.stack([normal[0] * sign, normal[1], normal[2]]))
        # NaN never spreads: the NaNs of the output are exactly the sampled NaN source pixels
        for name in ("depth", "disparity", "offset", "normal"):
            assert torch.equal(out[name][b].isnan(), at(name).isnan()), name
            assert int(out[name][b].isnan().sum()) == int(at(name).isnan().sum())
    valid = ~out["normal"].isnan().any(dim=1)
    assert valid.any()
    torch.testing.assert_close(out["normal"].norm(dim=1)[valid], torch.ones(int(valid.sum())), rtol=0, atol=1e-5)
    for name in ("depth", "disparity", "offset"):
        assert out[name].dtype == torch.float32


# -- the draws ---------------------------------------------------------------------------------------------------------------


def test_same_seed_and_step_give_the_same_output_and_other_steps_differ() -> None:
    batch, height, width = 8, 7, 10
    x = torch.rand(batch, 3, height, width, generator=_generator(13))
    targets = _targets(batch, height, width)
    first = build_augment("scale-crop-flip", KINDS, seed=3, device=CPU)
    outputs = [first(x, targets, step) for step in range(6)]
    resumed = build_augment("scale-crop-flip", KINDS, seed=3, device=CPU)  # a fresh run resumed at step 5
    again_x, again = resumed(x, targets, 5)
    _same(again_x, outputs[5][0])
    for name in targets:
        _same(again[name], outputs[5][1][name])
    for step in range(5):
        assert not torch.equal(outputs[step][0], outputs[5][0])
    other_seed = build_augment("scale-crop-flip", KINDS, seed=4, device=CPU)
    assert not torch.equal(other_seed(x, targets, 5)[0], outputs[5][0])


def test_scale_crop_without_flip_never_mirrors() -> None:
    batch, height, width = 256, 7, 10
    crops = draw_crops(batch, height, width, _generator(14), flip=False, device=CPU)
    assert not crops.mirrored.any()
    where = torch.arange(height * width).view(1, height, width).expand(batch, height, width).clone()
    augment = build_augment("scale-crop", {"where": "segmentation"}, seed=0, device=CPU)
    _, out = augment(torch.zeros(batch, 1, height, width), {"where": where}, 0)
    cols = out["where"] % width
    assert bool((cols[:, :, 1:] >= cols[:, :, :-1]).all())  # columns never run backwards


def test_draws_differ_within_a_batch() -> None:
    crops = draw_crops(64, 24, 32, _generator(15), flip=True, device=CPU)
    assert _drawn_scales(crops) == set(SCALES)
    assert 20 <= int(crops.mirrored.sum()) <= 44
    assert len(set(zip(crops.top.tolist(), crops.left.tolist(), strict=True))) > 10


def test_scale_and_flip_frequencies() -> None:
    n = 3000
    crops = draw_crops(n, 288, 384, _generator(16), flip=True, device=CPU)
    for s in SCALES:
        assert abs(float((crops.scale == s).float().mean()) - 1 / 3) < 0.05, s
    assert abs(float(crops.mirrored.float().mean()) - 0.5) < 0.05


@pytest.mark.parametrize(("height", "width"), [(7, 10), (288, 384), (24, 32)])
def test_crop_sizes_are_the_references_int_of_size_over_scale(height: int, width: int) -> None:
    crops = draw_crops(300, height, width, _generator(17), flip=True, device=CPU)
    for s in SCALES:
        chosen = crops.scale == s
        assert chosen.any()
        assert set(crops.height[chosen].tolist()) == {int(height / s)}
        assert set(crops.width[chosen].tolist()) == {int(width / s)}
    assert crops.height.dtype == crops.top.dtype == torch.int64


def test_crop_positions_cover_both_ends() -> None:
    height, width = 7, 10
    crops = draw_crops(3000, height, width, _generator(18), flip=True, device=CPU)
    for s in SCALES:
        chosen = crops.scale == s
        h, w = int(height / s), int(width / s)
        assert set(crops.top[chosen].tolist()) == set(range(height - h + 1)), s
        assert set(crops.left[chosen].tolist()) == set(range(width - w + 1)), s


# -- names, shapes ------------------------------------------------------------------------------------------------------------


def test_none_is_the_identity_and_unknown_names_raise() -> None:
    assert set(AUGMENT_CHOICES) == {"default", "none", "scale-crop", "scale-crop-flip"}
    x = torch.rand(2, 3, 7, 10)
    targets = _targets(2, 7, 10)
    out_x, out = build_augment("none", KINDS, seed=0, device=CPU)(x, targets, 7)
    assert out_x is x and out is targets
    for name in ("rotate", "default", ""):
        with pytest.raises(ValueError, match="unknown augmentation"):
            build_augment(name, KINDS, seed=0, device=CPU)


@pytest.mark.parametrize("channels", [1, 3])
def test_odd_sizes_and_grey_images(channels: int) -> None:
    batch, height, width = 5, 7, 10
    x = torch.rand(batch, channels, height, width, generator=_generator(19))
    targets = _targets(batch, height, width)
    augment = build_augment("scale-crop-flip", KINDS, seed=1, device=CPU)
    for step in range(20):
        out_x, out = augment(x, targets, step)
        assert out_x.shape == (batch, channels, height, width) and out_x.dtype == x.dtype
        assert bool(out_x.isfinite().all()) and float(out_x.min()) >= 0 and float(out_x.max()) <= 1
        for name, target in targets.items():
            assert out[name].shape == target.shape and out[name].dtype == target.dtype, name


def test_mismatched_target_shape_raises() -> None:
    x = torch.rand(2, 3, 7, 10)
    crops = _crops([1.2, 1.5], [0, 1], [0, 1], [False, True], 7, 10)
    with pytest.raises(ValueError, match="does not match"):
        apply_crops(x, {"depth": torch.rand(2, 8, 10)}, {"depth": "depth"}, crops)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_for_the_same_draws() -> None:
    batch, height, width = 16, 24, 32
    x = torch.rand(batch, 3, height, width, generator=_generator(20))
    targets = _targets(batch, height, width)
    crops = draw_crops(batch, height, width, _generator(21), flip=True, device=CPU)
    cuda = torch.device("cuda")
    ref_x, ref = apply_crops(x, targets, KINDS, crops)
    out_x, out = apply_crops(x.to(cuda), {k: v.to(cuda) for k, v in targets.items()}, KINDS, Crops(*(t.to(cuda) for t in crops)))
    torch.testing.assert_close(out_x.cpu(), ref_x, rtol=0, atol=1e-6)
    for name in targets:
        torch.testing.assert_close(out[name].cpu(), ref[name], rtol=1e-6, atol=0, equal_nan=True)
    augment = build_augment("scale-crop-flip", KINDS, seed=2, device=cuda)
    first = augment(x.to(cuda), {k: v.to(cuda) for k, v in targets.items()}, 3)
    second = augment(x.to(cuda), {k: v.to(cuda) for k, v in targets.items()}, 3)
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
