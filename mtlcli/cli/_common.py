"""What every command shares: the stderr console and the error boundary."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mtlcli.errors import DistributedError, MtlError


class TableFormat(str, Enum):
    """Output formats of the table-printing commands."""

    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    latex = "latex"


err_console = Console(stderr=True, soft_wrap=True)  # an error or warning stays one line (no wrapping)
out_console = Console(soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("MTL_DEBUG", "") not in ("", "0")


def report(exc: MtlError) -> None:
    """The error line (and hint) on stderr; in a torchrun job rank 0 speaks for all, unless a rank was lost."""
    if int(os.environ.get("RANK", "0")) > 0 and not isinstance(exc, DistributedError):
        return
    err_console.print(f"[bold red]Error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"[bold]Hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


_OS_HINTS = {
    errno.ENOSPC: "free some disk space (or choose another --out); files already written are intact",
    errno.EDQUOT: "free some space under your quota; files already written are intact",
    errno.EROFS: "the file system is read-only: choose a writable directory (--out, --data-dir)",
    errno.EACCES: "check the permissions, or choose another directory",
    errno.EPERM: "check the permissions, or choose another directory",
}


def os_error(exc: OSError) -> MtlError:
    """An OSError (disk full, read-only, permissions, ...) as one line naming the file."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f"{exc.filename}: " if exc.filename else ""
    return MtlError(f"{where}{reason}", hint=_OS_HINTS.get(exc.errno or 0))


def handle_errors(func: F) -> F:
    """User errors (MtlError) and OS errors (disk full, read-only, ...) print 'Error: ...'
    (+ 'Hint: ...') and exit non-zero (an error's `exit_code`, default 1); --debug re-raises them."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MtlError as exc:
            if debug_enabled():
                raise
            report(exc)
            raise typer.Exit(getattr(exc, "exit_code", 1)) from None
        except OSError as exc:
            if debug_enabled():
                raise
            report(os_error(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
