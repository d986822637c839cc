"""The closed sets of names a recipe may use, apart from their torch implementations.

Validating a recipe and completing its keys read these tuples without importing torch. The implementations
(`tasks.LOSSES`, `tasks.METRICS`, `augment`) check at import that they implement exactly these names, so the
two can never drift apart.
"""

from __future__ import annotations

LOSS_NAMES: tuple[str, ...] = (
    "cross_entropy",
    "pixel_cross_entropy",
    "masked_l1",
    "normal_cosine",
    "masked_cross_entropy",
    "masked_mse",
)
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "error",
    "miou",
    "pixel_accuracy",
    "abs_error",
    "rel_error",
    "mean_angle",
    "median_angle",
    "within_11.25",
    "within_22.5",
    "within_30",
    "rmse",
)
AUGMENT_CHOICES: tuple[str, ...] = ("default", "none", "scale-crop", "scale-crop-flip")
TRACKER_NAMES: tuple[str, ...] = ("tensorboard", "mlflow")  # `output.trackers`; each is also the name of its extra


def check_implemented(kind: str, declared: tuple[str, ...], implemented: object) -> None:
    """Raise at import when an implementation registry and its declared names differ (a programming error)."""
    names = tuple(implemented)  # type: ignore[call-overload]
    if set(names) != set(declared):
        raise RuntimeError(f"{kind}: mtlcli.names declares {sorted(declared)}, the implementation has {sorted(names)}")
