"""`mtl compare`: one table per dataset over every run found under the given directories."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mtlcli.cli._common import err_console, handle_errors, out_console
from mtlcli.errors import MtlError
from mtlcli.io import write_text_atomic
from mtlcli.results import load_runs, render, run_table


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


@handle_errors
def compare(
    dirs: Annotated[list[Path], typer.Argument(help="Directories searched recursively for run directories.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Compare runs: test metrics at the best-validation epoch, step time and its ratio to uniform."""
    runs, warnings = load_runs(dirs)
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    if not runs:
        raise MtlError(f"no finished runs under {', '.join(map(str, dirs))}", hint="train some with `mtl train`")
    text = render(run_table(runs), fmt.value)
    if out is not None:
        write_text_atomic(out, text)
        err_console.print(f"wrote {out}")
    else:
        out_console.print(text, markup=False, highlight=False, end="")
