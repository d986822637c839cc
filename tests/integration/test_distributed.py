"""Data-parallel training with torchrun (gloo on the CPU): 2 processes are the same algorithm as 1.

Each 2-process run is a real `torchrun --nproc-per-node 2 -m mtlcli train ...`, or, for the other methods of
`distributed.SUPPORTED`, one torchrun job that trains them one after the other (train_many.py: one launch for
all); the 1-process references run in this process. Dropout is off so that both draw nothing at random beyond
the shared permutation.
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

from mtlcli import distributed
from mtlcli.cli import app
from mtlcli.methods.registry import REGISTRY
from mtlcli.training import load_checkpoint
from tests.conftest import ROOT, load_shipped_recipe
from tests.integration.train_many import train_many

runner = CliRunner()
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def write_tiny_recipe(data_dir: Path, where: Path) -> Path:
    """Tiny multifashion: 108 training images in batches of 32 (4 steps, the last of 12 rows), dropout off."""
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    raw["data"]["dir"] = str(data_dir)
    raw["model"]["dropout"] = 0.0
    raw["train"].update(epochs=1, batch_size=32, eval_batch_size=64, device="cpu")
    raw["output"]["dir"] = str(where / "results")
    path = where / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def recipe_path(data_dir: Path, tmp_path: Path) -> Path:
    return write_tiny_recipe(data_dir, tmp_path)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def torchrun(nproc: int, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    command = [*LAUNCH, f"--nproc-per-node={nproc}", "-m", "mtlcli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment(**env), timeout=240, check=False)


def run_dir_hint(stderr: str) -> str:
    """The run directory named by a stopped run's `progress saved in DIR/last.pt`."""
    text = " ".join(stderr.split())
    return text.split("progress saved in ", 1)[1].split(" ", 1)[0].removesuffix("/last.pt")


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


def test_two_processes_equal_one_from_the_command_line(recipe_path: Path, tmp_path: Path, monkeypatch) -> None:
    """`torchrun -m mtlcli train` itself (uniform); every method is compared in one launch below (MANY)."""
    args = [str(recipe_path), "--method", "uniform"]
    single = one_process(args, monkeypatch, MTL_STEP_TRACE=str(tmp_path / "one.jsonl"))
    result = torchrun(2, [*args, "-q"], MTL_STEP_TRACE=str(tmp_path / "two.jsonl"), MTL_DEBUG_DISTRIBUTED="1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes" in result.stderr and result.stderr.count("epoch 1/1") == 1  # rank 0 alone speaks
    one, two = weights(tmp_path / "one.jsonl"), weights(tmp_path / "two.jsonl")
    assert len(one) == len(two) == 4
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=0, atol=1e-6)
    assert_same_parameters(run_dir_of(result.stdout), single, atol=1e-5)


# every method of SUPPORTED, with the options whose code differs across processes (id: method, --set's, epochs),
# at its defaults otherwise (the shared level where it has one); DWA's weights move from the third epoch, STCH's nadir
# is set after the first (warmup_epoch 0)
MANY = {
    "uniform": ("uniform", [], 1),
    **{f"ub-{n}": ("mgda-ub", [f"method.normalization={n}"], 1) for n in ("none", "l2", "loss", "loss+")},
    "exact": ("mgda", ["method.grads=loop"], 1),
    "single-task": ("single-task", [], 1),
    "static": ("static", ["method.weights=[0.3,0.7]"], 1),
    "imtl-g": ("imtl-g", [], 1),
    "imtl-g-exact": ("imtl-g-exact", [], 1),
    "mgda-unconstrained": ("mgda-unconstrained", [], 1),
    "upgrad": ("upgrad", [], 1),
    "dualproj": ("dualproj", [], 1),
    "cagrad": ("cagrad", [], 1),
    "aligned-mtl": ("aligned-mtl", [], 1),
    "fairgrad": ("fairgrad", [], 1),
    "nash-mtl": ("nash-mtl", [], 1),
    "gradvac": ("gradvac", [], 1),
    "gradvac-layer": ("gradvac", ["method.groups=layer"], 1),
    "config": ("config", [], 1),
    "excess-mtl": ("excess-mtl", [], 1),
    "excess-mtl-z": ("excess-mtl", ["method.level=representation"], 1),
    "uncertainty": ("uncertainty", [], 1),
    "imtl-l": ("imtl-l", [], 1),
    "imtl": ("imtl", [], 1),
    "gradnorm": ("gradnorm", [], 1),
    "gls": ("gls", [], 1),
    "dwa": ("dwa", [], 3),
    "rlw": ("rlw", [], 1),
    "rlw-bernoulli": ("rlw", ["method.distribution=bernoulli"], 1),
    # w_lr 0.001: Adam normalises the logits' gradient, a difference of two tasks' log-loss decreases over one
    # step, which amplifies the float32 rounding of the losses (summed in another order on 2 processes) to 1e-5
    # in the weights after 4 steps at the default 0.025; at 0.001 to 2e-7 (a rank's part of the losses instead
    # of the batch's moves the weights by the batch's noise, far more)
    "famo": ("famo", ["method.w_lr=0.001"], 1),
    "famo-next-batch": ("famo", ["method.update=next-batch"], 1),
    "stch": ("stch", ["method.warmup_epoch=0"], 2),
    "pcgrad": ("pcgrad", [], 1),
    "pcgrad-batched": ("pcgrad", ["method.grads=batched"], 1),
    "graddrop": ("graddrop", [], 1),
    "graddrop-element": ("graddrop", ["method.mask=element"], 1),
    "db-mtl": ("db-mtl", ["method.beta_sigma=0.5"], 1),
    "moco": ("moco", [], 1),
}


# multi-input (an Office-31 miniature, real JPEGs; multilenet without dropout, which has no BatchNorm): each rank takes
# samples r, r + N, ... of every task's batch (mtlcli.training.multi_input.task_shard); 5 images of each task a step,
# so the ranks hold 3 and 2 of each
MULTI_INPUT = {
    "office-uniform": ("uniform", [], 1),
    "office-mgda": ("mgda", [], 1),
    "office-pcgrad": ("pcgrad", [], 1),
    "office-nash-mtl": ("nash-mtl", [], 1),
    "office-famo": ("famo", ["method.w_lr=0.001"], 1),
    "office-dwa": ("dwa", [], 3),
}
MULTI_INPUT_BATCH = 5


def write_office_recipe(where: Path) -> tuple[Path, int]:
    """The shipped office-31 recipe on a prepared miniature at 32x32: its path and the steps of an epoch."""
    from tests.office_fixture import write_office

    data_dir = where / "data"
    source = write_office(where / "office-31-release")
    result = runner.invoke(app, ["prepare", "office-31", "--source", str(source), "--data-dir", str(data_dir), "--size", "32"])
    assert result.exit_code == 0, result.output
    raw = yaml.safe_load((ROOT / "recipes" / "office-31.yaml").read_text())
    raw["data"].update(dir=str(data_dir), size=32)
    raw["model"] = {"encoder": "multilenet", "dropout": 0.0}
    raw["train"].update(epochs=1, batch_size=MULTI_INPUT_BATCH, eval_batch_size=16, device="cpu")
    raw["output"]["dir"] = str(where / "results")
    path = where / "office.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    meta = json.loads((data_dir / "office-31" / "meta.json").read_text())
    return path, max(counts["train"] for counts in meta["domain_counts"].values()) // MULTI_INPUT_BATCH


def test_every_registered_method_runs_on_several_processes_or_says_why_not() -> None:
    assert set(distributed.SUPPORTED) | set(distributed.REFUSED) == set(REGISTRY)
    assert not set(distributed.SUPPORTED) & set(distributed.REFUSED)
    tested = {method for method, _, _ in MANY.values()}
    assert set(distributed.SUPPORTED) <= tested  # each is checked against one process below


@pytest.fixture(scope="module")
def many(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, int]]:
    """Every case of MANY and MULTI_INPUT on 2 processes (one torchrun launch) and on 1 (in this process):
    {id: (one, two, steps)}, the directories of the case's run and trace and the steps of its epochs."""
    root = tmp_path_factory.mktemp("many")
    recipe = write_tiny_recipe(data_dir, root)
    office, office_steps = write_office_recipe(root / "office")
    table = {name: (recipe, 4, case) for name, case in MANY.items()}
    table.update({name: (office, office_steps, case) for name, case in MULTI_INPUT.items()})
    cases = {nproc: [] for nproc in (1, 2)}
    for name, (path, _, (method, sets, epochs)) in table.items():
        for nproc, out in cases.items():
            where = root / f"{name}-{nproc}"
            where.mkdir()
            out.append(
                {
                    "recipe": str(path), "method": method, "sets": sets, "epochs": epochs, "out": str(where / "results"),
                    "trace": str(where / "trace.jsonl"), "run_file": str(where / "run.txt"),
                }
            )  # fmt: skip
    (root / "two.json").write_text(json.dumps(cases[2]))
    command = [*LAUNCH, "--nproc-per-node=2", str(ROOT / "tests" / "integration" / "train_many.py"), str(root / "two.json")]
    launched = subprocess.Popen(  # runs while the 1-process references train here
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(MTL_DEBUG_DISTRIBUTED="1")
    )
    try:
        train_many(cases[1])
        _, stderr = launched.communicate(timeout=600)
    finally:
        if launched.poll() is None:
            launched.kill()
    assert launched.returncode == 0, stderr[-5000:]
    return {name: (root / f"{name}-1", root / f"{name}-2", steps * case[2]) for name, (_, steps, case) in table.items()}


@pytest.mark.parametrize("name", [*MANY, *MULTI_INPUT])
def test_every_method_on_two_processes_equals_one(many: dict[str, tuple[Path, Path, int]], name: str) -> None:
    one, two, steps = many[name]
    expected, got = weights(one / "trace.jsonl"), weights(two / "trace.jsonl")
    assert len(expected) == len(got) == steps
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-6)
    run_one, run_two = (Path((d / "run.txt").read_text()) for d in (one, two))
    assert_same_parameters(run_two, run_one, atol=1e-5)
    # the method's own state (learned scales, EMAs, tracked gradients, logits, generators) too
    state_one, state_two = (load_checkpoint(r / "last.pt")["method"] for r in (run_one, run_two))
    assert state_one.keys() == state_two.keys()
    for key in state_one:
        if isinstance(state_one[key], torch.Tensor):
            torch.testing.assert_close(state_two[key], state_one[key], rtol=0, atol=1e-5, msg=key)
    if name in MULTI_INPUT:  # evaluation too: each task's accuracy on its own images, summed over the ranks' batches
        rec_one, rec_two = (json.loads((r / "metrics.jsonl").read_text().splitlines()[-1]) for r in (run_one, run_two))
        for split in ("val", "test"):
            for task, values in rec_one[split].items():
                assert abs(rec_two[split][task]["accuracy"] - values["accuracy"]) < 1e-9, (split, task)


def test_a_stopped_two_process_run_resumes_on_two_or_on_one(recipe_path: Path, tmp_path: Path, monkeypatch) -> None:
    args = [str(recipe_path), "--method", "mgda-ub", "--epochs", "2", "--set", "method.normalization=loss+"]
    reference = one_process(args, monkeypatch)
    # SIGTERM reaches rank 0 alone before step 6 (epoch 2, batch 2): rank 1 must stop at the same step
    stopped = torchrun(2, [*args, "-q"], MTL_SIGNAL_AT_STEP="6")
    assert stopped.returncode != 0
    assert "training stopped by SIGTERM at epoch 2, batch 1" in stopped.stderr, stopped.stderr[-3000:]
    assert "--resume" in stopped.stderr and stopped.stderr.count("Error: training stopped") == 1
    assert f"(any N), or `mtl train --resume {run_dir_hint(stopped.stderr)} --nproc N`" in " ".join(stopped.stderr.split())
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


def test_a_multi_input_run_stopped_mid_epoch_on_two_processes_resumes_on_one(tmp_path: Path, monkeypatch) -> None:
    """Each task's order and place are one process's (the plan does not depend on N): the run goes on elsewhere."""
    office, steps = write_office_recipe(tmp_path)
    args = [str(office), "--method", "mgda", "--epochs", "2"]
    reference = one_process(args, monkeypatch)
    stopped = torchrun(2, [*args, "-q"], MTL_SIGNAL_AT_STEP=str(steps + 2))
    assert stopped.returncode != 0
    assert "training stopped by SIGTERM at epoch 2, batch 1" in stopped.stderr, stopped.stderr[-3000:]
    run = next(p for p in (tmp_path / "results").glob("mgda-*") if p != reference)
    result = runner.invoke(app, ["train", "--resume", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert_same_parameters(run, reference, atol=1e-5)


def test_a_method_that_does_not_run_across_processes_is_refused(recipe_path: Path) -> None:
    command = [sys.executable, "-m", "mtlcli", "train", str(recipe_path), "--method", "grid", "--nproc", "2", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=240, check=False)
    assert result.returncode == 1
    assert result.stderr.count("grid trains one run per point: launch it on one process") == 1  # rank 0 speaks for both
    # the launcher (mtlcli.cli.launch) adds no traceback, failure table or log lines of its own
    assert "Traceback" not in result.stderr and "exitcode" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("Error: ") == 1


def test_too_small_a_multi_input_batch_for_the_processes_is_one_error(tmp_path: Path) -> None:
    office, _ = write_office_recipe(tmp_path)
    command = [sys.executable, "-m", "mtlcli", "train", str(office), "--nproc", "2", "--set", "train.batch_size=1", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=240, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: 2 processes need at least 2 images of every task in a step; train.batch_size is 1",
        "Hint: raise train.batch_size (images of each task in a step), or use fewer processes",
    ]
    assert not (tmp_path / "results").exists()


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
