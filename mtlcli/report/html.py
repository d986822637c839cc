"""A self-contained `report.html`: every table and every figure (PNG embedded as base64)."""

from __future__ import annotations

import base64
import datetime as dt
import html

from mtlcli import __version__
from mtlcli.report.figures import Figure
from mtlcli.report.render import display_frame
from mtlcli.report.tables import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
.caption { color: #555; font-size: 0.85rem; max-width: 60rem; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
.wide table { font-size: 0.75rem; }
.wide th, .wide td { padding: 0.2rem 0.4rem; }
"""


def table_html(table: Table) -> str:
    """A table section; its rows scroll sideways when too wide for the page (a column per task of many)."""
    frame = display_frame(table)
    body = frame.to_html(index=False, border=0, escape=True)
    wide = ' class="wide"' if table.wide else ""
    caption = "<br>".join(html.escape(line) for line in table.caption.split("\n"))
    return (
        f'<section id="{html.escape(table.key)}"{wide}><h3>{html.escape(table.title)}</h3>\n'
        f'<div class="scroll">{body}</div>\n<p class="caption">{caption}</p></section>'
    )


def figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.png.read_bytes()).decode("ascii")
    return (
        f'<figure id="{html.escape(figure.name)}"><img alt="{html.escape(figure.title)}" '
        f'src="data:image/png;base64,{data}"><figcaption class="caption">{html.escape(figure.caption)}'
        "</figcaption></figure>"
    )


def report_html(tables: list[Table], figures: list[Figure], *, title: str, notes: list[str], summary: str = "") -> str:
    """The whole page as one string (no external files, scripts or styles)."""
    created = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="caption">{html.escape(summary)} Written by mtl {__version__} on {created}.</p>',
    ]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("<h2>Tables</h2>")
    parts.extend(table_html(t) for t in tables)
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(figure_html(f) for f in figures)
    parts.append("</body></html>\n")
    return "\n".join(parts)
