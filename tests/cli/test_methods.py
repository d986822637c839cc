"""`mtl methods`: every method, its paper and its options with defaults, readable at 80 columns."""

from __future__ import annotations

from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.methods import REGISTRY

runner = CliRunner()


def test_catalogue_lists_every_method_with_paper_and_options() -> None:
    result = runner.invoke(app, ["methods"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    headers = [line for line in lines if line and not line.startswith(" ")]
    assert headers == list(REGISTRY)
    assert result.stdout.count("paper:") == len(REGISTRY)
    for option, default in [("normalization", "none"), ("grads", "loop"), ("alpha", "1.5"), ("head_grads", "weighted")]:
        assert f"{option} = {default}" in result.stdout
    assert "weights = required  (list of float)" in result.stdout


def test_one_method_and_an_unknown_one() -> None:
    result = runner.invoke(app, ["methods", "imtl-g"])
    assert result.exit_code == 0 and result.stdout.startswith("imtl-g\n") and "mgda" not in result.stdout
    result = runner.invoke(app, ["methods", "imtl-x"])
    assert result.exit_code == 1 and "unknown method 'imtl-x'" in result.output


def test_optional_choices_are_listed_with_null() -> None:
    from mtlcli.cli.methods import describe_options

    rows = {key: choices for key, choices, _default, _doc in describe_options("upgrad")}
    assert rows["grads"] == "loop | batched | null" and rows["pref_vector"] == "list of float | null"


def test_one_method_names_its_reference_what_differs_and_its_general_form() -> None:
    result = runner.invoke(app, ["methods", "nash-mtl"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "reference: AvivNavon/nash-mtl, methods/weight_methods.py `NashMTL`" in text
    assert "differs: G a = 1/a is solved exactly" in text
    result = runner.invoke(app, ["methods", "mgda-ub"])
    assert "same as: mgda with level: representation" in result.stdout
    result = runner.invoke(app, ["methods", "uniform"])
    assert "differs:" not in result.stdout and "reference:" not in result.stdout
