"""`mtl train`: train one recipe with one method into a new run directory (or resume one)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcli import recipe as recipes
from mtlcli.cli._common import err_console, handle_errors, out_console
from mtlcli.errors import MtlError
from mtlcli.trainer import Trainer


@handle_errors
def train(
    recipe: Annotated[Path | None, typer.Argument(help="Recipe YAML, e.g. recipes/multifashion.yaml.")] = None,
    method: Annotated[str | None, typer.Option(help="Method to train (see `mtl methods`); replaces the recipe's.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    out: Annotated[str | None, typer.Option(help="Override output.dir (runs are created inside it).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Prepared-data directory [default: $MTL_DATA_DIR or ./data].")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key.path=value (value parsed as YAML); repeatable.")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run directory.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a recipe; prints the run directory when done."""
    if resume is not None:
        if recipe is not None or any(v is not None for v in (method, epochs, seed, device, out, data_dir)) or set_:
            raise MtlError("--resume takes no recipe or overrides: a run continues with its own recipe")
        trainer = Trainer.resume(resume, console=err_console, show_progress=not quiet)
    else:
        if recipe is None:
            raise MtlError("no recipe given", hint="e.g. mtl train recipes/multifashion.yaml --method mgda-ub")
        resolved = recipes.load(
            recipe, method=method, epochs=epochs, seed=seed, device=device, out=out, data_dir=data_dir, sets=set_ or []
        )
        trainer = Trainer(resolved, console=err_console, show_progress=not quiet)
    err_console.print(f"training {trainer.recipe.method.name} on {trainer.recipe.data.name} ({trainer.device})")
    run_dir = trainer.run()
    out_console.print(str(run_dir))
