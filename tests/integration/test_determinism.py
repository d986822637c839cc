"""Determinism: `train.deterministic: true` turns on deterministic algorithms; the same seed gives the
same metrics and weights bitwise on the CPU."""

from __future__ import annotations

import pytest
import torch

from tests.integration._reliability import assert_same_run, metrics, recipe, trainer


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("method", ["uniform", "mgda-ub"])
def test_same_seed_same_metrics_bitwise(data_dir, tmp_path, method, restore_determinism) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=2, deterministic=True)
    raw["method"] = {"name": method}
    first = trainer(raw)
    assert torch.are_deterministic_algorithms_enabled()
    a = first.run()
    b = trainer(raw).run()
    assert a != b
    assert_same_run(a, b)


def test_another_seed_gives_other_numbers(data_dir, tmp_path) -> None:
    a = trainer(recipe(data_dir, tmp_path / "out", epochs=1, seed=0)).run()
    b = trainer(recipe(data_dir, tmp_path / "out", epochs=1, seed=1)).run()
    assert metrics(a) != metrics(b)
