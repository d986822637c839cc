"""Dense losses and metric accumulators against hand-computed values and independent numpy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from mtlcli.dense import (
    ABS_ERROR,
    ANGLE_BINS,
    ANGLES,
    CONFUSION,
    DENSE_LOSSES,
    DENSE_METRICS,
    IGNORE_INDEX,
    REL_ERROR,
    abs_error_state,
    angle_state,
    confusion_state,
    masked_l1,
    mean_angle,
    mean_iou,
    mean_of,
    median_angle,
    normal_cosine,
    pixel_accuracy,
    pixel_cross_entropy,
    rel_error_state,
    within,
)

NAN = math.nan


def logits_for(predicted: list[list[int]], num_classes: int) -> Tensor:
    """Logits [1, C, H, W] whose argmax is `predicted`, with some noise on the other classes."""
    p = torch.tensor(predicted)
    noise = torch.rand(1, num_classes, *p.shape)
    return noise + 5.0 * torch.nn.functional.one_hot(p, num_classes).permute(2, 0, 1).unsqueeze(0)


def unit_vectors(angles_deg: list[float], scale: float = 1.0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Predictions at the given angles to the target (0, 0, 1), as [1, 3, 1, N] tensors."""
    theta = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    pred = torch.stack([theta.sin(), torch.zeros_like(theta), theta.cos()]) * scale
    target = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).view(3, 1).expand(3, len(angles_deg))
    return pred.view(1, 3, 1, -1).to(dtype), target.reshape(1, 3, 1, -1).to(dtype)


def numpy_angles(pred: Tensor, target: Tensor) -> np.ndarray:
    """Angles in degrees of valid pixels, one pixel at a time (an independent slow reference)."""
    p = pred.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    t = target.double().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    out = []
    for a, b in zip(p, t, strict=True):
        if not np.all(np.isfinite(b)):
            continue
        cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        out.append(math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return np.array(out)


def random_normals(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.nn.functional.normalize(torch.randn(1, 3, 1, n, generator=g), dim=1)
    pred = target + 0.4 * torch.randn(1, 3, 1, n, generator=g)
    return pred, target


# ----------------------------------------------------------------------------------------------------------------
# segmentation

# 2x3 image, 4 classes: class 3 appears in neither truth nor prediction; pixel (1, 1) is unlabelled.
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, IGNORE_INDEX, 2]]], dtype=torch.uint8)
SEG_PRED = [[0, 1, 1], [2, 0, 2]]


def test_confusion_matrix_by_hand() -> None:
    state = confusion_state(logits_for(SEG_PRED, 4), SEG_TARGET, 4)
    # rows: true class, columns: predicted class; the unlabelled pixel (predicted 0) is not counted
    expected = torch.tensor(
        [
            [1, 1, 0, 0],  # true 0: (0,0) -> 0, (0,1) -> 1
            [0, 1, 1, 0],  # true 1: (0,2) -> 1, (1,0) -> 2
            [0, 0, 1, 0],  # true 2: (1,2) -> 2
            [0, 0, 0, 0],  # class 3 absent
        ],
        dtype=torch.float64,
    )
    assert state.dtype == torch.float64 and state.shape == (16,)
    assert torch.equal(state.view(4, 4), expected)


def test_miou_and_pixel_accuracy_by_hand() -> None:
    state = confusion_state(logits_for(SEG_PRED, 4), SEG_TARGET, 4)
    # IoU = TP / (TP + FP + FN): class 0: 1 / (1 + 0 + 1), class 1: 1 / (1 + 1 + 1), class 2: 1 / (1 + 1 + 0);
    # class 3 has an empty union and is skipped (counting it as 0 would give 100 / 3)
    assert mean_iou(state, 4) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3 * 100)
    assert mean_iou(state, 4) == pytest.approx(400 / 9)
    assert pixel_accuracy(state, 4) == pytest.approx(60.0)  # 3 correct of 5 labelled


def test_class_only_predicted_counts_with_iou_zero() -> None:
    target = torch.tensor([[[0, 0]]])
    state = confusion_state(logits_for([[0, 1]], 3), target, 3)
    # class 0: TP 1, FN 1 -> 1/2; class 1: FP 1 -> 0; class 2 absent -> skipped
    assert mean_iou(state, 3) == pytest.approx(25.0)
    assert pixel_accuracy(state, 3) == pytest.approx(50.0)


def test_confusion_of_unlabelled_batch_reads_nan() -> None:
    target = torch.full((1, 2, 3), IGNORE_INDEX, dtype=torch.uint8)
    state = confusion_state(torch.randn(1, 4, 2, 3), target, 4)
    assert torch.equal(state, torch.zeros(16, dtype=torch.float64))
    assert math.isnan(mean_iou(state, 4)) and math.isnan(pixel_accuracy(state, 4))


def test_pixel_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[[[0.0, 0.0, 1000.0]], [[math.log(3.0), 0.0, -1000.0]]]], requires_grad=True)  # [1, 2, 1, 3]
    target = torch.tensor([[[1, 0, IGNORE_INDEX]]], dtype=torch.uint8)
    loss = pixel_cross_entropy(logits, target)
    # pixel 0: softmax (1/4, 3/4), label 1 -> log(4/3); pixel 1: (1/2, 1/2) -> log 2; pixel 2 ignored
    assert loss.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2)
    loss.backward()
    assert torch.equal(logits.grad[..., 2], torch.zeros(1, 2, 1))
    # d/dz of CE = (softmax - onehot) / number of labelled pixels
    expected = torch.tensor([[[(1 / 4 - 0) / 2, (1 / 2 - 1) / 2]], [[(3 / 4 - 1) / 2, (1 / 2 - 0) / 2]]])
    assert torch.allclose(logits.grad[0, :, :, :2], expected)


# ----------------------------------------------------------------------------------------------------------------
# L1 and depth errors

OFFSET_PRED = [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]]
OFFSET_TARGET = [[[1.5, NAN], [1.0, 4.0]], [[NAN, NAN], [-2.0, 0.25]]]


def test_masked_l1_with_nans_by_hand() -> None:
    pred = torch.tensor([OFFSET_PRED], requires_grad=True)
    target = torch.tensor([OFFSET_TARGET])
    loss = masked_l1(pred, target)
    # valid components: |1 - 1.5| + |3 - 1| + |4 - 4| + |0 + 2| + |0 - 0.25| = 4.75 over 5
    assert loss.item() == pytest.approx(0.95)
    loss.backward()
    # sign(pred - target) / 5 on valid components, exactly 0 on NaN ones (and where the error is 0)
    expected = torch.tensor([[[[-0.2, 0.0], [0.2, 0.0]], [[0.0, 0.0], [0.2, -0.2]]]])
    assert torch.isfinite(pred.grad).all()
    assert torch.allclose(pred.grad, expected)
    assert torch.equal(pred.grad[torch.isnan(target)], torch.zeros(3))


def test_masked_l1_ignores_nan_pixels_whatever_the_prediction() -> None:
    target = torch.tensor([OFFSET_TARGET])
    base = torch.tensor([OFFSET_PRED])
    changed = base.clone()
    changed[torch.isnan(target)] = 1e6
    assert masked_l1(changed, target).item() == masked_l1(base, target).item()


def test_masked_l1_squeezes_depth_channel() -> None:
    target = torch.tensor([[[2.0, NAN], [0.0, -1.0]]])  # [1, 2, 2]
    pred = torch.tensor([[[[1.0, 7.0], [0.5, 1.0]]]], requires_grad=True)  # [1, 1, 2, 2]
    loss = masked_l1(pred, target)
    assert loss.item() == pytest.approx((1.0 + 0.5 + 2.0) / 3)
    assert masked_l1(pred[:, 0], target).item() == loss.item()
    loss.backward()
    assert pred.grad[0, 0, 0, 1].item() == 0.0 and torch.isfinite(pred.grad).all()
    with pytest.raises(ValueError, match="does not match"):
        masked_l1(torch.zeros(1, 2, 2, 2), target)


def test_abs_and_rel_error_by_hand() -> None:
    target = torch.tensor([[[2.0, 0.0, NAN, -4.0]]])  # [1, 1, 4]
    pred = torch.tensor([[[[1.0, 5.0, 3.0, -3.0]]]])  # [1, 1, 1, 4]
    abs_state = abs_error_state(pred, target)
    rel_state = rel_error_state(pred, target)
    assert abs_state.dtype == torch.float64 and rel_state.dtype == torch.float64
    # abs: |1 - 2| + |5 - 0| + |-3 + 4| over 3 finite targets
    assert abs_state.tolist() == [7.0, 3.0]
    assert mean_of(abs_state) == pytest.approx(7 / 3)
    # rel: the zero target is left out: |1 - 2| / 2 + |-3 + 4| / 4 over 2
    assert rel_state.tolist() == [0.75, 2.0]
    assert mean_of(rel_state) == pytest.approx(0.375)


def test_error_of_all_invalid_batch_reads_nan() -> None:
    target = torch.full((1, 2, 2), NAN)
    assert abs_error_state(torch.ones(1, 1, 2, 2), target).tolist() == [0.0, 0.0]
    assert math.isnan(mean_of(abs_error_state(torch.ones(1, 1, 2, 2), target)))
    assert math.isnan(mean_of(rel_error_state(torch.ones(1, 2, 2), torch.zeros(1, 2, 2))))


# ----------------------------------------------------------------------------------------------------------------
# normals


def test_normal_cosine_on_chosen_vectors() -> None:
    pred = torch.tensor([[1.0, 0.0, 1.0, 5.0], [0.0, 0.0, 1.0, -3.0], [0.0, 2.0, 0.0, 2.0]]).view(1, 3, 1, 4)
    target = torch.tensor([[0.0, 0.0, 1.0, NAN], [1.0, 0.0, 0.0, NAN], [0.0, 1.0, 0.0, NAN]]).view(1, 3, 1, 4)
    # pixel 0: 90 degrees -> 1; pixel 1: same direction (length 2) -> 0; pixel 2: 45 degrees -> 1 - 1/sqrt(2); pixel 3 invalid
    expected = (1.0 + 0.0 + (1 - 1 / math.sqrt(2))) / 3
    assert normal_cosine(pred, target).item() == pytest.approx(expected)
    assert normal_cosine(7.5 * pred, target).item() == pytest.approx(expected)
    opposite = torch.tensor([0.0, 0.0, -4.0]).view(1, 3, 1, 1)
    assert normal_cosine(opposite, torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1)).item() == pytest.approx(2.0)


def test_normal_cosine_gradient_is_finite_and_zero_on_invalid_pixels() -> None:
    # channel-major [3, N]: predictions (1, 0, 0), (2, 0, 1), (0.5, 0, 1); targets e_y, NaN, zero vector
    pred = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]]).view(1, 3, 1, 3).requires_grad_()
    target = torch.tensor([[0.0, NAN, 0.0], [1.0, NAN, 0.0], [0.0, NAN, 0.0]]).view(1, 3, 1, 3)
    # pixel 2: a zero target has no direction and counts as invalid too
    loss = normal_cosine(pred, target)
    assert loss.item() == pytest.approx(1.0)  # only pixel 0 (90 degrees) is valid
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert torch.equal(pred.grad[..., 1:], torch.zeros(1, 3, 1, 2))
    # at 90 degrees, d(1 - cos)/dp = -(t - (p.t) p) / |p| = -t for p = e_x, t = e_y
    assert torch.allclose(pred.grad[0, :, 0, 0], torch.tensor([0.0, -1.0, 0.0]))


def test_normal_cosine_zero_prediction_has_finite_gradient() -> None:
    pred = torch.zeros(1, 3, 1, 1, requires_grad=True)
    loss = normal_cosine(pred, torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1))
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_angle_metrics_on_known_angles() -> None:
    angles = [0.0, 10.0, 45.0, 60.0, 90.0, 180.0]
    pred, target = unit_vectors(angles, scale=3.0)
    target = torch.cat([target, torch.full((1, 3, 1, 1), NAN)], dim=3)
    pred = torch.cat([pred, torch.ones(1, 3, 1, 1)], dim=3)  # an invalid pixel
    state = angle_state(pred, target)
    assert state.dtype == torch.float64 and state.shape == (ANGLE_BINS + 2,)
    assert state[-1].item() == 6.0 and state[:ANGLE_BINS].sum().item() == 6.0
    assert mean_angle(state) == pytest.approx(sum(angles) / 6, abs=1e-4)  # float32 inputs
    # numpy's median of the six is (45 + 60) / 2; each value sits alone in its bin -> within half a bin
    assert median_angle(state) == pytest.approx(52.5, abs=0.005 + 1e-9)
    assert within(state, 11.25) == pytest.approx(200 / 6)  # 0 and 10
    assert within(state, 22.5) == pytest.approx(200 / 6)
    assert within(state, 30) == pytest.approx(200 / 6)


def test_angle_histogram_bins_by_hand() -> None:
    angles = [0.0, 10.004, 45.006, 90.002, 135.007, 180.0]
    pred, target = unit_vectors(angles, dtype=torch.float64)
    state = angle_state(pred, target)
    # floor(angle * 100), and exactly 180 degrees goes to the last bin
    assert torch.nonzero(state[:ANGLE_BINS]).flatten().tolist() == [0, 1000, 4500, 9000, 13500, ANGLE_BINS - 1]
    assert state[-2].item() == pytest.approx(sum(angles), abs=1e-9)


def test_median_against_numpy_on_random_data() -> None:
    pred, target = random_normals(100_000, seed=1)
    target[0, :, 0, ::97] = NAN
    reference = numpy_angles(pred, target)
    state = angle_state(pred, target)
    assert state[-1].item() == len(reference)
    assert median_angle(state) == pytest.approx(float(np.median(reference)), abs=0.005)
    assert mean_angle(state) == pytest.approx(float(reference.mean()), abs=1e-6)
    for n in (7, 8):  # few samples: almost surely one per bin, so within half a bin (odd and even n)
        small_pred, small_target = random_normals(n, seed=n)
        small = numpy_angles(small_pred, small_target)
        assert median_angle(angle_state(small_pred, small_target)) == pytest.approx(float(np.median(small)), abs=0.005)


def test_median_worst_case_stays_within_one_bin() -> None:
    angles = [10.0001] * 5 + [50.0] * 4  # the median is the last of five samples piled at a bin's lower edge
    pred, target = unit_vectors(angles, dtype=torch.float64)
    estimate = median_angle(angle_state(pred, target))
    assert 0.005 < abs(estimate - 10.0001) < 0.01  # documented worst case: below one bin, not half a bin


def test_within_is_exact_away_from_bin_edges() -> None:
    pred, target = random_normals(20_000, seed=2)
    reference = numpy_angles(pred, target)
    state = angle_state(pred, target)
    for degrees in (11.25, 22.5, 30.0):
        assert np.abs(reference - degrees).min() > 1e-6  # no sample on the edge
        assert within(state, degrees) == pytest.approx(100.0 * float((reference < degrees).sum()) / len(reference), abs=1e-12)
    with pytest.raises(ValueError, match="multiple"):
        within(state, 11.255)


# ----------------------------------------------------------------------------------------------------------------
# accumulation, degenerate batches, dtypes, registry


def test_two_batches_sum_to_the_concatenated_batch() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, 6, 7, generator=g)
    labels = torch.randint(0, 5, (4, 6, 7), generator=g)
    labels[labels == 4] = IGNORE_INDEX
    depth_pred = torch.randn(4, 1, 6, 7, generator=g)
    depth = torch.rand(4, 6, 7, generator=g) + 0.5
    depth[0, :, :5] = NAN  # batches of very different valid counts
    normals_pred, normals = random_normals(4 * 42, seed=4)
    normals_pred, normals = (x.view(1, 3, 4, 42).permute(2, 1, 0, 3).contiguous() for x in (normals_pred, normals))
    normals[1, :, :, :30] = NAN
    cases = [
        (CONFUSION, logits, labels, 5),
        (ABS_ERROR, depth_pred, depth, 1),
        (REL_ERROR, depth_pred, depth, 1),
        (ANGLES, normals_pred, normals, 3),
    ]
    for acc, pred, target, n in cases:
        whole = acc.state(pred, target, n)
        parts = acc.state(pred[:1], target[:1], n) + acc.state(pred[1:], target[1:], n)
        assert whole.shape == (acc.size(n),)
        assert torch.allclose(parts, whole, rtol=1e-12, atol=0)
    # exact totals, not the mean of per-batch means
    first = abs_error_state(depth_pred[:1], depth[:1])
    rest = abs_error_state(depth_pred[1:], depth[1:])
    total = mean_of(first + rest)
    e = (depth_pred[:, 0].double() - depth.double()).abs()
    reference = float(np.nanmean(e.numpy()))
    assert total == pytest.approx(reference, rel=1e-12)
    assert abs(total - (mean_of(first) + mean_of(rest)) / 2) > 1e-3


def test_tiny_two_batch_mean_is_not_mean_of_means() -> None:
    a = abs_error_state(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, NAN]]))  # error 1 over 1
    b = abs_error_state(torch.zeros(1, 3), torch.zeros(1, 3))  # error 0 over 3
    assert mean_of(a + b) == 0.25


@pytest.mark.parametrize("name", sorted(DENSE_LOSSES))
def test_all_invalid_batch_gives_zero_loss_and_zero_gradient(name: str) -> None:
    if name == "pixel_cross_entropy":
        pred, target = torch.randn(2, 4, 3, 3), torch.full((2, 3, 3), IGNORE_INDEX, dtype=torch.uint8)
    elif name == "masked_l1":
        pred, target = torch.randn(2, 2, 3, 3), torch.full((2, 2, 3, 3), NAN)
    else:
        pred, target = torch.randn(2, 3, 3, 3), torch.full((2, 3, 3, 3), NAN)
    pred.requires_grad_()
    loss = DENSE_LOSSES[name](pred, target)
    assert loss.ndim == 0 and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_float16_predictions() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    labels = torch.randint(0, 3, (2, 4, 5), generator=g).to(torch.uint8)
    labels[0, 0] = IGNORE_INDEX
    depth = torch.rand(2, 4, 5, generator=g)
    depth[1, 1] = NAN
    depth_pred = torch.rand(2, 1, 4, 5, generator=g)
    normals_pred, normals = random_normals(40, seed=6)
    normals_pred, normals = normals_pred.view(1, 3, 4, 10), normals.view(1, 3, 4, 10)
    normals[0, :, 0] = NAN
    for loss, pred, target in (
        (pixel_cross_entropy, logits, labels),
        (masked_l1, depth_pred, depth),
        (normal_cosine, normals_pred, normals),
    ):
        half = pred.half().requires_grad_()
        value = loss(half, target)
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(loss(half.detach().float(), target).item(), rel=1e-5)
        value.backward()
        assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()
    assert torch.equal(confusion_state(logits.half(), labels, 3), confusion_state(logits.half().float(), labels, 3))
    assert torch.allclose(abs_error_state(depth_pred.half(), depth), abs_error_state(depth_pred.half().float(), depth))
    assert torch.allclose(rel_error_state(depth_pred.half(), depth), rel_error_state(depth_pred.half().float(), depth))
    assert torch.allclose(angle_state(normals_pred.half(), normals), angle_state(normals_pred.half().float(), normals))


def test_states_do_not_track_gradients() -> None:
    pred = torch.randn(1, 3, 2, 2, requires_grad=True)
    assert not angle_state(pred, torch.nn.functional.normalize(torch.randn(1, 3, 2, 2), dim=1)).requires_grad
    assert not abs_error_state(pred, torch.randn(1, 3, 2, 2)).requires_grad


def test_registry() -> None:
    assert set(DENSE_LOSSES) == {"pixel_cross_entropy", "masked_l1", "normal_cosine"}
    units = {
        "miou": "%",
        "pixel_accuracy": "%",
        "abs_error": "",
        "rel_error": "",
        "mean_angle": "deg",
        "median_angle": "deg",
        "within_11.25": "%",
        "within_22.5": "%",
        "within_30": "%",
    }
    assert {name: m.unit for name, m in DENSE_METRICS.items()} == units
    assert all(m.name == name for name, m in DENSE_METRICS.items())
    higher = {name for name, m in DENSE_METRICS.items() if m.higher_is_better}
    assert higher == {"miou", "pixel_accuracy", "within_11.25", "within_22.5", "within_30"}
    assert DENSE_METRICS["miou"].accumulator is DENSE_METRICS["pixel_accuracy"].accumulator
    angle_metrics = ["mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"]
    assert len({id(DENSE_METRICS[name].accumulator) for name in angle_metrics}) == 1
    assert len({id(m.accumulator) for m in DENSE_METRICS.values()}) == 4

    seg = DENSE_METRICS["miou"].accumulator.state(logits_for(SEG_PRED, 4), SEG_TARGET, 4)
    assert DENSE_METRICS["miou"].read(seg, 4) == pytest.approx(400 / 9)
    assert DENSE_METRICS["pixel_accuracy"].read(seg, 4) == pytest.approx(60.0)
    pred, target = unit_vectors([0.0, 10.0, 20.0, 25.0, 40.0])
    angles = DENSE_METRICS["mean_angle"].accumulator.state(pred, target, 3)
    assert angles.shape == (DENSE_METRICS["mean_angle"].accumulator.size(3),)
    read = {name: DENSE_METRICS[name].read(angles, 3) for name in angle_metrics}
    assert read["mean_angle"] == pytest.approx(19.0, abs=1e-4)
    assert read["median_angle"] == pytest.approx(20.0, abs=0.005 + 1e-6)
    assert [read["within_11.25"], read["within_22.5"], read["within_30"]] == pytest.approx([40.0, 60.0, 80.0])
    depth = torch.tensor([[[2.0, 4.0]]])
    for name, expected in (("abs_error", (1 + 3) / 2), ("rel_error", (1 / 2 + 3 / 4) / 2)):
        state = DENSE_METRICS[name].accumulator.state(torch.tensor([[[[1.0, 1.0]]]]), depth, 1)
        assert DENSE_METRICS[name].read(state, 1) == pytest.approx(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_states_do_not_sync_on_cuda() -> None:
    device = torch.device("cuda")
    logits = torch.randn(2, 4, 8, 8, device=device)
    labels = torch.randint(0, 4, (2, 8, 8), device=device).to(torch.uint8)
    depth = torch.rand(2, 8, 8, device=device)
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8, device=device), dim=1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        states = [
            confusion_state(logits.half(), labels, 4),
            abs_error_state(depth.unsqueeze(1).half(), depth),
            rel_error_state(depth.unsqueeze(1), depth),
            angle_state(normals.half(), normals),
        ]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(s.device.type == "cuda" and s.dtype == torch.float64 for s in states)
    assert pixel_accuracy(states[0].cpu(), 4) > 0 and mean_angle(states[3].cpu()) < 1.0
