"""What every command shares: the stderr console and the error boundary."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mtlcli.errors import MtlError

err_console = Console(stderr=True)
out_console = Console(soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("MTL_DEBUG", "") not in ("", "0")


def report(exc: MtlError) -> None:
    err_console.print(f"[bold red]Error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[bold]Hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def handle_errors(func: F) -> F:
    """User errors (MtlError) print 'Error: ...' (+ 'Hint: ...') and exit 1; --debug re-raises them."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MtlError as exc:
            if debug_enabled():
                raise
            report(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
