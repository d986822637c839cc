"""`mtl methods`: the catalogue of methods, their papers and options, one block per method."""

from __future__ import annotations

import textwrap
import typing
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mtlcli.cli import complete
from mtlcli.cli._common import handle_errors, out_console
from mtlcli.errors import MtlError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo


def _choices(field: FieldInfo) -> str:
    """`a | b | c` for a Literal option, else the type's name (`loop | batched | null` for an optional Literal)."""
    return _type_name(field.annotation)


def _type_name(annotation: object) -> str:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list of {getattr(args[0], '__name__', str(args[0]))}"
    if args:  # a union, e.g. int | None, Literal[...] | None
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def describe_options(name: str) -> list[tuple[str, str, str, str]]:
    """(option, choices or type, default, description) for each option of method `name`."""
    from pydantic_core import PydanticUndefined

    from mtlcli.methods.registry import REGISTRY

    rows = []
    for key, field in REGISTRY[name].options.model_fields.items():
        default = "required" if field.default is PydanticUndefined else _show(field.default)
        rows.append((key, _choices(field), default, field.description or ""))
    return rows


def _show(value: object) -> str:
    return "null" if value is None else str(value)


def method_block(name: str, width: int = 80) -> str:
    """One method as a block of lines no wider than `width` (rich markup)."""
    from mtlcli.methods.registry import REGISTRY, default_level

    info = REGISTRY[name]
    wrap = textwrap.TextWrapper(width=width, initial_indent="    ", subsequent_indent="    ")
    lines = [f"[bold cyan]{name}[/]", *(escape(line) for line in wrap.wrap(info.summary))]
    lines.append(f"    [dim]paper:[/] {escape(info.paper)}")
    if info.plugin:  # an installed package's method (entry point of group mtlcli.methods)
        lines.extend(_labelled("plug-in", info.plugin, width))
    lines.extend(_labelled("default level", default_level(name), width))
    if info.fixed_level_of:
        general, level = info.fixed_level_of
        lines.extend(_labelled("same as", f"{general} with level: {level}", width))
    if info.reference:  # what its defaults reproduce, checked by tests/unit/methods/test_conformance*.py
        lines.extend(_labelled("reference", info.reference, width))
    if info.differs:
        lines.extend(_labelled("differs", info.differs, width))
    options = describe_options(name)
    lines.append("    [dim]options:[/] none" if not options else "    [dim]options:[/]")
    detail = textwrap.TextWrapper(width=width, initial_indent=" " * 10, subsequent_indent=" " * 10)
    head = textwrap.TextWrapper(width=width, initial_indent=" " * 6, subsequent_indent=" " * 10, break_on_hyphens=False)
    for key, choices, default, description in options:
        first, *rest = head.wrap(f"{key} = {default}  ({choices})")
        lines.append(f"      [bold]{escape(key)}[/]{escape(first[6 + len(key) :])}")
        lines.extend(escape(line) for line in [*rest, *detail.wrap(description)])
    return "\n".join(lines)


def _labelled(label: str, text: str, width: int) -> list[str]:
    """`    label: text`, wrapped to `width`, the label dimmed (rich markup)."""
    first, *rest = textwrap.wrap(f"{label}: {text}", width=width - 4, subsequent_indent="    ")
    return [f"    [dim]{label}:[/]{escape(first[len(label) + 1 :])}", *(f"    {escape(line)}" for line in rest)]


@handle_errors
def list_methods(
    name: Annotated[str | None, typer.Argument(help="Show one method only.", autocompletion=complete.methods)] = None,
) -> None:
    """List every method with a one-line description, its paper and its options (with defaults)."""
    from mtlcli.methods.registry import REGISTRY

    if name is not None and name not in REGISTRY:
        raise MtlError(f"unknown method {name!r}", hint=f"choose one of: {', '.join(REGISTRY)}")
    names = [name] if name is not None else list(REGISTRY)
    width = max(60, min(out_console.width, 100))
    out_console.print("\n\n".join(method_block(n, width) for n in names), highlight=False)
