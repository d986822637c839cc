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
                "celeba, cityscapes: the official release; nyuv2: MTAN's preprocessed release)."
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
            "64 for celeba, 256 (256x512) for cityscapes, 288 (288x384) for nyuv2]."
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes decoding images (celeba, cityscapes) [default: one per core].", min=1)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if already prepared.")] = False,
) -> None:
    """Build a dataset once into DATA_DIR/<dataset>/ (uint8 arrays + meta.json with checksums)."""
    from mtlcli.data.preparers import prepare_dataset
    from mtlcli.data.store import resolve_data_dir
    spec = registry.get(dataset)
    if size is not None and not spec.min_size <= size <= spec.max_size:
        raise DataError(f"--size {size}: {spec.name} images are {spec.min_size}..{spec.max_size} pixels {spec.side_word}")
    request = registry.PrepareRequest(
        data_dir=resolve_data_dir(data_dir),
        sources=list(source or []),
        size=size,
        seed=seed,
        force=force,
        mirror=mirror,
        workers=workers,
        console=err_console,
    )
    result = prepare_dataset(spec.name, request)
    meta = result.meta
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    side = meta["size"]
    what = f"{counts}; {side}x{meta.get('width', side)}" + (f"; seed {meta.get('seed')}" if spec.uses_seed else "")
    if result.built:
        took = f" in {meta['prepare_seconds']:.0f}s" if isinstance(meta.get("prepare_seconds"), (int, float)) else ""
        err_console.print(f"prepared {spec.name} in {result.path} ({what}){took}", highlight=False)
    else:
        err_console.print(f"{spec.name} is already prepared in {result.path} ({what}); --force rebuilds it", highlight=False)


prepare.__doc__ = f"{prepare.__doc__}\n\nDatasets: {_datasets_help()}."
