"""Safety: YAML safe loading only, checkpoints loaded with weights_only, no dynamic imports or eval, and
recipes can only name registered components."""

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


def calls(path: Path) -> list[tuple[str, ast.Call]]:
    """(dotted name, node) of every call in a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(ast.unparse(node.func), node) for node in ast.walk(tree) if isinstance(node, ast.Call)]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_in(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
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
