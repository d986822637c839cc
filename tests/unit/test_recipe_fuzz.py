"""Fuzzing the recipe loader: any YAML-like value yields a Recipe or a recipe error, nothing else."""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlcli import recipe as recipes
from mtlcli.errors import MtlError
from tests.conftest import load_shipped_recipe

KEYS = [
    "data",
    "model",
    "tasks",
    "method",
    "optim",
    "train",
    "output",
    "name",
    "dir",
    "size",
    "lr",
    "epochs",
    "seed",
    "device",
    "scheduler",
    "metrics",
    "loss",
    "loss_scale",
    "normalization",
    "solver",
    "batch_size",
    "checkpoint_every",
    "on_nonfinite",
    "deterministic",
    "precision",
    "channels_last",
    "compile",
    "momentum",
    "gamma",
    "step_size",
    "hidden",
    "dropout",
    "trackers",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["multifashion", "left", "right", "mgda-ub", "uniform", "sgd", "cpu", "cuda:9", "skip", "1e-3"])
    | st.sampled_from(["mlflow", "tensorboard", "bf16", "fp16"])
)
keys = st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(-3, 3) | st.booleans()
values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5), max_leaves=25
)
VALID = load_shipped_recipe("multifashion")
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))  # FUZZ_SCALE=20 for a deeper search


def check(outcome: Any) -> None:
    """The only acceptable outcome: a Recipe that survives its own round trip."""
    assert isinstance(outcome, recipes.Recipe)
    assert recipes.validate(outcome.dump()) == outcome


def validate_or_error(raw: Any) -> None:
    try:
        outcome = recipes.validate(raw)
    except MtlError as exc:
        assert exc.message
        return
    check(outcome)


@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_value_is_a_recipe_or_a_recipe_error(raw: Any) -> None:
    validate_or_error(raw)


def _replace(node: Any, path: list[Any], value: Any) -> Any:
    if not path:
        return value
    head, *rest = path
    if isinstance(node, dict):
        node[head] = _replace(node.get(head), rest, value)
        return node
    if isinstance(node, list) and isinstance(head, int) and 0 <= head < len(node):
        node[head] = _replace(node[head], rest, value)
        return node
    return {head: _replace(None, rest, value)}


@settings(max_examples=400 * SCALE, deadline=None)
@given(st.lists(st.lists(keys | st.integers(0, 2), min_size=1, max_size=3), min_size=1, max_size=3), st.data())
def test_a_valid_recipe_with_random_parts_replaced(paths: list[list[Any]], data: st.DataObject) -> None:
    raw = copy.deepcopy(VALID)
    for path in paths:
        raw = _replace(raw, path, data.draw(values))
    validate_or_error(raw)


@settings(max_examples=200 * SCALE, deadline=None)
@given(
    values,
    st.none() | st.text(max_size=10) | st.sampled_from(["uniform", "mgda-ub"]),
    st.none() | st.integers(-5, 5),
    st.lists(st.text(max_size=20) | st.sampled_from(["optim.lr=-1", "train.epochs=x", "tasks.5.name=a", "a..b=1"]), max_size=3),
)
def test_load_with_overrides_is_a_recipe_or_an_error(raw: Any, method: Any, epochs: Any, sets: list[str]) -> None:
    base = copy.deepcopy(VALID) if raw is None else raw
    try:
        outcome = recipes.load(raw=base, method=method, epochs=epochs, sets=sets)
    except MtlError:
        return
    check(outcome)


@settings(max_examples=300 * SCALE, deadline=None)
@given(st.text(max_size=80) | values.map(lambda v: yaml.safe_dump(v)[:60]))
def test_any_yaml_text_parses_to_a_value_or_a_yaml_error(text: str) -> None:
    try:
        raw = recipes.parse_yaml(text, source="fuzz.yaml")
    except MtlError:
        return
    validate_or_error(raw)


def test_non_string_method_option_names_are_recipe_errors() -> None:
    """Found by the fuzzer: `method: {name: mgda-ub, 0: ~}` crashed difflib with a TypeError."""
    for key in (0, True, 1.5):
        raw = copy.deepcopy(VALID)
        raw["method"][key] = None
        try:
            recipes.validate(raw)
        except MtlError as exc:
            assert "option names must be strings" in exc.message
        else:
            raise AssertionError(f"{key!r} was accepted")
