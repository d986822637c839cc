"""`mtl methods`: the catalogue of methods, their papers and options."""

from __future__ import annotations

from pydantic_core import PydanticUndefined
from rich.table import Table

from mtlcli.cli._common import handle_errors, out_console
from mtlcli.methods import REGISTRY


def describe_options(name: str) -> list[str]:
    lines = []
    for key, field in REGISTRY[name].options.model_fields.items():
        default = "required" if field.default is PydanticUndefined else repr(field.default)
        lines.append(f"{key}={default}" + (f": {field.description}" if field.description else ""))
    return lines


@handle_errors
def list_methods() -> None:
    """List every method with a one-line description, its paper and its options (with defaults)."""
    table = Table(show_lines=True)
    table.add_column("method", style="bold")
    table.add_column("what it does")
    table.add_column("paper")
    table.add_column("options (defaults)")
    for name, info in REGISTRY.items():
        table.add_row(name, info.summary, info.paper, "\n".join(describe_options(name)) or "-")
    out_console.print(table)
