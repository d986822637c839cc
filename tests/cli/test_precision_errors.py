"""Precision and compilation asked of a machine that cannot give them: one error line before anything trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_bad_input import assert_clean_error


def _train(write_recipe, tiny_recipe: dict, *sets: str) -> list[str]:
    return ["train", str(write_recipe(tiny_recipe)), "-q", *(arg for s in sets for arg in ("--set", s))]


def _nothing_trained(tiny_recipe: dict) -> None:
    out = Path(tiny_recipe["output"]["dir"])
    assert not out.exists() or not any(out.iterdir())


def test_fp16_on_the_cpu(tiny_recipe, write_recipe) -> None:
    assert_clean_error(_train(write_recipe, tiny_recipe, "train.precision=fp16"), "fp16 needs a CUDA device", "bf16")
    _nothing_trained(tiny_recipe)


def test_compile_on_a_torch_without_a_compiler(tiny_recipe, write_recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """What torch's Inductor raises when neither $CXX nor g++ runs (`cpp_compiler_search`)."""
    from torch._inductor import cpp_builder, exc

    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    args = _train(write_recipe, tiny_recipe, "train.compile=true")
    assert_clean_error(args, "torch.compile needs a working C++ compiler", "InvalidCxxCompiler")
    _nothing_trained(tiny_recipe)


def test_channels_last_on_lenet(tiny_recipe, write_recipe) -> None:
    needle = "train.channels_last: encoder multilenet has no wide convolutions"
    assert_clean_error(_train(write_recipe, tiny_recipe, "train.channels_last=true"), "1 problem(s)", needle)
    _nothing_trained(tiny_recipe)
