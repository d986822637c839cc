"""`mtl compare`: the papers' tables (and, with --out, figures and report.html) from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mtlcli.cli import complete
from mtlcli.cli._common import TableFormat as Format
from mtlcli.cli._common import err_console, handle_errors
from mtlcli.errors import MtlError
from mtlcli.report import MAX_STDOUT_COLUMNS

if TYPE_CHECKING:
    from mtlcli.report.tables import Table


@handle_errors
def compare(
    dirs: Annotated[
        list[Path], typer.Argument(help="Directories searched recursively for run directories.", autocompletion=complete.run_dirs)
    ],
    fmt: Annotated[Format, typer.Option("--format", help="Format of the tables printed to stdout.")] = Format.table,
    select: Annotated[
        str, typer.Option(help="best (test at the best-validation epoch) or last:K (mean of the last K epochs).")
    ] = "best",
    runs_: Annotated[bool, typer.Option("--runs", help="Also print a table with a row per run.")] = False,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help=f"Also print per-task methods tables with more than {MAX_STDOUT_COLUMNS} task-metric columns "
            "(by default stdout shows their summary: mean metric, Δm%, mean rank, cost).",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Directory to write every table (csv, md, tex, json), every figure (png, svg) and report.html."),
    ] = None,
    published: Annotated[
        bool,
        typer.Option(
            "--published",
            help="Add the rows of the papers that define each benchmark (Nash-MTL, FAMO, ...), cited and marked [published].",
        ),
    ] = False,
    stl: Annotated[
        str,
        typer.Option(
            help="Single-task reference of Δm%: runs (your single-task runs), published (the first cited paper's "
            "single-task row) or published:TABLE (e.g. published:famo).",
        ),
    ] = "runs",
) -> None:
    """Compare methods: per-dataset tables over seeds, Δm% vs single-task, ranks, timing and scale ablations.

    Tables go to stdout in --format (a methods table with more than the task-metric columns a terminal
    holds is summarised there unless --wide); with --out DIR, DIR also gets each table in every format (the
    per-run tables included), the figures and a self-contained report.html. Step-cost tables written
    by `mtl ablate` under the same directories are included. --published adds the cited papers' rows;
    --stl published computes Δm% against a published single-task row (the Δm% columns then name it).
    """
    from mtlcli.ablation import ablation_table, find_ablations
    from mtlcli.report import write_report
    from mtlcli.report.published import parse_stl, published_view
    from mtlcli.report.render import render
    from mtlcli.report.tables import build_tables, groups_of, stdout_tables
    from mtlcli.results import Selection, load_runs, results_of

    selection = Selection.parse(select)
    reference = parse_stl(stl)
    runs, warnings = load_runs(dirs)
    results, more = results_of(runs, selection)
    ablations, even_more = find_ablations(dirs)
    view, unserved = published_view({r.dataset for r in results}, show=published, stl=reference)
    notes = [*warnings, *more, *even_more, *unserved]
    for note in notes:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if not results and not ablations:
        raise MtlError(f"no finished runs under {', '.join(map(str, dirs))}", hint="train some with `mtl train`")
    ablation_tables = [ablation_table(a) for a in ablations]
    tables = build_tables(results, selection, runs=runs_, published=view) + ablation_tables
    typer.echo(render(stdout_tables(tables, wide=wide), fmt.value), nl=False)
    if not wide and fmt.value in ("csv", "json"):  # for machines: say where the wide tables went on stderr
        _note_summaries(tables)
    if out is not None:
        tables = build_tables(results, selection, runs=True, published=view) + ablation_tables  # every table
        summary = (
            f"{len(results)} runs from {', '.join(map(str, dirs))}; --select {selection}: {selection.describe()}."
        )
        written = write_report(out, tables, groups_of(results), fmt.value, notes=notes, summary=summary)
        err_console.print(f"wrote {len(written)} files to {out} (open {out / 'report.html'})", highlight=False)


def _note_summaries(tables: list[Table]) -> None:
    """One stderr line per per-task table that stdout replaced by its summary."""
    for table in tables:
        if table.wide:
            err_console.print(
                f"note: {table.key} has {table.task_columns} task-metric columns (more than {MAX_STDOUT_COLUMNS}); "
                "stdout shows its summary; --out DIR writes it, --wide prints it",
                highlight=False,
            )
