"""Per-pixel losses and metric accumulators for dense scene understanding (Cityscapes, NYUv2).

Targets follow one convention: segmentation labels are integers [B, H, W] with `IGNORE_INDEX` (255) for
unlabelled pixels; offsets [B, 2, H, W], disparity/depth [B, H, W] and normals [B, 3, H, W] are floats with
NaN where undefined. Predictions are logits [B, C, H, W], offsets [B, 2, H, W], depth [B, 1, H, W] (or
[B, H, W]) and raw, unnormalised normals [B, 3, H, W].

Masking always comes first: invalid target values are replaced by a finite constant before any arithmetic
and their terms are then weighted by zero, so no NaN reaches a value or a gradient (`torch.where(mask, f(x), 0)`
alone would still back-propagate 0 * NaN = NaN through f when x holds NaN). We deliberately do not use boolean
indexing (`pred[mask]`): on CUDA it needs the number of valid elements on the host, i.e. a sync.

Metrics are accumulated as 1-D float64 "states" that are summed over batches on the device and read on the host
once per split, so every metric is an exact total over the split (never a mean of per-batch means). The metric
definitions are those of Sener & Koltun (NeurIPS 2018) for Cityscapes (mIoU, L1 of instance offsets and of
disparity) and of MTAN, Liu et al. (CVPR 2019) for NYUv2 (mIoU, pixel accuracy, absolute and relative depth
error, mean/median angle and the share of pixels within 11.25, 22.5 and 30 degrees).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtlcli.metrics import Accumulator, Metric

IGNORE_INDEX = 255
BINS_PER_DEGREE = 100  # angle histogram: 0.01 degree bins over [0, 180]
ANGLE_BINS = 180 * BINS_PER_DEGREE
_NORMAL_EPS = 1e-12


# ---------------------------------------------------------------------------------------------------------------
# shapes and masks


def _match(pred: Tensor, target: Tensor) -> Tensor:
    """`pred` with the channel of a [B, 1, H, W] prediction squeezed when the target is [B, H, W]."""
    if pred.ndim == target.ndim + 1 and pred.shape[1] == 1:
        pred = pred.squeeze(1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction of shape {tuple(pred.shape)} does not match target of shape {tuple(target.shape)}")
    return pred


def _check_normals(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3 or pred.shape != target.shape:
        raise ValueError(f"normals must be [B, 3, H, W]; got prediction {tuple(pred.shape)} and target {tuple(target.shape)}")


def _check_segmentation(logits: Tensor, target: Tensor) -> None:
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits [B, C, H, W] and labels [B, H, W]; got {tuple(logits.shape)} and {tuple(target.shape)}"
        )


def _loss_dtype(x: Tensor) -> Tensor:
    """Half-precision predictions are upcast to float32 so that sums over millions of pixels cannot overflow."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _sanitize(target: Tensor, valid: Tensor, fill: float = 0.0) -> Tensor:
    """`target` with its invalid entries replaced by `fill` (the target never carries a gradient)."""
    return torch.where(valid, target, torch.full_like(target, fill))


def _normal_mask(target: Tensor) -> tuple[Tensor, Tensor]:
    """(valid [B, H, W], target with invalid pixels zeroed). Valid: all 3 components finite and not all zero.

    The convention marks invalid normals with NaN; a zero vector (how some preprocessed NYUv2 copies mark them)
    has no direction either, so it is treated as invalid too instead of silently counting as a 90 degree error.
    """
    finite = torch.isfinite(target).all(dim=1)
    safe = _sanitize(target, finite.unsqueeze(1).expand_as(target))
    valid = finite & (safe != 0).any(dim=1)
    return valid, safe


def _count(valid: Tensor) -> Tensor:
    """Number of valid elements, at least 1, as a device tensor (so the mean is 0, not NaN, when none is valid)."""
    return valid.sum().clamp_min(1)


# ---------------------------------------------------------------------------------------------------------------
# losses


def pixel_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over labelled pixels (`IGNORE_INDEX` skipped); 0 with zero gradient when none is labelled."""
    _check_segmentation(logits, target)
    labels = target.long()
    total = F.cross_entropy(_loss_dtype(logits), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / _count(labels != IGNORE_INDEX)


def masked_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean |pred - target| over finite target elements (each valid offset component counts once).

    Used for Cityscapes instance offsets and disparity and NYUv2 depth. 0 with zero gradient when nothing is valid.
    """
    pred = _loss_dtype(_match(pred, target))
    valid = torch.isfinite(target)
    error = (pred - _sanitize(target, valid).to(pred.dtype)).abs()
    return torch.where(valid, error, torch.zeros_like(error)).sum() / _count(valid)


def normal_cosine(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over valid pixels of 1 - cos(pred, target), pred normalised with `F.normalize` (eps 1e-12).

    The target is normalised too (a no-op for unit targets). A pixel is valid when its 3 target components are
    finite and not all zero. Invariant to the scale of the prediction; 0 with zero gradient when no pixel is valid.
    """
    _check_normals(pred, target)
    pred = _loss_dtype(pred)
    valid, safe = _normal_mask(target)
    cosine = (F.normalize(pred, dim=1, eps=_NORMAL_EPS) * F.normalize(safe.to(pred.dtype), dim=1, eps=_NORMAL_EPS)).sum(dim=1)
    loss = 1.0 - cosine
    return torch.where(valid, loss, torch.zeros_like(loss)).sum() / _count(valid)


DENSE_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "pixel_cross_entropy": pixel_cross_entropy,
    "masked_l1": masked_l1,
    "normal_cosine": normal_cosine,
}


# ---------------------------------------------------------------------------------------------------------------
# metric states (device side: no sync, no Python loop over pixels or classes)


def _counts(index: Tensor, weight: Tensor, size: int) -> Tensor:
    """A float64 histogram of `index` weighted by `weight` (0/1). Unlike `torch.bincount`, whose CUDA kernel reads
    the maximum index on the host to size its output, `index_add_` into a fixed-size buffer never syncs."""
    out = torch.zeros(size, dtype=torch.float64, device=index.device)
    return out.index_add_(0, index.reshape(-1), weight.reshape(-1).to(torch.float64))


@torch.no_grad()
def confusion_state(logits: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion counts [C*C], row-major (true, predicted), over labelled pixels.

    Labels outside 0..C-1 (`IGNORE_INDEX` among them) are not counted. The prediction is the argmax over classes.
    """
    _check_segmentation(logits, target)
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes, expected {num_classes}")
    labels = target.long()
    valid = (labels >= 0) & (labels < num_classes)
    index = torch.where(valid, labels * num_classes + logits.argmax(dim=1), torch.zeros_like(labels))
    return _counts(index, valid, num_classes * num_classes)


def _error_terms(pred: Tensor, target: Tensor, *, relative: bool) -> Tensor:
    pred = _match(pred, target)
    valid = torch.isfinite(target)
    if relative:
        valid = valid & (target != 0)
    truth = _sanitize(target, valid, 1.0).to(torch.float64)
    error = (pred.to(torch.float64) - truth).abs()
    if relative:
        error = error / truth.abs()
    error = torch.where(valid, error, torch.zeros_like(error))
    return torch.stack([error.sum(), valid.sum().to(torch.float64)])


@torch.no_grad()
def abs_error_state(pred: Tensor, target: Tensor) -> Tensor:
    """[sum |pred - target|, count] over finite target elements, in float64."""
    return _error_terms(pred, target, relative=False)


@torch.no_grad()
def rel_error_state(pred: Tensor, target: Tensor) -> Tensor:
    """[sum |pred - target| / |target|, count] over finite, non-zero target elements, in float64.

    A zero target has no relative error, so it is left out (in NYUv2 depth a zero marks a missing measurement).
    """
    return _error_terms(pred, target, relative=True)


@torch.no_grad()
def angle_state(pred: Tensor, target: Tensor) -> Tensor:
    """Histogram of per-pixel angles (degrees, 0.01 degree bins over [0, 180]) followed by [sum of angles, count].

    Length `ANGLE_BINS + 2`. Angle between the normalised prediction and the normalised target, in float64, with
    the cosine clamped to [-1, 1] before `acos`; an angle of exactly 180 degrees falls in the last bin.
    """
    _check_normals(pred, target)
    valid, safe = _normal_mask(target)
    p = F.normalize(pred.to(torch.float64), dim=1, eps=_NORMAL_EPS)
    t = F.normalize(safe.to(torch.float64), dim=1, eps=_NORMAL_EPS)
    angle = torch.rad2deg(torch.acos((p * t).sum(dim=1).clamp(-1.0, 1.0)))
    angle = torch.where(valid, angle, torch.zeros_like(angle))
    bins = torch.floor(angle * BINS_PER_DEGREE).long().clamp(0, ANGLE_BINS - 1)
    histogram = _counts(bins, valid, ANGLE_BINS)
    return torch.cat([histogram, torch.stack([angle.sum(), valid.sum().to(torch.float64)])])


# ---------------------------------------------------------------------------------------------------------------
# readers (host side: summed state on the CPU -> float)


def _confusion(state: Tensor, num_classes: int) -> Tensor:
    if state.numel() != num_classes * num_classes:
        raise ValueError(f"confusion state has {state.numel()} entries, expected {num_classes}^2")
    return state.to(torch.float64).reshape(num_classes, num_classes)


def mean_iou(state: Tensor, num_classes: int) -> float:
    """Mean IoU in percent: mean over classes with TP + FP + FN > 0 of TP / (TP + FP + FN).

    A class absent from both truth and prediction has no defined IoU and is skipped (not counted as 0 or 100).
    NaN when no pixel was labelled.
    """
    cm = _confusion(state, num_classes)
    tp = cm.diagonal()
    union = cm.sum(dim=0) + cm.sum(dim=1) - tp
    present = union > 0
    if not bool(present.any()):
        return math.nan
    return float((tp[present] / union[present]).mean()) * 100.0


def pixel_accuracy(state: Tensor, num_classes: int) -> float:
    """Correct labelled pixels / labelled pixels, in percent; NaN when no pixel was labelled."""
    cm = _confusion(state, num_classes)
    total = float(cm.sum())
    return float(cm.trace()) / total * 100.0 if total > 0 else math.nan


def mean_of(state: Tensor) -> float:
    """sum / count from a [..., sum, count] state; NaN when the count is 0."""
    total, count = float(state[-2]), float(state[-1])
    return total / count if count > 0 else math.nan


def mean_angle(state: Tensor) -> float:
    """Mean angle in degrees from an `angle_state`; NaN when no pixel was valid."""
    return mean_of(state)


def _histogram(state: Tensor) -> Tensor:
    if state.numel() != ANGLE_BINS + 2:
        raise ValueError(f"angle state has {state.numel()} entries, expected {ANGLE_BINS + 2}")
    return state[:ANGLE_BINS].to(torch.float64)


def median_angle(state: Tensor) -> float:
    """Median angle in degrees from the histogram of an `angle_state`; NaN when no pixel was valid.

    The median is the (n+1)/2-th order statistic (the mean of the two middle ones for even n, as numpy). Each order
    statistic is located in the bin where the cumulative count reaches its rank and placed by linear interpolation
    inside that bin, treating the bin's h samples as evenly spread (the j-th at (j - 1/2) / h of the bin width).
    Precision: each middle value is off by less than one bin (0.01 degree) in the worst case (all samples of the
    bin piled at one of its edges) and by at most half a bin (0.005 degree) when the bin holds one sample; with data
    that fills the bins, as on any real split, the error is far smaller (tested against numpy to 0.005 degree).
    """
    histogram = _histogram(state)
    cumulative = histogram.cumsum(dim=0)
    n = float(cumulative[-1])
    if n <= 0:
        return math.nan
    ranks = torch.tensor([math.floor((n + 1) / 2), math.ceil((n + 1) / 2)], dtype=torch.float64)
    k = torch.searchsorted(cumulative, ranks)  # first bin whose cumulative count reaches the rank
    inside = ranks - (cumulative[k] - histogram[k])  # 1-based position of the rank among the bin's samples
    values = (k.to(torch.float64) + (inside - 0.5) / histogram[k]) / BINS_PER_DEGREE
    return float(values.mean())


def within(state: Tensor, degrees: float) -> float:
    """Percentage of valid pixels whose angle is < `degrees` (a multiple of the 0.01 degree bin width).

    Thresholds on bin edges (11.25, 22.5, 30) make the count exact up to the float64 rounding of the angle itself.
    """
    edge = degrees * BINS_PER_DEGREE
    if not math.isfinite(edge) or abs(edge - round(edge)) > 1e-6:
        raise ValueError(f"threshold {degrees} is not a multiple of the {1 / BINS_PER_DEGREE} degree bin width")
    histogram = _histogram(state)
    total = float(histogram.sum())
    if total <= 0:
        return math.nan
    return float(histogram[: max(0, min(round(edge), ANGLE_BINS))].sum()) / total * 100.0


# ---------------------------------------------------------------------------------------------------------------
# registry


def _confusion_size(num_outputs: int) -> int:
    return num_outputs * num_outputs


def _abs_error(pred: Tensor, target: Tensor, num_outputs: int) -> Tensor:
    return abs_error_state(pred, target)


def _rel_error(pred: Tensor, target: Tensor, num_outputs: int) -> Tensor:
    return rel_error_state(pred, target)


def _angles(pred: Tensor, target: Tensor, num_outputs: int) -> Tensor:
    return angle_state(pred, target)


def _read_mean(state: Tensor, num_outputs: int) -> float:
    return mean_of(state)


def _read_mean_angle(state: Tensor, num_outputs: int) -> float:
    return mean_angle(state)


def _read_median_angle(state: Tensor, num_outputs: int) -> float:
    return median_angle(state)


def _read_within(degrees: float) -> Callable[[Tensor, int], float]:
    def read(state: Tensor, num_outputs: int) -> float:
        return within(state, degrees)

    return read


CONFUSION = Accumulator("confusion", size=_confusion_size, state=confusion_state)
ABS_ERROR = Accumulator("abs_error", size=lambda num_outputs: 2, state=_abs_error)
REL_ERROR = Accumulator("rel_error", size=lambda num_outputs: 2, state=_rel_error)
ANGLES = Accumulator("angles", size=lambda num_outputs: ANGLE_BINS + 2, state=_angles)

DENSE_METRICS: dict[str, Metric] = {
    "miou": Metric("miou", True, CONFUSION, mean_iou, "%"),
    "pixel_accuracy": Metric("pixel_accuracy", True, CONFUSION, pixel_accuracy, "%"),
    "abs_error": Metric("abs_error", False, ABS_ERROR, _read_mean, ""),
    "rel_error": Metric("rel_error", False, REL_ERROR, _read_mean, ""),
    "mean_angle": Metric("mean_angle", False, ANGLES, _read_mean_angle, "deg"),
    "median_angle": Metric("median_angle", False, ANGLES, _read_median_angle, "deg"),
    "within_11.25": Metric("within_11.25", True, ANGLES, _read_within(11.25), "%"),
    "within_22.5": Metric("within_22.5", True, ANGLES, _read_within(22.5), "%"),
    "within_30": Metric("within_30", True, ANGLES, _read_within(30.0), "%"),
}
