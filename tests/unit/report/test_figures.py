"""Figure helpers: a radar over metrics of different units is drawn relative to single-task."""

from __future__ import annotations

import math

import pytest

from mtlcli.report.figures import mixed_units, relative_errors


def test_errors_relative_to_single_task_put_it_on_the_unit_circle() -> None:
    errors = {"single-task": [2.0, 4.0, math.nan], "mgda-ub": [1.0, 8.0, 3.0], "uniform": [3.0, 4.0, 5.0]}
    relative = relative_errors(errors, "single-task")
    assert relative["single-task"][:2] == [1.0, 1.0]
    assert relative["mgda-ub"][:2] == pytest.approx([0.5, 2.0])
    # a task single-task lacks is relative to the mean over the labels that have it
    assert relative["mgda-ub"][2] == pytest.approx(3.0 / 4.0) and relative["uniform"][2] == pytest.approx(5.0 / 4.0)
    no_reference = relative_errors({"a": [1.0], "b": [3.0]}, None)
    assert no_reference == {"a": [0.5], "b": [1.5]}


def test_only_all_percent_metrics_share_one_axis() -> None:
    assert not mixed_units([("left", "accuracy"), ("right", "error")])
    assert mixed_units([("segmentation", "miou"), ("depth", "abs_error")])
    assert mixed_units([("normal", "mean_angle")])
