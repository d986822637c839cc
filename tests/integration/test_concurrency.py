"""Concurrency: trainings writing to the same output directory at once never overwrite each other."""

from __future__ import annotations

import json
import secrets
import threading
from pathlib import Path

import yaml

from mtlcli import runs
from tests.integration._reliability import assert_same_run, metrics, recipe, start_cli


def test_two_concurrent_trainings_into_one_directory(data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(data_dir, out, epochs=2, batch_size=16)))  # same method, same seed
    procs = [start_cli("train", str(path), "-q") for _ in range(2)]
    results = [proc.communicate(timeout=180) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
    dirs = [Path(stdout.strip().splitlines()[-1]) for stdout, _ in results]
    assert dirs[0] != dirs[1] and {d.parent for d in dirs} == {out}
    assert sorted(p.name for p in out.iterdir()) == sorted(d.name for d in dirs)
    for run_dir in dirs:
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
        assert [rec["epoch"] for rec in metrics(run_dir)] == [1, 2]  # nobody else's lines
    assert_same_run(dirs[0], dirs[1])  # same seed, each undisturbed by the other


def test_run_dir_names_are_unique_under_threads_and_collisions(tmp_path, monkeypatch) -> None:
    made: list[Path] = []
    threads = [threading.Thread(target=lambda: made.append(runs.create_run_dir(tmp_path, "m", 0))) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 24 and all(p.is_dir() for p in made)

    names = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda _n: next(names))
    first = runs.create_run_dir(tmp_path / "c", "m", 0)
    second = runs.create_run_dir(tmp_path / "c", "m", 0)  # collides twice, then gets a fresh name
    assert (first.name, second.name) == ("m-s0-aaaaaa", "m-s0-bbbbbb")
