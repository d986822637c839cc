"""Tables as text: table (terminal), markdown, csv, json, latex.

Formats for people show "mean ± std"; csv and json keep the numbers (std in `<column> std`), so they
parse back losslessly.
"""

from __future__ import annotations

import io
import json
import math
from typing import Literal

import pandas as pd
from tabulate import tabulate

from mtlcli.report.tables import Table

Format = Literal["table", "markdown", "csv", "json", "latex"]
EXTENSIONS: dict[str, str] = {"table": "txt", "markdown": "md", "csv": "csv", "json": "json", "latex": "tex"}


def _number(value: object, decimals: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"
    return str(value)


def display_frame(table: Table, pm: str = "±") -> pd.DataFrame:
    """Strings for people: value columns merged with their std as 'mean ± std', the rest formatted."""
    frame = table.frame
    out = pd.DataFrame(index=frame.index)
    std_columns = set(table.spread.values())
    for name in frame.columns:
        if name in std_columns:
            continue
        std_name = table.spread.get(name)
        cells = []
        for i in frame.index:
            value = frame.at[i, name]
            text = _number(value.item() if hasattr(value, "item") else value)
            if std_name is not None:
                std = frame.at[i, std_name]
                if std is not None and not (isinstance(std, float) and math.isnan(std)) and text != "-":
                    text = f"{text} {pm} {_number(float(std))}"
            cells.append(text)
        direction = table.higher_is_better.get(name)
        out[name if direction is None else f"{name} {'↑' if direction else '↓'}"] = cells
    return out


def _records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return json.loads(frame.to_json(orient="records", double_precision=10))


def render(tables: list[Table], fmt: Format) -> str:
    """All `tables` in one text of format `fmt`."""
    if fmt == "json":
        payload = {
            t.key: {"title": t.title, "caption": t.caption, "columns": list(t.frame.columns), "rows": _records(t.frame)}
            for t in tables
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        if not tables:
            return ""
        frames = [t.frame.assign(table=t.key)[["table", *t.frame.columns]] for t in tables]
        buffer = io.StringIO()
        pd.concat(frames, ignore_index=True, sort=False).to_csv(buffer, index=False, float_format="%.6g")
        return buffer.getvalue()
    return "\n".join(render_one(t, fmt) for t in tables)


def render_one(table: Table, fmt: Format) -> str:
    """One table in `fmt` (csv and json: the numbers only)."""
    if fmt == "csv":
        buffer = io.StringIO()
        table.frame.to_csv(buffer, index=False, float_format="%.6g")
        return buffer.getvalue()
    if fmt == "json":
        body = {"title": table.title, "caption": table.caption, "rows": _records(table.frame)}
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    if fmt == "latex":
        return latex(table)
    frame = display_frame(table)
    style = "github" if fmt == "markdown" else "simple"
    body = tabulate(frame, headers="keys", tablefmt=style, showindex=False, disable_numparse=True)
    if fmt == "markdown":
        return f"### {table.title}\n\n{body}\n\n{table.caption}\n"
    return f"{table.title}\n{body}\n{table.caption}\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "|": r"\textbar{}",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex(table: Table) -> str:
    """A booktabs table environment with the caption (numbers as 'mean $\\pm$ std')."""
    frame = display_frame(table)
    align = "l" + "r" * (len(frame.columns) - 1)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(table.title)}. {latex_escape(table.caption)}}}",
        rf"\label{{tab:{table.key}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(str(v)) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
