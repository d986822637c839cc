"""QM9 end to end on a handful of molecules: an interrupted run resumes bitwise, and `torchrun` on 2 processes (each
rank builds the graphs of its rows of the global batch) trains what 1 process trains."""

from __future__ import annotations

import copy
import signal
from pathlib import Path

import pytest
import torch
import yaml

from mtlcli.training import Trainer, TrainingInterrupted
from tests.conftest import ROOT
from tests.integration._reliability import assert_same_run, signal_at_step, trainer
from tests.integration.test_distributed import assert_same_parameters, one_process, run_dir_of, torchrun, weights
from tests.qm9_fixture import molecules, needs_geometric, write_raw

pytestmark = needs_geometric


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtlcli.data import qm9, registry
    from mtlcli.data.registry import PrepareRequest

    root = tmp_path_factory.mktemp("qm9")
    raw = write_raw(root / "raw", molecules(24))  # 23 characterized: 19 to train on, 2 + 2 held out
    qm9.prepare(registry.get("qm9"), PrepareRequest(data_dir=root / "data", sources=[str(raw)]))
    return root / "data"


def recipe(data_dir: Path, out: Path, **train: object) -> dict:
    raw = yaml.safe_load((ROOT / "recipes" / "qm9.yaml").read_text())
    raw["data"]["dir"] = str(data_dir)
    raw["model"]["dim"] = 8
    raw["train"].update({"epochs": 2, "batch_size": 5, "eval_batch_size": 8, "device": "cpu", **train})
    raw["output"]["dir"] = str(out)
    return raw


def test_an_interrupted_qm9_run_resumes_bitwise(data_dir: Path, tmp_path: Path) -> None:
    raw = recipe(data_dir, tmp_path / "out")
    reference = trainer(copy.deepcopy(raw)).run()
    first = trainer(raw)
    signal_at_step(first, 5, signal.SIGTERM)  # epoch 2, batch 1 (4 steps an epoch: 5, 5, 5, 4 molecules)
    with pytest.raises(TrainingInterrupted, match="epoch 2, batch 1"):
        first.run()
    assert first.run_dir is not None
    resumed = Trainer.resume(first.run_dir, show_progress=False)
    resumed.run()
    assert_same_run(reference, resumed.run_dir)


def test_two_processes_shard_the_molecules_and_train_as_one(data_dir: Path, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(data_dir, tmp_path / "results", epochs=1), sort_keys=False))
    args = [str(path), "--method", "mgda-ub"]
    single = one_process(args, monkeypatch, MTL_STEP_TRACE=str(tmp_path / "one.jsonl"))
    result = torchrun(2, [*args, "-q"], MTL_STEP_TRACE=str(tmp_path / "two.jsonl"))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "one.jsonl"), weights(tmp_path / "two.jsonl")
    assert len(one) == len(two) == 4
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=0, atol=1e-5)
    assert_same_parameters(run_dir_of(result.stdout), single, atol=1e-5)
