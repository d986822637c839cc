"""prepare -> train (uniform, mgda-ub) -> eval -> compare through the CLI, on tiny generated IDX files."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mtlcli.cli import app

runner = CliRunner()


def test_prepare_train_eval_compare(raw_dirs, tmp_path, write_recipe, tiny_recipe) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, ["prepare", "multifashion", "--source", str(raw_dirs["fashion-mnist"]), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert (data / "multifashion" / "meta.json").is_file()

    tiny_recipe["data"]["dir"] = None
    recipe = write_recipe(tiny_recipe)
    runs = []
    for method in ("uniform", "mgda-ub"):
        result = runner.invoke(app, ["train", str(recipe), "--method", method, "--data-dir", str(data), "-q"])
        assert result.exit_code == 0, result.output
        run_dir = Path(result.stdout.strip().splitlines()[-1])
        runs.append(run_dir)
        for name in ("recipe.yaml", "metrics.jsonl", "best.pt", "last.pt", "summary.json"):
            assert (run_dir / name).is_file(), name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["method"] == method and summary["best_epoch"] == 1
        assert set(summary["test"]) == {"left", "right"}

    result = runner.invoke(app, ["eval", str(runs[1]), "--split", "test", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((runs[1] / "eval-test-best.json").read_text())
    summary = json.loads((runs[1] / "summary.json").read_text())
    for task in ("left", "right"):  # eval recomputes exactly what training logged at the best epoch
        assert abs(evaluated["metrics"][task]["accuracy"] - summary["test"][task]["accuracy"]) < 1e-9

    result = runner.invoke(app, ["compare", str(tmp_path / "results"), "--format", "json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)["multifashion-methods"]["rows"]
    assert sorted(row["method"] for row in table) == ["mgda-ub", "uniform"]
    uniform = next(row for row in table if row["method"] == "uniform")
    assert uniform["× uniform"] == 1.0
