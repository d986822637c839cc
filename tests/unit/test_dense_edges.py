"""Dense metrics at their edges, against hand-computed values: empty states, labels out of range, partly or oddly
defined normal targets, the median's in-bin interpolation and the `within` thresholds read from hand-made
histograms, and the shape checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mtlcli.dense import (
    ANGLE_BINS,
    BINS_PER_DEGREE,
    DENSE_METRICS,
    IGNORE_INDEX,
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
ANGLE_READERS = ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30")


def histogram_state(counts: dict[int, float], angle_sum: float | None = None) -> Tensor:
    """An angle state with `counts[bin]` samples in each bin (0.01 degree bins) and [sum of angles, count]."""
    state = torch.zeros(ANGLE_BINS + 2, dtype=torch.float64)
    for index, n in counts.items():
        state[index] = n
    n = sum(counts.values())
    state[-2] = angle_sum if angle_sum is not None else sum((i + 0.5) / BINS_PER_DEGREE * c for i, c in counts.items())
    state[-1] = n
    return state


def pixels(*vectors: tuple[float, float, float]) -> Tensor:
    """Normals [1, 3, 1, N] from N (x, y, z) vectors, in float64."""
    return torch.tensor(vectors, dtype=torch.float64).T.reshape(1, 3, 1, len(vectors))


# ----------------------------------------------------------------------------------------------------------------
# empty states


def test_an_all_invalid_normal_state_reads_nan_for_every_angle_metric() -> None:
    target = pixels((NAN, NAN, NAN), (0.0, 0.0, 0.0), (1.0, NAN, 0.0))  # NaN, zero vector, one NaN component
    state = angle_state(pixels((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (1.0, 0.0, 0.0)), target)
    assert torch.equal(state, torch.zeros(ANGLE_BINS + 2, dtype=torch.float64))
    for name in ANGLE_READERS:
        assert math.isnan(DENSE_METRICS[name].read(state, 3)), name
    assert math.isnan(median_angle(state)) and math.isnan(within(state, 30)) and math.isnan(mean_angle(state))


def test_an_empty_histogram_reads_nan_even_with_a_stray_count() -> None:
    """median and within read the histogram, not the trailing count: an empty histogram has no median."""
    state = torch.zeros(ANGLE_BINS + 2, dtype=torch.float64)
    state[-1] = 3.0
    assert math.isnan(median_angle(state)) and math.isnan(within(state, 11.25))


def test_mean_of_counts_one_element_once() -> None:
    assert mean_of(torch.tensor([7.5, 1.0], dtype=torch.float64)) == 7.5
    assert math.isnan(mean_of(torch.tensor([0.0, 0.0], dtype=torch.float64)))
    assert mean_of(torch.tensor([9.0, 9.0, 3.0, 2.0], dtype=torch.float64)) == 1.5  # the last two entries


def test_a_single_valid_element_is_its_own_mean() -> None:
    """The loss divides by the number of valid elements (clamped to 1 only when there is none)."""
    pred = torch.tensor([[[[3.0, 5.0]]]], requires_grad=True)  # [1, 1, 1, 2]
    assert masked_l1(pred, torch.tensor([[[1.0, NAN]]])).item() == 2.0
    assert masked_l1(pred, torch.tensor([[[1.0, 4.0]]])).item() == 1.5
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3.0), 0.0]]]])  # [1, 2, 1, 2]
    labels = torch.tensor([[[0, IGNORE_INDEX]]])
    assert pixel_cross_entropy(logits, labels).item() == pytest.approx(math.log(4.0))  # softmax (1/4, 3/4), label 0


# ----------------------------------------------------------------------------------------------------------------
# segmentation labels


def test_a_label_equal_to_the_class_count_is_not_counted() -> None:
    # 3 classes: labels 3 (= C) and 255 are outside 0..2 and left out; the argmax is 0, 2, 1, 2, 0
    logits = torch.nn.functional.one_hot(torch.tensor([[[0, 2, 1, 2, 0]]]), 3).permute(0, 3, 1, 2).float()
    labels = torch.tensor([[[0, 3, 1, IGNORE_INDEX, 2]]])
    state = confusion_state(logits, labels, 3)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = expected[2, 0] = 1  # (true 0 -> 0), (1 -> 1), (2 -> 0)
    assert torch.equal(state.view(3, 3), expected)
    assert pixel_accuracy(state, 3) == pytest.approx(200 / 3)
    # IoU: class 0: 1 / (1 + 1 + 0); class 1: 1 / 1; class 2: 0 / (0 + 0 + 1)
    assert mean_iou(state, 3) == pytest.approx((0.5 + 1.0 + 0.0) / 3 * 100)


def test_a_class_only_in_the_truth_counts_with_iou_zero() -> None:
    state = torch.zeros(4, dtype=torch.float64)
    state[0 * 2 + 1] = 2  # two pixels of class 0 predicted as 1; class 0 and 1 both have IoU 0
    state[1 * 2 + 1] = 1  # one correct pixel of class 1: IoU 1 / (1 + 2)
    assert mean_iou(state, 2) == pytest.approx((0 + 1 / 3) / 2 * 100)
    assert pixel_accuracy(state, 2) == pytest.approx(100 / 3)


def test_confusion_readers_check_the_state_size() -> None:
    with pytest.raises(ValueError, match=r"confusion state has 9 entries, expected 2\^2"):
        mean_iou(torch.zeros(9, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="confusion state has 4 entries"):
        pixel_accuracy(torch.zeros(4, dtype=torch.float64), 3)


def test_segmentation_shapes_are_checked() -> None:
    with pytest.raises(
        ValueError, match=r"expected logits \[B, C, H, W\] and labels \[B, H, W\]; got \(1, 3, 4\) and \(1, 3, 4\)"
    ):
        pixel_cross_entropy(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="expected logits"):
        pixel_cross_entropy(torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="expected logits"):
        confusion_state(torch.zeros(2, 3, 4, 5), torch.zeros(1, 4, 5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="logits have 3 classes, expected 4"):
        confusion_state(torch.zeros(1, 3, 4, 5), torch.zeros(1, 4, 5, dtype=torch.long), 4)


# ----------------------------------------------------------------------------------------------------------------
# normals


def test_a_normal_target_with_one_nan_component_is_invalid() -> None:
    pred = pixels((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)).requires_grad_()
    target = pixels((0.0, 1.0, NAN), (0.0, 0.0, 1.0))  # pixel 0: two finite components, one NaN
    loss = normal_cosine(pred, target)
    assert loss.item() == 0.0  # only pixel 1 counts, predicted exactly
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    state = angle_state(pred.detach(), target)
    assert state[-1].item() == 1.0 and state[0].item() == 1.0 and state[-2].item() == 0.0


def test_a_non_unit_normal_target_is_normalised() -> None:
    # target (0, 0, 5) vs prediction at 60 degrees: 1 - cos = 1/2, angle 60
    pred = pixels((math.sqrt(3) / 2, 0.0, 0.5))
    for length in (5.0, 0.01, 1e4):
        target = pixels((0.0, 0.0, length))
        assert normal_cosine(pred, target).item() == pytest.approx(0.5, abs=1e-12)
        assert mean_angle(angle_state(pred, target)) == pytest.approx(60.0, abs=1e-9)


@pytest.mark.parametrize("vector", [(1.0, 1.0, 1.0), (0.3, -0.7, 0.2), (1e-3, 2.0, -5.0), (0.1, 0.2, 0.3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_an_oblique_prediction_equal_to_its_target_has_angle_zero(vector: tuple[float, float, float], dtype) -> None:
    """cos may round above 1 for an oblique vector; the angle is then 0 (clamped), never NaN."""
    v = pixels(vector).to(dtype)
    state = angle_state(v, v)
    assert state[-2].item() == pytest.approx(0.0, abs=1e-5) and not math.isnan(state[-2].item())
    assert state[0].item() == 1.0 and state[-1].item() == 1.0
    assert median_angle(state) == pytest.approx(0.005) and within(state, 11.25) == 100.0
    assert normal_cosine(v.float(), v.float()).item() == pytest.approx(0.0, abs=1e-6)


def test_opposite_normals_are_180_degrees_in_the_last_bin() -> None:
    state = angle_state(pixels((0.3, -0.2, 0.9)), pixels((-0.3, 0.2, -0.9)))
    assert state[ANGLE_BINS - 1].item() == 1.0 and state[-2].item() == pytest.approx(180.0)
    assert within(state, 180) == 100.0 and within(state, 179.99) == 0.0


def test_normal_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"normals must be \[B, 3, H, W\]; got prediction \(1, 2, 1, 1\) and target"):
        normal_cosine(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))
    with pytest.raises(ValueError, match="normals must be"):
        normal_cosine(torch.zeros(3, 1, 1), torch.zeros(3, 1, 1))
    with pytest.raises(ValueError, match="normals must be"):
        angle_state(torch.zeros(1, 3, 1, 2), torch.zeros(1, 3, 2, 1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_losses_keep_full_precision_inputs(dtype: torch.dtype) -> None:
    """Only half precision is upcast: float64 stays float64, float32 stays float32."""
    logits = torch.zeros(1, 2, 1, 1, dtype=dtype)
    assert pixel_cross_entropy(logits, torch.zeros(1, 1, 1, dtype=torch.long)).dtype == dtype
    assert masked_l1(torch.zeros(1, 1, 1, dtype=dtype), torch.ones(1, 1, 1)).dtype == dtype
    assert normal_cosine(torch.ones(1, 3, 1, 1, dtype=dtype), torch.ones(1, 3, 1, 1)).dtype == dtype
    assert pixel_cross_entropy(logits.bfloat16(), torch.zeros(1, 1, 1, dtype=torch.long)).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# the median inside its bin, and within


def test_median_interpolates_inside_the_bin_by_hand() -> None:
    # three samples in bin 1000 ([10.00, 10.01)): the median is the 2nd, at (2 - 1/2) / 3 of the bin
    assert median_angle(histogram_state({1000: 3})) == pytest.approx((1000 + 1.5 / 3) / 100, abs=1e-12)
    # one sample: the middle of its bin
    assert median_angle(histogram_state({4321: 1})) == pytest.approx(43.215, abs=1e-12)
    # four samples, two in bin 500 and two in bin 700: ranks 2 and 3 -> (500 + 1.5/2) and (700 + 0.5/2), averaged
    assert median_angle(histogram_state({500: 2, 700: 2})) == pytest.approx((5.0075 + 7.0025) / 2, abs=1e-12)
    # five samples: 1 in bin 10, 3 in bin 20, 1 in bin 30 -> rank 3 is the 2nd of bin 20's three
    assert median_angle(histogram_state({10: 1, 20: 3, 30: 1})) == pytest.approx((20 + 1.5 / 3) / 100, abs=1e-12)
    # six samples, 2 + 4: ranks 3 and 4 are the 1st and 2nd of the second bin
    expected = ((900 + 0.5 / 4) + (900 + 1.5 / 4)) / 2 / 100
    assert median_angle(histogram_state({100: 2, 900: 4})) == pytest.approx(expected, abs=1e-12)
    # the last bin, and fractional counts summed over batches stay exact
    assert median_angle(histogram_state({ANGLE_BINS - 1: 1})) == pytest.approx(179.995, abs=1e-12)


def test_within_counts_the_bins_below_the_threshold() -> None:
    state = histogram_state({1124: 1, 1125: 2, 2249: 3, 2250: 4, 2999: 5, 3000: 6, ANGLE_BINS - 1: 7})
    total = 28
    assert within(state, 11.25) == pytest.approx(100 * 1 / total)
    assert within(state, 22.5) == pytest.approx(100 * 6 / total)
    assert within(state, 30) == pytest.approx(100 * 15 / total)
    assert within(state, 0.01) == 0.0 and within(state, 0) == 0.0 and within(state, -5) == 0.0
    assert within(state, 180) == 100.0 and within(state, 360) == 100.0
    for name, expected in (("within_11.25", 1), ("within_22.5", 6), ("within_30", 15)):
        assert DENSE_METRICS[name].read(state, 3) == pytest.approx(100 * expected / total)


@pytest.mark.parametrize("degrees", [11.255, 11.2500001, math.inf, math.nan, 0.001])
def test_within_refuses_a_threshold_off_the_bin_edges(degrees: float) -> None:
    with pytest.raises(ValueError, match=r"is not a multiple of the 0\.01 degree bin width"):
        within(histogram_state({0: 1}), degrees)


def test_angle_readers_check_the_state_size() -> None:
    for reader in (median_angle, lambda s: within(s, 30)):
        with pytest.raises(ValueError, match=f"angle state has 10 entries, expected {ANGLE_BINS + 2}"):
            reader(torch.zeros(10, dtype=torch.float64))


def test_readers_of_the_registry_by_hand() -> None:
    state = histogram_state({1000: 1, 2000: 1, 4000: 2}, angle_sum=100.0)
    read = {name: DENSE_METRICS[name].read(state, 3) for name in ANGLE_READERS}
    assert read["mean_angle"] == 25.0  # 100 degrees over 4 pixels
    assert read["median_angle"] == pytest.approx(((2000 + 0.5) + (4000 + 0.5 / 2)) / 2 / 100, abs=1e-12)
    assert [read["within_11.25"], read["within_22.5"], read["within_30"]] == [25.0, 50.0, 50.0]
    depth = torch.tensor([[[2.0, NAN, -4.0]]])
    pred = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    for name, expected in (("abs_error", (1 + 4) / 2), ("rel_error", (0.5 + 1.0) / 2)):
        metric = DENSE_METRICS[name]
        assert metric.accumulator.size(1) == 2
        assert metric.read(metric.accumulator.state(pred, depth, 1), 1) == pytest.approx(expected)
    confusion = DENSE_METRICS["miou"].accumulator
    assert confusion.size(5) == 25 and DENSE_METRICS["mean_angle"].accumulator.size(3) == ANGLE_BINS + 2


def test_error_states_by_hand() -> None:
    target = torch.tensor([[[0.5, -2.0, NAN, 0.0, 4.0]]])
    pred = torch.tensor([[[[1.0, 1.0, 9.0, 3.0, 4.0]]]])
    # abs: 0.5 + 3 + 3 + 0 over the 4 finite targets; rel: 0.5/0.5 + 3/2 + 0/4 over the 3 finite non-zero ones
    assert abs_error_state(pred, target).tolist() == [6.5, 4.0]
    assert rel_error_state(pred, target).tolist() == [2.5, 3.0]
    assert rel_error_state(pred[:, 0], target).tolist() == [2.5, 3.0]
    with pytest.raises(ValueError, match=r"prediction of shape \(1, 2, 1, 5\) does not match target of shape \(1, 1, 5\)"):
        abs_error_state(torch.zeros(1, 2, 1, 5), target)
    with pytest.raises(ValueError, match="does not match"):
        masked_l1(torch.zeros(1, 1, 5), torch.zeros(1, 4))


def test_losses_take_the_prediction_dtype_not_the_target_dtype() -> None:
    pred = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float32)
    assert masked_l1(pred, torch.tensor([[[0.5, 1.0]]], dtype=torch.float64)).dtype == torch.float32
    normals = torch.tensor([[[[1.0]], [[0.0]], [[0.0]]]], dtype=torch.float32)
    assert normal_cosine(normals, normals.double()).dtype == torch.float32


def test_one_labelled_pixel_reads_its_accuracy() -> None:
    state = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # one pixel of class 0, predicted 0
    assert pixel_accuracy(state, 2) == 100.0 and mean_iou(state, 2) == 100.0
    assert pixel_accuracy(torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), 2) == 0.0


def test_within_zero_degrees_is_zero_even_for_angles_in_the_first_bin() -> None:
    state = histogram_state({0: 3, 10: 1})
    assert within(state, 0) == 0.0 and within(state, 0.01) == 75.0 and within(state, 0.1) == 75.0
    assert within(state, 0.11) == 100.0


def test_median_ranks_are_exact_beyond_float32_integers() -> None:
    """On a large split (NYUv2's test split has 72M pixels) the ranks exceed 2^24, where float32 skips integers."""
    low = 2**24 + 2
    state = histogram_state({100: low, 200: 2, 300: 2**24 + 1})  # n = 2^25 + 5: the median is rank 2^24 + 3
    assert median_angle(state) == pytest.approx((200 + 0.5 / 2) / 100, abs=1e-12)  # the first of bin 200's two
