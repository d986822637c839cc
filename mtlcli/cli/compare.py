"""`mtl compare`: the papers' tables (and, with --out, figures and report.html) from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcli.ablation import ablation_table, find_ablations
from mtlcli.cli._common import TableFormat as Format
from mtlcli.cli._common import err_console, handle_errors
from mtlcli.errors import MtlError
from mtlcli.report import render, write_report
from mtlcli.report.tables import build_tables, groups_of
from mtlcli.results import Selection, load_runs, results_of


@handle_errors
def compare(
    dirs: Annotated[list[Path], typer.Argument(help="Directories searched recursively for run directories.")],
    fmt: Annotated[Format, typer.Option("--format", help="Format of the tables printed to stdout.")] = Format.table,
    select: Annotated[
        str, typer.Option(help="best (test at the best-validation epoch) or last:K (mean of the last K epochs).")
    ] = "best",
    runs_: Annotated[bool, typer.Option("--runs", help="Also print a table with a row per run.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Directory to write every table (csv, md, tex, json), every figure (png, svg) and report.html."),
    ] = None,
) -> None:
    """Compare methods: per-dataset tables over seeds, Δm% vs single-task, ranks, timing and scale ablations.

    Tables go to stdout in --format; with --out DIR, DIR also gets each table in every format (the
    per-run tables included), the figures and a self-contained report.html. Step-cost tables written
    by `mtl ablate` under the same directories are included.
    """
    selection = Selection.parse(select)
    runs, warnings = load_runs(dirs)
    results, more = results_of(runs, selection)
    ablations, even_more = find_ablations(dirs)
    notes = [*warnings, *more, *even_more]
    for note in notes:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if not results and not ablations:
        raise MtlError(f"no finished runs under {', '.join(map(str, dirs))}", hint="train some with `mtl train`")
    ablation_tables = [ablation_table(a) for a in ablations]
    tables = build_tables(results, selection, runs=runs_) + ablation_tables
    typer.echo(render(tables, fmt.value), nl=False)
    if out is not None:
        tables = build_tables(results, selection, runs=True) + ablation_tables  # the folder gets every table
        summary = (
            f"{len(results)} runs from {', '.join(map(str, dirs))}; --select {selection}: {selection.describe()}."
        )
        written = write_report(out, tables, groups_of(results), fmt.value, notes=notes, summary=summary)
        err_console.print(f"wrote {len(written)} files to {out} (open {out / 'report.html'})", highlight=False)
