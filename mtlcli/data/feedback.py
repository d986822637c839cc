"""What a prepare shows while it works: a progress bar and notes on stderr (nothing without a console)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress(console: Console | None, description: str, total: int, done: int = 0) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`: a rich bar on `console` (gone when finished), or nothing without one."""
    if console is None:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def note(console: Console | None, text: str) -> None:
    """A yellow `note:` line (something the user may want to know, not an error)."""
    if console is not None:
        console.print(f"[yellow]note:[/] {text}", highlight=False)
