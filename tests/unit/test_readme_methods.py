"""The README's Methods table tells the registry's truth: every method, its reference, what differs, its default level."""

from __future__ import annotations

import re

from mtlcli.methods.registry import BUILT_IN, REGISTRY, default_level
from tests.conftest import ROOT


def methods_table() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| name | what it does | paper | reference (what differs) | default level | key options (default) |")
    rows = text[start : text.index("\n\n", start)].split("\n")[2:]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return {c[0].strip("`"): c for c in cells}


def test_every_method_has_a_row_with_its_reference_what_differs_and_its_default_level() -> None:
    table = methods_table()
    assert sorted(table) == sorted(BUILT_IN)
    for name, (_, _, _, reference, level, _) in table.items():
        info = REGISTRY[name]
        assert info.reference in reference, name
        assert info.differs in reference, name
        assert level == default_level(name), name
        assert info.reference or reference in ("-", "none public"), name


def test_default_levels_are_the_papers() -> None:
    shared = ("mgda", "pcgrad", "upgrad", "dualproj", "cagrad", "aligned-mtl", "fairgrad", "gradvac", "db-mtl", "moco")
    assert {name: default_level(name) for name in shared} == dict.fromkeys(shared, "shared")
    representation = ("mgda-ub", "imtl-g", "mgda-unconstrained", "graddrop", "imtl")
    assert {name: default_level(name) for name in representation} == dict.fromkeys(representation, "representation")
    assert default_level("imtl-g-exact") == "shared" and default_level("dwa") == "losses"
