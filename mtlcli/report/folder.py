"""`mtl compare --out DIR`: every table in every format, every figure and report.html in one folder."""

from __future__ import annotations

from pathlib import Path

from mtlcli.errors import MtlError
from mtlcli.io import write_text_atomic
from mtlcli.report.figures import Figure, build_figures
from mtlcli.report.html import report_html
from mtlcli.report.render import EXTENSIONS, Format, render, render_one
from mtlcli.report.tables import Group, Table

TABLE_FORMATS: tuple[Format, ...] = ("csv", "markdown", "latex", "json")


def write_report(
    out_dir: Path,
    tables: list[Table],
    groups: dict[str, list[Group]],
    fmt: Format,
    *,
    notes: list[str],
    summary: str = "",
) -> list[Path]:
    """Write every table, figure and report.html under `out_dir`; returns the files written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MtlError(f"--out {out_dir} is a file; compare writes a directory of outputs", hint="pass a directory path")
    try:
        (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MtlError(f"cannot create {out_dir}: {exc.strerror}") from None
    written = []
    main = out_dir / f"tables.{EXTENSIONS[fmt]}"
    write_text_atomic(main, render(tables, fmt))
    written.append(main)
    for table in tables:
        for table_fmt in TABLE_FORMATS:
            path = out_dir / "tables" / f"{table.key}.{EXTENSIONS[table_fmt]}"
            write_text_atomic(path, render_one(table, table_fmt))
            written.append(path)
    figures: list[Figure] = build_figures(groups, out_dir / "figures")
    for figure in figures:
        written.extend([figure.png, figure.svg])
    page = out_dir / "report.html"
    write_text_atomic(page, report_html(tables, figures, title="mtl compare report", notes=notes, summary=summary))
    written.append(page)
    return written
