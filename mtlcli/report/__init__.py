"""`mtl compare` outputs: tables (`tables`), their text formats (`render`), figures and report.html.

`write_report(out_dir, ...)` lays out a directory::

    OUT/tables.<ext>            every table in the chosen format (what compare prints)
    OUT/tables/<key>.{csv,md,tex,json}
    OUT/figures/<name>.{png,svg}
    OUT/report.html             tables + figures (embedded), one self-contained file
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_STDOUT_COLUMNS", "write_report"]

MAX_STDOUT_COLUMNS = 12  # task-metric columns a methods table may have on stdout; NYUv2's 9 (IMTL / Nash-MTL Table 2) fit

def __getattr__(name: str) -> Any:
    """`write_report` (pandas, matplotlib) is imported on first use, not with the package."""
    if name == "write_report":
        from mtlcli.report.folder import write_report

        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
