"""`benchmarks/gpu.sh --dry`: the GPU benchmark's every part runs on the CPU at tiny sizes and its one markdown
table is written from what they measured, so that the script cannot rot before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

METHODS = ["uniform", "mgda-ub", "mgda (grads=loop)", "mgda (grads=batched)", "upgrad", "nash-mtl"]


def test_gpu_script_dry_run_writes_its_table(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTL_")}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    args = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--out", str(out), "--data-dir", str(data_dir)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    table = (out / "gpu.md").read_text()
    assert done.stdout.strip().endswith("gpu.md") and "--dry (CPU, tiny sizes" in table
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert header[:5] == ["part", "setting", "method", "precision", "ms/step"]
    tests = [r for r in body if r[0] == "CUDA-only tests"]
    assert len(tests) == 1 and tests[0][-1].startswith("ok: ") and "skipped" in tests[0][-1]  # no CUDA here
    for dataset, shape, tasks in (("celeba", "32x32", 40), ("cityscapes", "16x32", 3), ("nyuv2", "96x128", 3)):
        mine = [r for r in body if r[0] == "step cost" and r[1].startswith(f"{dataset} {shape},")]
        assert [r[2] for r in mine if r[3] == "fp32"] == METHODS, table
        assert all(r[-1] == "ok" and float(r[4]) > 0 and f"T = {tasks}" in r[1] for r in mine), table
        payload = json.loads(next((out / "ablate" / f"{dataset}-fp32").glob("ablation-*.json")).read_text())
        uniform = next(m for m in payload["methods"] if m["label"] == "uniform")
        assert mine[0][4] == f"{uniform['median_ms']:.1f}"  # the table shows what the ablation measured
    (training,) = [r for r in body if r[0] == "training"]
    assert training[2] == "mgda-ub" and training[-1].startswith("finished: 1 epochs, test accuracy at epoch 1: left ")
