"""Domain errors: library code raises these, the CLI turns them into one clear line."""

from __future__ import annotations


class MtlError(Exception):
    """A user-facing error: `message` says what is wrong, `hint` what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class DataError(MtlError):
    """Raw or prepared data is missing, unreadable or malformed."""


class RecipeError(MtlError):
    """A recipe is invalid; `problems` lists every problem found, each with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the recipe:\n{lines}")


class RunError(MtlError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


class DistributedError(MtlError):
    """A collective failed: another rank of a torchrun job died or stopped answering within the timeout."""
