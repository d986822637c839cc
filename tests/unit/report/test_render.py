"""Rendering: mean ± std for people, numbers for machines, LaTeX escaped."""

from __future__ import annotations

import math

import pandas as pd

from mtlcli.report.render import display_frame, latex, latex_escape, render
from mtlcli.report.tables import Table


def small() -> Table:
    frame = pd.DataFrame({"method": ["a_b", "c"], "n": [2, 1], "acc": [90.0, -1e-12], "acc std": [1.234, math.nan]})
    return Table("t", "Title 50%", "Δm% & more", frame, {"acc": "acc std"})


def test_display_merges_std_and_never_shows_negative_zero() -> None:
    shown = display_frame(small())
    assert list(shown.columns) == ["method", "n", "acc"]
    assert list(shown["acc"]) == ["90.00 ± 1.23", "0.00"]


def test_latex_escapes_and_has_a_tabular() -> None:
    text = latex(small())
    assert r"\begin{tabular}{lrr}" in text and r"a\_b" in text and r"Title 50\%" in text
    assert r"$\Delta$m\% \& more" in text and r"90.00 $\pm$ 1.23" in text
    assert latex_escape("|x|") == r"\textbar{}x\textbar{}"


def test_markdown_has_caption_and_pipes() -> None:
    text = render([small()], "markdown")
    assert text.startswith("### Title 50%") and "| method" in text and "Δm% & more" in text
