"""Atomic writes: whatever interrupts a writer, readers see the old file or the new one, never a mix;
append-only logs never keep a torn line; every writer in the package goes through these helpers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from mtlcli.data import store
from mtlcli.io import append_jsonl, atomic_open, read_jsonl, write_json_atomic
from tests.conftest import ROOT


class Boom(Exception):
    """Raised by the tests to interrupt a write."""


def test_an_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(Boom), atomic_open(target, "wb") as handle:
        handle.write(b'{"v": 2, "half')
        raise Boom
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_read_jsonl_ignores_only_a_torn_last_line(tmp_path) -> None:
    log = tmp_path / "metrics.jsonl"
    append_jsonl(log, {"epoch": 1})
    append_jsonl(log, {"epoch": 2})
    with open(log, "a") as handle:
        handle.write('{"epoch": 3, "val')
    assert read_jsonl(log) == [{"epoch": 1}, {"epoch": 2}]
    log.write_text('{"epoch": 1}\n{"ep\n{"epoch": 3}\n')
    with pytest.raises(json.JSONDecodeError):  # damage in the middle is not a torn tail: never hidden
        read_jsonl(log)


def test_an_interrupted_prepare_keeps_the_old_dataset(tmp_path, monkeypatch) -> None:
    splits = {s: (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 2), np.uint8)) for s in store.SPLITS}
    meta = {"size": 4, "tasks": [{"name": "left", "num_classes": 10}, {"name": "right", "num_classes": 10}]}
    final = store.write_prepared(tmp_path, "ds", splits, meta)
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*args, **kwargs) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise Boom
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(Boom):
        store.write_prepared(tmp_path, "ds", {s: (a + 1, b) for s, (a, b) in splits.items()}, meta)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp directory left
    assert store.load_prepared(tmp_path, "ds").images["train"].sum() == 0


WRITERS = {"write_text", "write_bytes", "touch"}
ALLOWED = {
    # module: why its direct writes are safe
    "mtlcli/io.py": "the atomic helpers themselves (temp file + fsync + rename; one-write appends)",
    "mtlcli/data/store.py": "writes inside a temporary directory that is renamed into place when complete; opens lock files",
    "mtlcli/data/sources.py": "downloads to NAME.part, checks the MD5, then renames",
    "mtlcli/runs.py": "touches an empty metrics.jsonl and opens the run's lock file (no content)",
}


def test_every_writer_goes_through_the_atomic_helpers() -> None:
    offenders = []
    for path in sorted((ROOT / "mtlcli").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            mode = next((ast.unparse(a) for a in node.args[1:2]), "") + "".join(
                ast.unparse(k.value) for k in node.keywords if k.arg == "mode"
            )
            if name.split(".")[-1] in WRITERS or (name in {"open", "os.open"} and any(c in mode for c in "wax+")):
                offenders.append(f"{rel}:{node.lineno}: {name}")
    assert offenders == []
    assert all(Path(ROOT / m).is_file() for m in ALLOWED)
