"""Evaluation: per-task metrics of a model on a split that lives on the device as tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mtlcli import distributed
from mtlcli.data.device import DeviceSplit
from mtlcli.data.graphs import GraphSplit
from mtlcli.errors import MtlError
from mtlcli.models import MultiTaskModel
from mtlcli.tasks import METRICS, Task


@torch.no_grad()
def evaluate(
    model: MultiTaskModel, tasks: list[Task], split: DeviceSplit | GraphSplit, *, batch_size: int
) -> dict[str, dict[str, float]]:
    """{task: {metric: value, 'loss': mean loss}}: metric states summed over the split on the device, one sync."""
    was_training = model.training
    model.eval()
    accumulators = [list({id(METRICS[m].accumulator): METRICS[m].accumulator for m in task.metrics}.values()) for task in tasks]
    states = [[torch.zeros(a.size(task.num_outputs), dtype=torch.float64, device=split.device) for a in accs]
              for task, accs in zip(tasks, accumulators, strict=True)]  # fmt: skip
    loss_sums = torch.zeros(len(tasks), dtype=torch.float64, device=split.device)
    n = len(split)
    job = distributed.current()  # several ranks: batch k is evaluated by rank k mod N, the sums are all-reduced
    for start in range(job.rank * batch_size, n, job.world * batch_size):
        x, targets = split.batch(slice(start, start + batch_size))
        _, outputs = model(x)
        losses = []
        for task, accs, state in zip(tasks, accumulators, states, strict=True):
            output, target = outputs[task.name], task.target_of(targets)
            in_units = task.in_target_units(output)
            for acc, total in zip(accs, state, strict=True):
                total += acc.state(in_units, target, task.num_outputs)
            losses.append(task.compute_loss(output, target) * len(x))
        loss_sums += torch.stack(losses).to(torch.float64)
    flat = job.sum_(torch.cat([loss_sums, *(t for state in states for t in state)])).cpu()  # the one sync
    model.train(was_training)
    mean_losses, offset = (flat[: len(tasks)] / max(n, 1)).tolist(), len(tasks)
    result: dict[str, dict[str, float]] = {}
    for task, accs, state in zip(tasks, accumulators, states, strict=True):
        summed = {}
        for acc, total in zip(accs, state, strict=True):
            summed[id(acc)] = flat[offset : offset + len(total)]
            offset += len(total)
        result[task.name] = {m: METRICS[m].read(summed[id(METRICS[m].accumulator)], task.num_outputs) for m in task.metrics}
        result[task.name]["loss"] = mean_losses[tasks.index(task)]
    return result


def selection_score(metrics: dict[str, dict[str, float]], tasks: list[Task]) -> float:
    """Mean over tasks of each task's first metric (negated when lower is better): the best-epoch rule."""
    values = []
    for task in tasks:
        metric = task.metrics[0]
        value = metrics[task.name][metric]
        values.append(value if METRICS[metric].higher_is_better else -value)
    return sum(values) / len(values)


def evaluate_run(
    run_dir: Path, *, split: str = "test", checkpoint: str = "best", data_dir: Path | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Recompute the per-task metrics of a run's checkpoint (`best` or `last`) on `split` (`test` or `val`), and
    write them to eval-<split>-<checkpoint>.json in the run: {run, split, checkpoint, epoch, metrics}, what
    `mtl eval` prints."""
    from mtlcli.io import write_json_atomic
    from mtlcli.recipe import validate
    from mtlcli.runs import BEST, LAST, read_run
    from mtlcli.training.build import device_splits, load_dataset, make_model, resolve_device, tasks_of
    from mtlcli.training.checkpoint import load_checkpoint

    if split not in ("test", "val") or checkpoint not in ("best", "last"):
        raise MtlError(f"split {split!r}, checkpoint {checkpoint!r}", hint="split: test or val; checkpoint: best or last")
    run = read_run(run_dir)
    raw = run.recipe  # data_dir before validation: a table's tasks are read from its prepared meta.json there
    if data_dir and isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        raw = {**raw, "data": {**raw["data"], "dir": str(data_dir)}}
    recipe = validate(raw, source=str(run.path / "recipe.yaml"))
    dev = resolve_device(device)
    state = load_checkpoint(run.path / (BEST if checkpoint == "best" else LAST), dev)
    dataset = load_dataset(recipe, data_dir)
    model = make_model(recipe, dataset).to(dev)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise MtlError(f"{run.path}: checkpoint does not fit the run's model ({str(exc).splitlines()[0]})") from None
    tasks = tasks_of(recipe, dataset)
    split_data = device_splits(recipe, dataset, dev)[split]
    metrics = evaluate(model, tasks, split_data, batch_size=recipe.train.eval_batch_size)
    epoch = int(state["position"]["epoch"]) - 1
    result = {"run": str(run.path), "split": split, "checkpoint": checkpoint, "epoch": epoch, "metrics": metrics}
    write_json_atomic(run.path / f"eval-{split}-{checkpoint}.json", result)
    return result
