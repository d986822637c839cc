"""`mtl eval`: recompute per-task metrics of a run's checkpoint."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mtlcli.cli import complete
from mtlcli.cli._common import err_console, handle_errors, out_console


class Split(str, Enum):
    test = "test"
    val = "val"


class Checkpoint(str, Enum):
    best = "best"
    last = "last"


@handle_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `mtl train`.", autocompletion=complete.run_dirs)],
    split: Annotated[Split, typer.Option(help="Which split to evaluate.")] = Split.test,
    checkpoint: Annotated[Checkpoint, typer.Option(help="best (by validation) or last.")] = Checkpoint.best,
    data_dir: Annotated[
        str | None, typer.Option(help="Prepared-data directory [default: the run's, $MTL_DATA_DIR or ./data].")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Evaluate a checkpoint; prints a table and writes eval-<split>-<checkpoint>.json in the run."""
    from tabulate import tabulate

    from mtlcli.training.evaluation import evaluate_run

    result = evaluate_run(
        run_dir, split=split.value, checkpoint=checkpoint.value, data_dir=Path(data_dir) if data_dir else None, device=device
    )
    metrics, epoch, path = result["metrics"], result["epoch"], Path(result["run"])
    target = path / f"eval-{split.value}-{checkpoint.value}.json"
    if as_json:
        out_console.print_json(json.dumps(result))
    else:
        columns = list(dict.fromkeys(k for m in metrics.values() for k in m))  # tasks may have different metrics
        columns = [*(k for k in columns if k != "loss"), "loss"]
        rows = [[task, *("" if k not in m else f"{m[k]:.4f}" if k == "loss" else f"{m[k]:.2f}" for k in columns)]
                for task, m in metrics.items()]  # fmt: skip
        headers = ["task", *columns]
        out_console.print(f"{path.name}: {split.value} split, {checkpoint.value} checkpoint (epoch {epoch})")
        out_console.print(tabulate(rows, headers=headers, tablefmt="simple"))
    err_console.print(f"wrote {target}")
