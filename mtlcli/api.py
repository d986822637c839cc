"""The Python API: what `mtl train`, `mtl eval` and `mtl compare` do, from Python, and the methods in a training
loop of your own (`backward`, the role TorchJD's `mtl_backward` plays).

Every name here is also an attribute of the package, imported on first use (`import mtlcli` stays light)::

    import mtlcli
    run = mtlcli.train("recipes/multifashion.yaml", method="mgda-ub", epochs=1, out="results")
    mtlcli.evaluate(run, split="test")            # {task: {metric: value}}
    mtlcli.compare(["results"])                  # a pandas DataFrame, a row per run

Errors are `mtlcli.errors.MtlError` (a recipe's: `RecipeError`, with every problem), as the CLI prints them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlcli.errors import MtlError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import Tensor, nn

    from mtlcli.methods.base import Method, ParameterSource
    from mtlcli.recipe import Recipe

__all__ = ["Run", "backward", "compare", "evaluate", "method", "train"]


@dataclass
class Run:
    """A run directory as read back: `dir`, the `recipe` it ran (defaults filled in), its `summary` (summary.json;
    None until the run completes) and `metrics` (metrics.jsonl: a record per epoch, train/val/test per task)."""

    dir: Path
    recipe: dict[str, Any]
    summary: dict[str, Any] | None
    metrics: list[dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read the run directory at `path` (written by `mtl train` or `train`)."""
        from mtlcli.runs import read_run

        run = read_run(Path(path))
        return cls(run.path, run.recipe, run.summary, run.metrics)

    @property
    def method(self) -> str:
        return str(self.recipe["method"]["name"])

    @property
    def seed(self) -> int:
        return int(self.recipe["train"]["seed"])


def train(
    recipe: str | Path | Mapping[str, Any] | Recipe,
    *,
    method: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    sets: Iterable[str] = (),
    progress: bool = False,
) -> Run:
    """Train one run, as `mtl train RECIPE` does, and return it.

    `recipe`: a YAML file, a mapping of its sections, or a `mtlcli.recipe.Recipe`. The overrides are the CLI's:
    `method` (its options are then the defaults), `epochs`, `seed`, `device`, `out` (output.dir), `data_dir` and
    `sets`, each `key.path=value` as for `--set`. `progress` shows the progress bar and messages on stderr.
    """
    from rich.console import Console

    from mtlcli import distributed
    from mtlcli import recipe as recipes
    from mtlcli.training.loop import Trainer

    path: Path | None = None
    raw: dict[str, Any] | None = None
    if isinstance(recipe, recipes.Recipe):
        raw = recipe.dump()
    elif isinstance(recipe, Mapping):
        raw = copy.deepcopy(dict(recipe))
    else:
        path = Path(recipe)
    resolved = recipes.load(
        path,
        raw=raw,
        method=method,
        epochs=epochs,
        seed=seed,
        device=device,
        out=None if out is None else str(out),
        data_dir=None if data_dir is None else str(data_dir),
        sets=list(sets),
    )
    if resolved.method.name == "grid":
        raise MtlError("grid trains one run per point of a grid", hint="use `mtl train` for grid, or train static here")
    trainer = Trainer(resolved, console=Console(stderr=True, quiet=not progress), show_progress=progress)
    try:
        run_dir = trainer.run()
    finally:
        distributed.teardown()
    return Run.load(run_dir)


def evaluate(
    run: Run | str | Path,
    *,
    split: str = "test",
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    device: str = "auto",
) -> dict[str, dict[str, float]]:
    """The per-task metrics of a run's checkpoint (`best` by validation, or `last`) on `split` (`test` or `val`),
    {task: {metric: value, "loss": mean loss}}, as `mtl eval` computes them (and writes eval-<split>-<checkpoint>.json)."""
    from mtlcli.training.evaluation import evaluate_run

    where = run.dir if isinstance(run, Run) else Path(run)
    result = evaluate_run(
        where, split=split, checkpoint=checkpoint, data_dir=None if data_dir is None else Path(data_dir), device=device
    )
    return result["metrics"]


def compare(paths: Iterable[str | Path | Run], *, select: str = "best") -> pd.DataFrame:
    """A row per finished run found under `paths` (searched recursively, as by `mtl compare`): `run` (its
    directory), `dataset`, `method` (the label the tables use, with the options that differ), `seed`, `epochs`
    (those selected), then `test <task> <metric>` and `val <task> <metric>` for every task and metric, and
    `ms/step`. `select`: `best` (the best-validation epoch) or `last:K` (mean of the last K epochs). Runs that
    cannot be read are left out; why is in the frame's `attrs["warnings"]`."""
    import pandas as pd

    from mtlcli.results import Selection, load_runs, results_of

    roots = [p.dir if isinstance(p, Run) else Path(p) for p in paths]
    selection = Selection.parse(select)
    runs, warnings = load_runs(roots)
    results, more = results_of(runs, selection)
    if not results:
        raise MtlError(f"no finished runs under {', '.join(map(str, roots))}", hint="train some with mtlcli.train")
    rows = []
    for r in results:
        row: dict[str, Any] = {"run": str(r.run.path), "dataset": r.dataset, "method": r.label, "seed": r.seed}
        row["epochs"] = r.epochs
        row.update({f"test {task} {metric}": value for (task, metric), value in r.test.items()})
        row.update({f"val {task} {metric}": value for (task, metric), value in r.val.items()})
        row["ms/step"] = None if r.step_seconds is None else 1000 * r.step_seconds
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["warnings"] = [*warnings, *more]
    return frame


def method(name: str, *, tasks: int, device: str | torch.device = "cpu", **options: Any) -> Method:
    """The method `name` (built-in or plug-in) with validated `options`, set up for `tasks` tasks on `device`:
    keep it across steps (its state: learned scales, EMAs, ...) and give its `parameters()`, if any, to your
    optimiser. Its other hooks (`end_epoch`, `after_update`, `state_dict`) are yours to call where they apply."""
    import torch

    from mtlcli.methods import build

    built = build(name, **options)
    built.setup(tasks, torch.device(device))
    return built


_method = method  # `backward`'s argument of that name hides it there

def backward(
    method: Method | str,
    losses: Sequence[Tensor] | Tensor,
    *,
    shared: ParameterSource,
    heads: Sequence[ParameterSource],
    features: Tensor,
    last_layer: nn.Module | None = None,
) -> Tensor:
    """Fill `.grad` of the shared and head parameters as `method` would in `mtl train`, for a model mtl does not
    know; returns the task weights it used [T] (detached).

    `losses`: the T task losses (scalars, or a tensor [T]), from a forward pass whose graph is kept. `shared`:
    the encoder (or its parameters); `heads`: each task's head (or its parameters), in the order of the losses;
    `features`: z, the encoder's output the heads read (representation-level methods differentiate through it);
    `last_layer`: the encoder's last layer (only GradNorm reads it). `method`: a name (built with its defaults
    for this call: stateless methods only) or `mtlcli.method(...)`'s result. Gradients add to `.grad`, as
    `loss.backward()` does: zero them between steps.
    """
    from mtlcli.methods.base import Step

    parts = list(losses)
    step = Step.from_parameters(parts, shared=shared, heads=heads, features=features, last_layer=last_layer)
    if isinstance(method, str):
        name, method = method, _method(method, tasks=len(parts), device=parts[0].device)
        if method.parameters() or method.state_dict():
            raise MtlError(
                f"{name} keeps state from step to step, and a name builds it afresh for this call",
                hint=f"build it once, method = mtlcli.method({name!r}, tasks={len(parts)}), and pass that",
            )
    return method.backward(step)
