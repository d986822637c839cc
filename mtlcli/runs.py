"""Run directories: created atomically with unique names, and self-describing.

A run directory holds `recipe.yaml` (the resolved recipe), `metrics.jsonl` (one line per epoch),
`best.pt` / `last.pt` checkpoints and, once training has finished, `summary.json`. While it trains, its
`RunLock` keeps a second trainer out. (No torch here: listing and reading runs stays cheap.)
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked
    fcntl = None  # type: ignore[assignment]

from mtlcli.errors import RunError
from mtlcli.io import read_jsonl, write_text_atomic

RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
BEST = "best.pt"
LAST = "last.pt"


def create_run_dir(out_dir: Path, method: str, seed: int) -> Path:
    """Make `out_dir/<method>-s<seed>-<6 hex>`; mkdir is atomic, so concurrent runs never collide."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = out_dir / f"{method}-s{seed}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunError(f"could not create a unique run directory in {out_dir}")


def write_recipe(run_dir: Path, recipe: dict[str, Any]) -> None:
    header = f"# resolved recipe of this run; run again: mtl train {run_dir / RECIPE}\n"
    write_text_atomic(run_dir / RECIPE, header + yaml.safe_dump(recipe, sort_keys=False))


class RunLock:
    """An exclusive lock on a run directory, held while it trains (a second trainer is refused).

    `flock` locks die with their process, so a kill -9 never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._handle: Any = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        handle = open(self.run_dir / ".lock", "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RunError(f"{self.run_dir} is being trained by another process", hint="wait for it, or stop it first") from None
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def open_new_run(out_dir: Path, method: str, seed: int, recipe: dict[str, Any]) -> RunLock:
    """A new run directory, locked, with its recipe and an empty metrics.jsonl: a run directory from the start,
    resumable once its first checkpoint is written. Returns the held lock (`.run_dir` is the directory)."""
    lock = RunLock(create_run_dir(out_dir, method, seed)).acquire()
    write_recipe(lock.run_dir, recipe)
    (lock.run_dir / METRICS).touch()
    return lock


@dataclass
class Run:
    """A run directory as read back: its recipe, per-epoch metrics and summary (when complete)."""

    path: Path
    recipe: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.summary is not None and self.summary.get("status") == "complete"

    @property
    def method(self) -> str:
        return str(self.recipe["method"]["name"])

    @property
    def dataset(self) -> str:
        """The dataset's name; a table's prepared name (`data.prepared`), so that two tables are two datasets."""
        data = self.recipe["data"]
        return str(data.get("prepared") or data["name"])

    @property
    def seed(self) -> int:
        return int(self.recipe["train"]["seed"])

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.recipe["tasks"]]


def is_run_dir(path: Path) -> bool:
    return (path / RECIPE).is_file() and (path / METRICS).exists()


def read_run(path: Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} does not exist", hint="pass a run directory written by `mtl train`")
    if not is_run_dir(path):
        raise RunError(
            f"{path} is not a run directory (no {RECIPE} and {METRICS})", hint="pass a directory written by `mtl train`"
        )
    try:
        recipe = yaml.safe_load((path / RECIPE).read_text())
        metrics = read_jsonl(path / METRICS)
        summary = json.loads((path / SUMMARY).read_text()) if (path / SUMMARY).is_file() else None
    except (OSError, yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged: {_one_line(exc)}") from None
    if not isinstance(recipe, dict):
        raise RunError(f"{path / RECIPE} is not a recipe")
    if summary is not None and not isinstance(summary, dict):
        raise RunError(f"{path / SUMMARY} is damaged: not a JSON object")
    return Run(path=path, recipe=recipe, metrics=metrics, summary=summary)


def _one_line(exc: Exception) -> str:
    """A parse error as one line: where (for YAML, the file's line and column) and what."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{RECIPE}:{mark.line + 1}:{mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())


def find_runs(roots: list[Path]) -> list[Path]:
    """Every run directory under `roots` (recursively), sorted."""
    found: set[Path] = set()
    for root in roots:
        if not root.exists():
            raise RunError(f"{root} does not exist")
        if is_run_dir(root):
            found.add(root)
        found.update(p.parent for p in root.rglob(RECIPE) if is_run_dir(p.parent))
    return sorted(found)
