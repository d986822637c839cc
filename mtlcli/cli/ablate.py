"""`mtl ablate`: the cost of one training step per method, same model, batch and device."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcli.cli import complete
from mtlcli.cli._common import TableFormat as Format
from mtlcli.cli._common import err_console, handle_errors


@handle_errors
def ablate(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe YAML whose model, batch size and tasks are timed.", autocompletion=complete.recipes)
    ],
    methods: Annotated[
        list[str] | None,
        typer.Option(
            help="Methods, NAME[:key=value...], comma-separated or repeated (default: the timing-relevant ones there are).",
            autocompletion=complete.methods,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per method (the median is reported).")] = 20,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps per method.")] = 5,
    block: Annotated[int, typer.Option(help="Methods take turns every this many timed steps.")] = 5,
    synthetic: Annotated[bool, typer.Option(help="Random tensors of the recipe's shapes (no prepared data needed).")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override train.batch_size.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Prepared-data directory (default: $MTL_DATA_DIR or ./data).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="key.path=value (parsed as YAML); repeatable.", autocompletion=complete.set_keys),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where ablation-*.{json,csv,md} go (default: the recipe's output.dir).")
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Format of the table printed to stdout.")] = Format.table,
) -> None:
    """Time one step of each method (warm-up, then the median of N steps) and its ratio to uniform.

    The table is written next to the runs (the recipe's output.dir, or --out), where `mtl compare`
    picks it up.
    """
    from mtlcli import recipe as recipes  # validation imports no torch: a recipe error prints at once

    sets = list(set_ or [])
    if synthetic:
        sets.append("data.synthetic=true")
    if batch_size is not None:
        sets.append(f"train.batch_size={batch_size}")
    resolved = recipes.load(recipe, device=device, data_dir=data_dir, sets=sets)
    from mtlcli.ablation import ablation_table, parse_methods, refused_on, run_ablation
    from mtlcli.io import write_json_atomic, write_text_atomic
    from mtlcli.report.render import render_one

    specs, notes = parse_methods(methods)
    specs, refused = refused_on(resolved, specs)  # the representation level on a multi-input dataset
    notes += refused
    for note in notes:
        err_console.print(f"note: {note}", highlight=False)
    payload = run_ablation(
        resolved, specs, steps=steps, warmup=warmup, block=block, progress=lambda line: err_console.print(line, highlight=False)
    )
    payload["skipped"] = notes
    table = ablation_table(payload)
    directory = out if out is not None else Path(resolved.output.dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / f"{table.key}.json", payload)
    write_text_atomic(directory / f"{table.key}.csv", render_one(table, "csv"))
    write_text_atomic(directory / f"{table.key}.md", render_one(table, "markdown"))
    typer.echo(render_one(table, fmt.value), nl=False)
    err_console.print(f"wrote {directory / table.key}.{{json,csv,md}}", highlight=False)
