"""Safety: YAML safe loading only, checkpoints loaded with weights_only, no dynamic imports or eval (but in the
one plug-in loader), and recipes can only name registered components or a plug-in's explicit import path."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest

from mtlcli import recipe as recipes
from mtlcli.errors import RecipeError
from tests.conftest import ROOT, load_shipped_recipe

SOURCES = sorted((ROOT / "mtlcli").rglob("*.py"))
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "import_module"}
FORBIDDEN_MODULES = {"pickle", "dill", "importlib", "marshal", "shelve"}
# Plug-ins (README, "Plug-ins: your encoder and your method") are code named at run time: an installed package's
# entry point, or a recipe's `model.encoder: package.module:factory`. Loading them needs a dynamic import, which
# lives in this one module, through importlib.metadata's EntryPoint.load and nothing else of importlib.
PLUGIN_LOADER = ROOT / "mtlcli" / "plugins.py"
PLUGIN_LOADER_IMPORTS = {"importlib.metadata"}


def imported_modules(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(ast.unparse(node.func), node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_in(path: Path) -> None:
    tree = ast.parse(path.read_text())
    names = imported_modules(tree)
    if path == PLUGIN_LOADER:
        names = [n for n in names if n not in PLUGIN_LOADER_IMPORTS]
    assert not {n.split(".")[0] for n in names} & FORBIDDEN_MODULES, (path, names)
    for name, call in calls(path):
        bare = isinstance(call.func, ast.Name)
        assert not (bare and name in FORBIDDEN_CALLS) and not name.endswith("import_module"), (path, name)
        func = call.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "yaml":
            assert func.attr in {"safe_load", "safe_dump"}, (path, name)
        if name == "torch.load":
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, path
        if name in {"np.load", "numpy.load"}:
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False, path


def test_only_the_plugin_loader_imports_importlib_and_only_its_metadata() -> None:
    """The exception above is as narrow as it reads: one module, `importlib.metadata` only, loading by EntryPoint."""
    def importlib_of(path: Path) -> set[str]:
        return {n for n in imported_modules(ast.parse(path.read_text())) if n.split(".")[0] == "importlib"}

    assert [path for path in SOURCES if importlib_of(path)] == [PLUGIN_LOADER]
    assert importlib_of(PLUGIN_LOADER) == PLUGIN_LOADER_IMPORTS
    assert {name for name, _ in calls(PLUGIN_LOADER) if name.endswith(".load")} == {"entry.load"}


def test_torch_load_is_actually_called_somewhere() -> None:
    """The scan above is not vacuous."""
    assert any(name == "torch.load" for path in SOURCES for name, _ in calls(path))
    assert any(name == "yaml.safe_load" for path in SOURCES for name, _ in calls(path))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("method", "name"), "os.system"),
        (("method", "name"), "mtlcli.methods.uniform.Uniform"),
        (("model", "encoder"), "torchvision.models.resnet18"),
        (("model", "encoder"), "os:system"),  # a plug-in's import path, but Python's standard library: refused
        (("model", "encoder"), "builtins:eval"),
        (("tasks", 0, "loss"), "builtins.eval"),
        (("tasks", 0, "metrics"), ["os.getcwd"]),
        (("optim", "name"), "torch.optim.LBFGS"),
        (("data", "name"), "../../etc"),
    ],
)
def test_recipes_name_only_registered_components(path: tuple, value: object) -> None:
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    node = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(RecipeError):
        recipes.validate(raw)
