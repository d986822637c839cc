"""`mtl prepare`: build a dataset from raw files once; training reads it fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mtlcli.cli import complete
from mtlcli.cli._common import err_console, handle_errors
from mtlcli.data import registry
from mtlcli.errors import DataError


def _datasets_help() -> str:
    return "; ".join(f"{spec.name}: {spec.description}" for spec in registry.DATASETS.values())


@handle_errors
def prepare(
    dataset: Annotated[
        str, typer.Argument(help=f"The dataset ({', '.join(registry.DATASETS)}).", autocompletion=complete.datasets)
    ],
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source",
            help=(
                "Directory with the raw files (MNIST family: IDX files, NAME=DIR when two sources; "
                "celeba, cityscapes: the official release; cityscapes-mtan, nyuv2: MTAN's preprocessed release; qm9: "
                "gdb9.sdf, gdb9.sdf.csv and uncharacterized.txt)."
            ),
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where prepared data goes [default: $MTL_DATA_DIR or ./data].")] = None,
    mirror: Annotated[str | None, typer.Option(help="Base URL to download the raw files from (MNIST family).")] = None,
    seed: Annotated[
        int, typer.Option(help="Seed of the pairing (MNIST family) and of the validation split held out of train.")
    ] = 0,
    size: Annotated[
        int | None,
        typer.Option(
            help="Image side, or height where images are not square [default: the dataset's: 28 for the MNIST family, "
            "64 for celeba, 256 (256x512) for cityscapes, 128 (128x256) for cityscapes-mtan, 288 (288x384) for nyuv2]."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes decoding images (celeba, cityscapes) [default: one per core].", min=1)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if already prepared.")] = False,
    labels: Annotated[
        Path | None, typer.Option(help="table: the CSV or parquet file, one row per sample (parquet needs pyarrow).")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="table: the images' directory (the id column holds their paths in it) [default: none, the numeric "
            "columns are the input]."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="table: the prepared name, DATA_DIR/NAME (data.prepared) [default: table].")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option("--id", help="table: the id column (image path with --images) [default: id].")
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="table: a task column, COL or COL:classification or COL:regression (repeat for each) [default with "
            "--images: every other column].",
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="table: the column of train/val/test [default: split, if present; else seeded 80/10/10].")
    ] = None,
) -> None:
    """Build a dataset once into DATA_DIR/<dataset>/ (arrays + meta.json with checksums); a table into DATA_DIR/<--name>/."""
    from mtlcli.data.preparers import prepare_dataset
    spec = registry.get(dataset)
    table_options = {"--labels": labels, "--images": images, "--name": name, "--id": id_column, "--task": task, "--split": split}
    given = [flag for flag, value in table_options.items() if value is not None]
    table = None
    if spec.from_table:
        if labels is None:
            raise DataError(f"`mtl prepare {spec.name}` reads your table", hint="pass --labels FILE.csv [--images DIR]")
        table = registry.TableRequest(labels=labels, images=images, name=name or spec.name, id_column=id_column or "id",
                                      tasks=tuple(task) if task else None, split_column=split)  # fmt: skip
    elif given:
        raise DataError(f"{', '.join(given)}: options of `mtl prepare table`, not of {spec.name}", hint="leave them out")
    if size is not None and not spec.min_size <= size <= spec.max_size:
        raise DataError(f"--size {size}: {spec.name} images are {spec.min_size}..{spec.max_size} pixels {spec.side_word}")
    request = registry.PrepareRequest(
        data_dir=registry.resolve_data_dir(data_dir),
        sources=list(source or []),
        size=size,
        seed=seed,
        force=force,
        mirror=mirror,
        workers=workers,
        console=err_console,
        table=table,
    )
    result = prepare_dataset(spec.name, request)
    meta = result.meta
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    side = meta["size"]
    features = meta.get("features", {}).get("names") if meta.get("input") == "features" else None
    shape = f"{len(features)} features" if features else f"{side}x{meta.get('width', side)}"
    what = f"{counts}; {shape}" + (f"; seed {meta.get('seed')}" if spec.uses_seed else "")
    if result.built:
        took = f" in {meta['prepare_seconds']:.0f}s" if isinstance(meta.get("prepare_seconds"), (int, float)) else ""
        err_console.print(f"prepared {spec.name} in {result.path} ({what}){took}", highlight=False)
    else:
        shown = result.path.name if spec.from_table else spec.name
        err_console.print(f"{shown} is already prepared in {result.path} ({what}); --force rebuilds it", highlight=False)


prepare.__doc__ = f"{prepare.__doc__}\n\nDatasets: {_datasets_help()}."
