"""`mtl eval`: recompute per-task metrics of a run's checkpoint."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from mtlcli.cli import complete
from mtlcli.cli._common import err_console, handle_errors, out_console
from mtlcli.errors import MtlError


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

    from mtlcli.io import write_json_atomic
    from mtlcli.recipe import validate
    from mtlcli.runs import BEST, LAST, read_run
    from mtlcli.training.build import device_splits, load_dataset, make_model, resolve_device, tasks_of
    from mtlcli.training.checkpoint import load_checkpoint
    from mtlcli.training.evaluation import evaluate as evaluate_model

    run = read_run(run_dir)
    raw = run.recipe  # --data-dir before validation: a table's tasks are read from its prepared meta.json there
    if data_dir and isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        raw = {**raw, "data": {**raw["data"], "dir": str(data_dir)}}
    recipe = validate(raw, source=str(run.path / "recipe.yaml"))
    dev = resolve_device(device)
    state = load_checkpoint(run.path / (BEST if checkpoint is Checkpoint.best else LAST), dev)
    dataset = load_dataset(recipe, Path(data_dir) if data_dir else None)
    model = make_model(recipe, dataset).to(dev)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise MtlError(f"{run.path}: checkpoint does not fit the run's model ({str(exc).splitlines()[0]})") from None
    tasks = tasks_of(recipe, dataset)
    split_data = device_splits(recipe, dataset, dev)[split.value]
    metrics = evaluate_model(model, tasks, split_data, batch_size=recipe.train.eval_batch_size)
    epoch = int(state["position"]["epoch"]) - 1
    result = {"run": str(run.path), "split": split.value, "checkpoint": checkpoint.value, "epoch": epoch, "metrics": metrics}
    target = run.path / f"eval-{split.value}-{checkpoint.value}.json"
    write_json_atomic(target, result)
    if as_json:
        out_console.print_json(json.dumps(result))
    else:
        columns = list(dict.fromkeys(k for m in metrics.values() for k in m))  # tasks may have different metrics
        columns = [*(k for k in columns if k != "loss"), "loss"]
        rows = [[task, *("" if k not in m else f"{m[k]:.4f}" if k == "loss" else f"{m[k]:.2f}" for k in columns)]
                for task, m in metrics.items()]  # fmt: skip
        headers = ["task", *columns]
        out_console.print(f"{run.path.name}: {split.value} split, {checkpoint.value} checkpoint (epoch {epoch})")
        out_console.print(tabulate(rows, headers=headers, tablefmt="simple"))
    err_console.print(f"wrote {target}")
