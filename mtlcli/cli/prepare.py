"""`mtl prepare`: build a dataset from raw files once; training reads it fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcli.cli._common import err_console, handle_errors
from mtlcli.data import prepare as builder
from mtlcli.data.multimnist import SPECS
from mtlcli.data.store import resolve_data_dir
from mtlcli.errors import DataError


def _parse_sources(values: list[str], dataset: str) -> dict[str, Path]:
    needed = SPECS[dataset].sources
    result: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if sep and name in ("mnist", "fashion-mnist"):
            result[name] = Path(path)
        elif len(needed) == 1:
            result[needed[0]] = Path(value)
        else:
            raise DataError(
                f"--source {value!r}: {dataset} is built from {' and '.join(needed)}",
                hint="name each source: --source mnist=DIR --source fashion-mnist=DIR",
            )
    return result


@handle_errors
def prepare(
    dataset: Annotated[str, typer.Argument(help="multimnist, multifashion or multi-fashion-mnist.")],
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Directory with the raw IDX files (gz or not); NAME=DIR when two sources."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where prepared data goes [default: $MTL_DATA_DIR or ./data].")] = None,
    mirror: Annotated[str | None, typer.Option(help="Base URL to download the raw files from.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the pairing and the validation split.")] = 0,
    size: Annotated[int, typer.Option(help="Image side: 28 (resized, default) or 36 (the raw canvas).")] = 28,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if already prepared.")] = False,
) -> None:
    """Build a MultiMNIST-style dataset: two items per image, one classification task each."""
    name = builder.canonical_name(dataset)
    root = resolve_data_dir(data_dir)
    result = builder.prepare(
        name,
        data_dir=root,
        source_dirs=_parse_sources(source or [], name),
        mirror=mirror,
        seed=seed,
        size=size,
        force=force,
        console=err_console,
    )
    counts = ", ".join(f"{k} {v:,}" for k, v in result.meta["counts"].items())
    if result.built:
        err_console.print(f"prepared {name} in {result.path} ({counts}; seed {seed}, {size}x{size})")
    else:
        err_console.print(
            f"{name} is already prepared in {result.path} ({counts}; seed {seed}, {size}x{size}); --force rebuilds it"
        )
