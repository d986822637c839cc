"""Per-epoch counts a method keeps reach metrics.jsonl (IMTL-G: steps with negative equal projections)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mtlcli.cli import app


@pytest.mark.parametrize("method", ["imtl-g", "imtl-g-exact", "imtl"])
def test_negative_projection_steps_are_logged_per_epoch(method: str, tiny_recipe, write_recipe) -> None:
    tiny_recipe["train"]["epochs"] = 2
    result = CliRunner().invoke(app, ["train", str(write_recipe(tiny_recipe)), "--method", method, "-q"])
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = [r["method_stats"]["negative_projection_steps"] for r in records]
    assert len(counts) == 2 and all(isinstance(c, int) and 0 <= c <= r["steps"] for c, r in zip(counts, records, strict=True))
