"""Plug-ins: code from other packages, named by an import path or registered under an entry point.

Two ways in, both explicit:

- an encoder named in a recipe by its import path, ``model.encoder: "package.module:factory"``
  (`is_import_path`, `import_path_problem`, `resolve`);
- a method registered by an installed package under the entry-point group ``mtlcli.methods``
  (`method_entry_points`, `load_method_plugin`): the entry point's name is the method's name and it loads an
  object following `METHOD_PLUGIN_PROTOCOL`.

This is the one module of mtlcli that imports code named at run time (`importlib.metadata`'s `EntryPoint.load`,
which imports the module and reads the attribute); tests/unit/test_safety.py allows it here and nowhere else.
It imports neither torch nor pydantic: the registries and the recipe read it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtlcli.errors import MtlError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

METHODS_GROUP = "mtlcli.methods"
METHOD_PLUGIN_PROTOCOL = ("name", "summary", "paper", "options", "build")  # `reference` is optional
PLUGIN_HINT = "install the package that provides it (pip install ...) or put its directory on PYTHONPATH"


def is_import_path(name: object) -> bool:
    """Whether `name` names a plug-in by import path (`package.module:attribute`) rather than a registered name."""
    return isinstance(name, str) and ":" in name


def import_path_problem(path: str) -> str | None:
    """Why `path` cannot name a plug-in, without importing anything; None when its form is right.

    A module of Python's standard library is refused: no encoder lives there, and a recipe naming e.g.
    `os:system` must never run it."""
    module, _, attribute = path.partition(":")
    parts = [*module.split("."), *attribute.split(".")]
    if not module or not attribute or not all(part.isidentifier() for part in parts):
        return f"{path!r} is not an import path: write package.module:factory"
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        return f"{path!r}: {top} is part of Python's standard library, not a plug-in"
    return None


def resolve(path: str, *, what: str) -> Any:
    """The object at import path `package.module:attribute`; one MtlError (naming `what` and the import path) when
    its form is wrong, its module cannot be imported, or it has no such attribute."""
    problem = import_path_problem(path)
    if problem is not None:
        raise MtlError(f"{what}: {problem}", hint="e.g. my_package.encoders:small_cnn")
    from importlib.metadata import EntryPoint  # here: ~20 ms of imports a built-in name never needs

    return _load(EntryPoint(name=what, value=path, group="mtlcli.import-path"), what)


def _load(entry: EntryPoint, what: str) -> Any:
    module, _, attribute = entry.value.partition(":")
    try:
        return entry.load()
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        raise MtlError(f"{what}: cannot import {module} (no module named {missing!r})", hint=PLUGIN_HINT) from exc
    except AttributeError as exc:
        raise MtlError(
            f"{what}: module {module} has no attribute {attribute.strip()!r}", hint="check the name after the colon"
        ) from exc
    except Exception as exc:  # the plug-in's own module failed while being imported: say so on one line
        raise MtlError(
            f"{what}: importing {module} failed: {type(exc).__name__}: {_first_line(exc)}",
            hint="fix the plug-in's module (MTL_DEBUG=1 shows the traceback)",
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def method_entry_points() -> dict[str, EntryPoint]:
    """The installed packages' methods by name: entry points of the group `mtlcli.methods` (nothing is imported)."""
    from importlib.metadata import entry_points

    return {entry.name: entry for entry in entry_points(group=METHODS_GROUP)}


@dataclass(frozen=True)
class MethodPlugin:
    """What a `mtlcli.methods` entry point provides, checked: see `load_method_plugin`."""

    name: str
    summary: str
    paper: str
    options: type  # a pydantic model class: the method's options, validated like a built-in method's
    build: Callable[[Any], Any]  # options instance -> a Method (mtlcli.methods.base)
    reference: str
    source: str  # `package.module:object (distribution version)`, shown by `mtl methods NAME`


def describe(entry: EntryPoint) -> str:
    """`name = package.module:object` of an entry point, and the distribution that declares it."""
    dist = getattr(entry, "dist", None)
    where = f" (from {dist.name} {dist.version})" if dist is not None else ""
    return f"{entry.value}{where}"


def load_method_plugin(entry: EntryPoint) -> MethodPlugin:
    """Load and check a method plug-in: the entry point loads an object (a module, a class or an instance) with

    - `name` (str): the method's name, equal to the entry point's name;
    - `summary` (str) and `paper` (str): what `mtl methods` shows;
    - `options`: a pydantic model class, the method's options (validated like a built-in method's, `extra="forbid"`
      recommended so that a misspelt option is reported);
    - `build(options) -> Method`: the implementation (subclass `mtlcli.methods.base.Stateless`, or `MethodHooks` and
      write the state hooks, for the defaults of the optional hooks);
    - optionally `reference` (str): the implementation its defaults reproduce.

    Any failure is one MtlError naming the entry point and what failed.
    """
    what = f"method plug-in {entry.name!r} (entry point {METHODS_GROUP}: {entry.name} = {entry.value})"
    spec = _load(entry, what)
    missing = [key for key in METHOD_PLUGIN_PROTOCOL if not hasattr(spec, key)]
    if missing:
        raise MtlError(
            f"{what}: {type(spec).__name__} {getattr(spec, '__name__', '')} lacks {', '.join(missing)}".replace("  ", " "),
            hint=f"the entry point must load an object with {', '.join(METHOD_PLUGIN_PROTOCOL)} (see README, Plug-ins)",
        )
    problems = []
    if spec.name != entry.name:
        problems.append(f"its name is {spec.name!r}, its entry point's {entry.name!r}")
    problems += [f"{key} is not a string" for key in ("summary", "paper") if not isinstance(getattr(spec, key), str)]
    if not (isinstance(spec.options, type) and hasattr(spec.options, "model_fields")):
        problems.append("options is not a pydantic model class")
    if not callable(spec.build):
        problems.append("build is not callable")
    if problems:
        raise MtlError(f"{what}: {'; '.join(problems)}", hint="see README, Plug-ins: your encoder and your method")
    return MethodPlugin(
        spec.name, spec.summary, spec.paper, spec.options, spec.build, str(getattr(spec, "reference", "")), describe(entry)
    )
