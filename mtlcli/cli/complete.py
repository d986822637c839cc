"""Shell completion (TAB) for `mtl`: method and dataset names, recipe files, run directories, `--set` keys.

Each function runs on every TAB, so it reads only the torch-free registries and the file system.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RUN_MARKERS = ("recipe.yaml", "summary.json")  # what makes a directory a run directory


def methods(incomplete: str) -> list[str]:
    return [name for name in _method_names() if name.startswith(incomplete)]


def _method_names() -> list[str]:
    """The registry's names; the built-in ones only when the plug-ins cannot be listed (`mtl methods` says why)."""
    from mtlcli.errors import MtlError
    from mtlcli.methods.registry import BUILT_IN, REGISTRY

    try:
        return list(REGISTRY)
    except MtlError:
        return list(BUILT_IN)


def _method_options() -> Iterator[str]:
    """Every option of every method that loads (a broken plug-in offers nothing: TAB never prints an error)."""
    from mtlcli.errors import MtlError
    from mtlcli.methods.registry import REGISTRY

    def options(name: str) -> list[str]:
        try:
            return list(REGISTRY[name].options.model_fields)
        except MtlError:
            return []

    for name in _method_names():
        yield from options(name)


def datasets(incomplete: str) -> list[str]:
    from mtlcli.data.registry import DATASETS

    names = [n for spec in DATASETS.values() for n in (spec.name, *spec.aliases)]
    return [name for name in names if name.startswith(incomplete)]


def recipes(incomplete: str) -> list[str]:
    """YAML files under the typed directory (the shipped `recipes/*.yaml` first when nothing is typed)."""
    found = [str(p) for p in _entries(incomplete) if p.is_file() and p.suffix in (".yaml", ".yml")]
    dirs = [f"{p}/" for p in _entries(incomplete) if p.is_dir() and not p.name.startswith(".")]
    shipped = sorted(str(p) for p in Path("recipes").glob("*.yaml")) if not incomplete else []
    return list(dict.fromkeys([*shipped, *sorted(found), *sorted(dirs)]))


def run_dirs(incomplete: str) -> list[str]:
    """Run directories (holding recipe.yaml) under the typed directory, or under ./results when nothing is typed."""
    start = incomplete or "results/"
    runs, dirs = [], []
    for path in _entries(start):
        if not path.is_dir() or path.name.startswith("."):
            continue
        (runs if any((path / marker).is_file() for marker in RUN_MARKERS) else dirs).append(str(path))
    return sorted(runs) + sorted(f"{d}/" for d in dirs)


def set_keys(incomplete: str) -> list[str]:
    """`key.path=` for every recipe key: the schema's sections, every method's and encoder's options."""
    return [key for key in recipe_keys() if key.startswith(incomplete)]


def recipe_keys() -> list[str]:
    from mtlcli.models.registry import ENCODERS
    from mtlcli.recipe import Recipe

    keys = [f"{key}=" for key in _model_keys(Recipe, "")]
    keys += sorted({f"method.{option}=" for option in _method_options()})
    keys += sorted({f"model.{option}=" for spec in ENCODERS.values() for option in spec.options.model_fields})
    return list(dict.fromkeys(keys))


def _model_keys(model: Any, prefix: str) -> Iterator[str]:
    """Dotted leaf keys of a pydantic model (a list of sections gives `tasks.0.name`)."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        listed = typing.get_origin(field.annotation) is list
        inner = _section(typing.get_args(field.annotation)[0] if listed else field.annotation, BaseModel)
        if inner is None:
            yield f"{prefix}{name}"
        else:
            yield from _model_keys(inner, f"{prefix}{name}.0." if listed else f"{prefix}{name}.")


def _section(annotation: Any, base: type) -> Any:
    candidates = typing.get_args(annotation) or (annotation,)
    return next((a for a in candidates if isinstance(a, type) and issubclass(a, base)), None)


def _entries(incomplete: str) -> list[Path]:
    """The directory entries whose path starts with `incomplete`."""
    folder, _, stem = incomplete.rpartition("/")
    base = Path(folder) if folder else Path()
    try:
        children = list(base.iterdir())
    except OSError:
        return []
    return [base / p.name if folder else Path(p.name) for p in children if p.name.startswith(stem)]
