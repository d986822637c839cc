"""The classification metrics of mtlcli.metrics against hand-counted argmax predictions."""

from __future__ import annotations

import pytest
import torch

from mtlcli.metrics import ARGMAX_COUNTS, CLASSIFICATION_METRICS


def test_argmax_counts_by_hand() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [0.0, 0.0, 4.0], [1.0, 5.0, 0.0], [0.2, 0.1, 0.0]])
    target = torch.tensor([1, 2, 2, 0, 0], dtype=torch.uint8)  # argmax 1, 0, 2, 1, 0: rows 0, 2 and 4 are right
    state = ARGMAX_COUNTS.state(logits, target, 3)
    assert state.dtype == torch.float64 and state.shape == (ARGMAX_COUNTS.size(3),) == (2,)
    assert state.tolist() == [3.0, 5.0]
    assert CLASSIFICATION_METRICS["accuracy"].read(state, 3) == pytest.approx(60.0)
    assert CLASSIFICATION_METRICS["error"].read(state, 3) == pytest.approx(40.0)


def test_states_of_batches_add_up() -> None:
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(11, 4, generator=g), torch.randint(0, 4, (11,), generator=g)
    whole = ARGMAX_COUNTS.state(logits, target, 4)
    parts = ARGMAX_COUNTS.state(logits[:3], target[:3], 4) + ARGMAX_COUNTS.state(logits[3:], target[3:], 4)
    assert torch.equal(whole, parts)
    correct = sum(int(torch.argmax(logits[i])) == int(target[i]) for i in range(11))
    assert whole.tolist() == [float(correct), 11.0]


def test_an_empty_split_reads_zero_not_nan() -> None:
    state = ARGMAX_COUNTS.state(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3)
    assert state.tolist() == [0.0, 0.0]
    assert CLASSIFICATION_METRICS["accuracy"].read(state, 3) == 0.0
    assert CLASSIFICATION_METRICS["error"].read(state, 3) == 0.0


def test_percent_of_a_single_sample() -> None:
    right, wrong = torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert CLASSIFICATION_METRICS["accuracy"].read(right, 2) == 100.0
    assert CLASSIFICATION_METRICS["error"].read(wrong, 2) == 100.0


def test_the_registry_entries() -> None:
    assert {n: (m.name, m.higher_is_better, m.unit) for n, m in CLASSIFICATION_METRICS.items()} == {
        "accuracy": ("accuracy", True, "%"),
        "error": ("error", False, "%"),
    }
    assert all(m.accumulator is ARGMAX_COUNTS for m in CLASSIFICATION_METRICS.values())
    assert ARGMAX_COUNTS.name == "argmax_counts"
