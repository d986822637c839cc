"""Data-parallel training with torchrun (gloo on the CPU): 2 processes are the same algorithm as 1.

Each 2-process run is a real `torchrun --nproc-per-node 2 -m mtlcli train ...`; the 1-process reference
runs in this process. Dropout is off so that both draw nothing at random beyond the shared permutation.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.training import load_checkpoint
from tests.conftest import ROOT, load_shipped_recipe

runner = CliRunner()
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


@pytest.fixture
def recipe_path(data_dir: Path, tmp_path: Path) -> Path:
    """Tiny multifashion: 108 training images in batches of 32 (4 steps, the last of 12 rows), dropout off."""
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    raw["data"]["dir"] = str(data_dir)
    raw["model"]["dropout"] = 0.0
    raw["train"].update(epochs=1, batch_size=32, eval_batch_size=64, device="cpu")
    raw["output"]["dir"] = str(tmp_path / "results")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def torchrun(nproc: int, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    command = [*LAUNCH, f"--nproc-per-node={nproc}", "-m", "mtlcli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment(**env), timeout=240, check=False)


def run_dir_of(output: str) -> Path:
    return Path(output.strip().splitlines()[-1])


def one_process(args: list[str], monkeypatch: pytest.MonkeyPatch, **env: str) -> Path:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = runner.invoke(app, ["train", *args, "-q"])
    assert result.exit_code == 0, result.output
    for key in env:
        monkeypatch.delenv(key)
    return run_dir_of(result.stdout)


def weights(trace: Path) -> list[list[float]]:
    return [json.loads(line)["weights"] for line in trace.read_text().splitlines()]


def assert_same_parameters(a: Path, b: Path, atol: float) -> None:
    ma, mb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert ma.keys() == mb.keys()
    for name in ma:
        torch.testing.assert_close(ma[name], mb[name], rtol=0, atol=atol, msg=name)


CASES = [
    ("uniform", []),
    *(("mgda-ub", ["--set", f"method.normalization={n}"]) for n in ("none", "l2", "loss", "loss+")),
    ("mgda", ["--set", "method.grads=loop"]),
    ("config", []),
]
IDS = ["uniform", "ub-none", "ub-l2", "ub-loss", "ub-loss+", "exact", "config"]


@pytest.mark.parametrize(("method", "extra"), CASES, ids=IDS)
def test_two_processes_equal_one(recipe_path: Path, tmp_path: Path, monkeypatch, method: str, extra: list[str]) -> None:
    args = [str(recipe_path), "--method", method, *extra]
    single = one_process(args, monkeypatch, MTL_STEP_TRACE=str(tmp_path / "one.jsonl"))
    result = torchrun(2, [*args, "-q"], MTL_STEP_TRACE=str(tmp_path / "two.jsonl"), MTL_DEBUG_DISTRIBUTED="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr and result.stderr.count("epoch 1/1") == 1  # rank 0 alone speaks
    one, two = weights(tmp_path / "one.jsonl"), weights(tmp_path / "two.jsonl")
    assert len(one) == len(two) == 4
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=0, atol=1e-6)
    assert_same_parameters(run_dir_of(result.stdout), single, atol=1e-5)


def test_a_stopped_two_process_run_resumes_on_two_or_on_one(recipe_path: Path, tmp_path: Path, monkeypatch) -> None:
    args = [str(recipe_path), "--method", "mgda-ub", "--epochs", "2", "--set", "method.normalization=loss+"]
    reference = one_process(args, monkeypatch)
    # SIGTERM reaches rank 0 alone before step 6 (epoch 2, batch 2): rank 1 must stop at the same step
    stopped = torchrun(2, [*args, "-q"], MTL_SIGNAL_AT_STEP="6")
    assert stopped.returncode != 0
    assert "training stopped by SIGTERM at epoch 2, batch 1" in stopped.stderr, stopped.stderr[-3000:]
    assert "--resume" in stopped.stderr and stopped.stderr.count("Error: training stopped") == 1
    run = next(p for p in (tmp_path / "results").glob("mgda-ub-*") if p != reference)
    other = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run), str(other)], check=True)

    resumed = torchrun(2, ["--resume", str(run), "-q"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_parameters(run, reference, atol=1e-5)
    result = runner.invoke(app, ["train", "--resume", str(other), "-q"])  # the same run on one process
    assert result.exit_code == 0, result.output
    assert_same_parameters(other, reference, atol=1e-5)
    assert [json.loads(line)["epoch"] for line in (other / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_method_that_is_not_exact_across_processes_is_refused(recipe_path: Path) -> None:
    command = [sys.executable, "-m", "mtlcli", "train", str(recipe_path), "--method", "uncertainty", "--nproc", "2", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=240, check=False)
    assert result.returncode == 1
    assert result.stderr.count("method uncertainty does not run on 2 processes") == 1  # rank 0 speaks for both
    assert "Traceback" not in result.stderr.split("uncertainty does not run")[0][-2000:]


def test_a_killed_rank_ends_the_job_instead_of_hanging(recipe_path: Path, tmp_path: Path) -> None:
    command = [*LAUNCH, "--nproc-per-node=2", "-m", "mtlcli", "train", str(recipe_path), "--epochs", "500", "-q"]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
    try:
        deadline = time.monotonic() + 120
        metrics = None
        while time.monotonic() < deadline and metrics is None:
            metrics = next((tmp_path / "results").glob("*/metrics.jsonl"), None) if (tmp_path / "results").exists() else None
            if metrics is not None and not metrics.read_text():
                metrics = None
            time.sleep(0.2)
        assert metrics is not None, "the job never finished an epoch"
        workers = _children(launcher.pid)
        assert len(workers) == 2
        os.kill(max(workers), 9)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "Signal 9" in stderr or "SIGKILL" in stderr or "exitcode" in stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(child) for child in text)
    return found
