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


def bf16_accepted() -> bool:
    from mtlcli.recipe import TrainConfig

    return "precision" in TrainConfig.model_fields


def gpu_sh(out: Path, data_dir: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTL_")}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **env_vars)
    args = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--out", str(out), "--data-dir", str(data_dir)]
    return subprocess.run(args, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300, check=False)


def table_rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]


def test_gpu_script_dry_run_writes_its_table(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = gpu_sh(out, data_dir)
    assert done.returncode == 0, done.stderr
    table = (out / "gpu.md").read_text()
    assert done.stdout.strip().endswith("gpu.md") and "--dry (CPU, tiny sizes" in table
    assert ("no train.precision in this build" in table) != bf16_accepted()
    rows = table_rows(table)
    header, body = rows[0], rows[1:]
    assert header[:5] == ["part", "setting", "method", "precision", "ms/step"]
    tests = [r for r in body if r[0] == "CUDA-only tests"]
    assert len(tests) == 1 and tests[0][-1].startswith("ok: ") and "skipped" in tests[0][-1]  # no CUDA here
    for dataset, shape, tasks in (("celeba", "32x32", 40), ("cityscapes", "16x32", 3), ("nyuv2", "96x128", 3)):
        mine = [r for r in body if r[0] == "step cost" and r[1].startswith(f"{dataset} {shape},")]
        fp32 = [r for r in mine if r[3] == "fp32"]
        assert [r[2] for r in fp32] == METHODS, table
        assert all(r[-1] == "ok" and float(r[4]) > 0 and f"T = {tasks}" in r[1] for r in fp32), table
        bf16 = [r for r in mine if r[3] == "bf16"]  # with train.precision (cityscapes only in the dry run)
        assert all(r[-1] == "ok" or r[-1].startswith("not bf16: the ablation ran fp32") for r in bf16), table
        assert len(bf16) == (len(METHODS) if dataset == "cityscapes" and bf16_accepted() else 0), table
        payload = json.loads(next((out / "ablate" / f"{dataset}-fp32").glob("ablation-*.json")).read_text())
        uniform = next(m for m in payload["methods"] if m["label"] == "uniform")
        assert fp32[0][4] == f"{uniform['median_ms']:.1f}"  # the table shows what the ablation measured
    (training,) = [r for r in body if r[0] == "training"]
    assert training[2] == "mgda-ub" and training[-1].startswith("finished: 1 epochs, test accuracy at epoch 1: left ")


def test_parts_the_time_budget_leaves_no_room_for_are_rows_that_say_so(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    out.mkdir()
    (out / "gpu.md").write_text("an old table")
    (out / "keep.txt").write_text("not the script's")
    done = gpu_sh(out, data_dir, BUDGET="0")
    assert done.returncode == 0, done.stderr
    body = table_rows((out / "gpu.md").read_text())[1:]
    assert len(body) == 1 + 3 + bf16_accepted() + 1  # the tests, one row per ablation part, the training
    assert all(row[-1] == "not run: the time budget was spent" for row in body), body
    assert (out / "keep.txt").read_text() == "not the script's"
