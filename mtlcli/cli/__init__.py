"""The `mtl` command line: thin commands over the library; errors become one clear line."""

from __future__ import annotations

import os
import sys

import typer

from mtlcli import __version__
from mtlcli.cli import ablate, compare, evaluate, methods, prepare, train

app = typer.Typer(
    name="mtl",
    help="Train and compare multi-task learning methods (MGDA-UB and its rivals).",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mtl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
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
