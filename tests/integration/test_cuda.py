"""CUDA paths (skipped without a GPU): training on the device, device-side solver, step timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.methods.min_norm import min_norm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
runner = CliRunner()


def test_frank_wolfe_runs_on_the_gpu_and_matches_the_exact_solver() -> None:
    jac = torch.randn(6, 50, device="cuda", dtype=torch.float64)
    gram = jac @ jac.T
    fw = min_norm(gram, solver="frank-wolfe", max_iter=5000, tol=1e-12)
    exact = min_norm(gram)
    assert fw.device.type == "cuda" and exact.device.type == "cuda"
    assert float(fw @ gram @ fw) <= float(exact @ gram @ exact) * (1 + 1e-3)


@pytest.mark.parametrize("method", ["uniform", "mgda-ub"])
def test_train_on_cuda_is_deterministic_per_seed(tiny_recipe, write_recipe, method: str) -> None:
    recipe = write_recipe(tiny_recipe)
    tests = []
    for _ in range(2):
        result = runner.invoke(app, ["train", str(recipe), "--method", method, "--device", "cuda", "-q"])
        assert result.exit_code == 0, result.output
        run = Path(result.stdout.strip().splitlines()[-1])
        summary = json.loads((run / "summary.json").read_text())
        assert summary["device"].startswith("cuda") and summary["step_seconds_median"] > 0
        tests.append(summary["test"])
    assert tests[0] == tests[1]
