"""`compare` skips incomplete and damaged runs with a one-line warning each, and compares the rest."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.training import TrainingInterrupted
from tests.integration._reliability import recipe, signal_at_step, trainer


def test_compare_skips_incomplete_runs(data_dir, tmp_path) -> None:
    out = tmp_path / "out"
    finished = trainer(recipe(data_dir, out, epochs=1)).run()
    t = trainer(recipe(data_dir, out, epochs=2))
    signal_at_step(t, 2)
    with pytest.raises(TrainingInterrupted):
        t.run()
    damaged = shutil.copytree(finished, out / "damaged-run")
    (damaged / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')

    result = CliRunner().invoke(app, ["compare", str(out), "--format", "json", "--runs"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert any(t.run_dir.name in w and "incomplete" in w for w in warnings)
    assert any("damaged-run" in w for w in warnings)
    rows = json.loads(result.stdout)["multifashion-runs"]["rows"]
    assert [row["run"] for row in rows] == [finished.name]
