"""The `mtl` command line: thin commands over the library; errors become one clear line.

Startup is instant by design: this package and every command module import only typer, rich and the
torch-free registries at the top; a command imports torch, pandas or matplotlib inside its body, when it
computes. `tests/cli/test_startup.py` guards this.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from pathlib import Path

import typer

from mtlcli import __version__
from mtlcli.cli import ablate, compare, evaluate, methods, prepare, train

app = typer.Typer(
    name="mtl",
    help="Train and compare multi-task learning methods (MGDA-UB and its rivals).",
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def torch_build() -> tuple[str | None, str | None]:
    """(torch version, CUDA version torch was built with or None for a CPU build), read from torch/version.py
    on the path without importing torch (which takes seconds)."""
    for entry in sys.path:
        try:
            text = (Path(entry or ".") / "torch" / "version.py").read_text(encoding="utf-8")
        except OSError:
            continue
        version = re.search(r"^__version__\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        cuda = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        return (version.group(1) if version else None), (cuda.group(1) if cuda else None)
    return None, None


def version_line() -> str:
    """`mtl X, torch Y, CUDA Z, Python W` (CUDA only for a CUDA build of torch)."""
    torch_version, cuda = torch_build()
    parts = [f"mtl {__version__}", f"torch {torch_version or 'not installed'}"]
    if cuda:
        parts.append(f"CUDA {cuda}")
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def _version(value: bool) -> None:
    if value:
        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the versions of mtl, torch, CUDA and Python."
    ),
) -> None:
    if debug:
        os.environ["MTL_DEBUG"] = "1"


app.command("prepare", no_args_is_help=True)(prepare.prepare)
app.command("train")(train.train)
app.command("eval", no_args_is_help=True)(evaluate.evaluate)
app.command("compare", no_args_is_help=True)(compare.compare)
app.command("ablate", no_args_is_help=True)(ablate.ablate)
app.command("methods")(methods.list_methods)


def main() -> None:
    sys.exit(app())
