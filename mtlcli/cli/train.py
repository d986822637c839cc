"""`mtl train`: train one recipe with one method into a new run directory (or resume one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mtlcli.cli import complete
from mtlcli.cli._common import err_console, handle_errors, out_console
from mtlcli.errors import MtlError

if TYPE_CHECKING:
    from mtlcli.training.loop import Trainer


@handle_errors
def train(
    recipe: Annotated[
        Path | None, typer.Argument(help="Recipe YAML, e.g. recipes/multifashion.yaml.", autocompletion=complete.recipes)
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="Method to train (see `mtl methods`); replaces the recipe's.", autocompletion=complete.methods),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Override train.epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Train once per seed, e.g. 0,1,2 (one run directory each).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    out: Annotated[str | None, typer.Option(help="Override output.dir (runs are created inside it).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Prepared-data directory [default: $MTL_DATA_DIR or ./data].")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key.path=value (value parsed as YAML); repeatable.", autocompletion=complete.set_keys),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue an interrupted run directory.", autocompletion=complete.run_dirs)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            help="Train data-parallel on N processes of this machine (launches torchrun: N GPUs, or N CPU processes).",
            min=1,
        ),
    ] = None,
) -> None:
    """Train a recipe; prints the run directory when done (one per seed with --seeds).

    Several processes: `torchrun --nproc-per-node N -m mtlcli train RECIPE ...` (any torchrun options,
    several nodes too), or `mtl train RECIPE --nproc N` on this machine.
    """
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        options = {"--method": method, "--epochs": epochs, "--seed": seed, "--seeds": seeds, "--device": device,
                   "--out": out, "--data-dir": data_dir, "--resume": resume}  # fmt: skip
        args = [str(recipe)] if recipe is not None else []
        args += [f"{k}={v}" for k, v in options.items() if v is not None]
        args += [f"--set={s}" for s in set_ or []] + (["--quiet"] if quiet else [])
        launcher = [sys.executable, "-m", "mtlcli.cli.launch", "--standalone", f"--nproc-per-node={nproc}"]  # torchrun
        code = subprocess.call([*launcher, "-m", "mtlcli", "train", *args])
        raise typer.Exit(code)
    from mtlcli import recipe as recipes  # validation imports no torch: a recipe error prints at once

    if resume is not None:
        from mtlcli.training.loop import Trainer

        if recipe is not None or any(v is not None for v in (method, epochs, seed, seeds, device, out, data_dir)) or set_:
            raise MtlError("--resume takes no recipe or overrides: a run continues with its own recipe")
        trainer = Trainer.resume(resume, console=err_console, show_progress=not quiet)
        _run(trainer)
        return
    if recipe is None:
        raise MtlError("no recipe given", hint="e.g. mtl train recipes/multifashion.yaml --method mgda-ub")
    if seed is not None and seeds is not None:
        raise MtlError("--seed and --seeds both given", hint="use --seeds 0,1,2 alone (or --seed N for one run)")
    seed_list = parse_seeds(seeds) if seeds is not None else [seed]
    resolved = [
        recipes.load(
            recipe, method=method, epochs=epochs, seed=s, device=device, out=out, data_dir=data_dir, sets=set_ or []
        )
        for s in seed_list
    ]  # every seed's recipe is validated before the first one trains
    from mtlcli.sweep import train_grid
    from mtlcli.training.loop import Trainer

    for i, one in enumerate(resolved):
        if len(resolved) > 1:
            err_console.print(f"seed {one.train.seed} ({i + 1}/{len(resolved)})")
        if one.method.name == "grid":
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise MtlError("grid trains one run per point: launch it on one process", hint="drop torchrun / --nproc")
            out_console.print(str(train_grid(one, console=err_console, show_progress=not quiet)))
            continue
        _run(Trainer(one, console=err_console, show_progress=not quiet))


def _run(trainer: Trainer) -> None:
    from mtlcli import distributed

    job = trainer.job
    where = f"{trainer.device}, {job.world} processes" if job.active else str(trainer.device)
    if job.writer:
        data = trainer.recipe.data
        err_console.print(f"training {trainer.recipe.method.name} on {data.prepared or data.name} ({where})")
    try:
        run_dir = trainer.run()
    finally:
        distributed.teardown()
    if job.writer:
        out_console.print(str(run_dir))


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; also ranges '0-4'. Seeds are non-negative and listed once each."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                values = list(range(lo, hi + 1))
            else:
                values = [int(part)]
        except ValueError:
            raise MtlError(f"--seeds {text!r}: {part!r} is not a seed", hint="e.g. --seeds 0,1,2 or --seeds 0-4") from None
        seeds.extend(values)
    if not seeds or any(s < 0 for s in seeds):
        raise MtlError(f"--seeds {text!r}: seeds must be non-negative integers", hint="e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise MtlError(f"--seeds {text!r}: a seed is listed twice")
    return seeds
