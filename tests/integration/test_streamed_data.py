"""`data.placement: stream`: batches read ahead from the memory-mapped prepared files in a background thread are
the in-memory ones, bit for bit (several epochs, mid-epoch starts, sharded rows), a streamed training equals a
device one, resumes bitwise, stops its thread however the epoch ends, and a reader error is one error line."""

from __future__ import annotations

import copy
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data import stream
from mtlcli.data.device import DeviceSplit, EpochPlan
from mtlcli.data.store import load_prepared, write_prepared
from mtlcli.data.stream import StreamedSplit
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.errors import RecipeError
from mtlcli.recipe import validate
from mtlcli.training import Trainer, TrainingInterrupted, load_checkpoint
from mtlcli.training.build import device_splits, load_dataset, training_steps
from tests.conftest import load_shipped_recipe
from tests.integration._reliability import assert_same_run, recipe, signal_at_step, trainer

runner = CliRunner()
# (recipe, image height, samples per split): 40 class labels; segmentation + depth + normals with NaN pixels
DATASETS = {"celeba": (32, {"train": 13, "val": 3, "test": 3}), "nyuv2": (96, {"train": 7, "val": 2, "test": 2})}


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mtl-stream" and t.is_alive()]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random CelebA and NYUv2 stand-ins written as prepared datasets (.npy files, read back memory-mapped)."""
    root = tmp_path_factory.mktemp("streamed")
    for name, (size, counts) in DATASETS.items():
        data = synthetic_dataset(name, size=size, seed=3, counts=counts)
        splits = {split: {"images": data.images[split], **data.targets[split]} for split in counts}
        write_prepared(root, name, splits, {k: v for k, v in data.meta.items() if k != "synthetic"})
    return root


def placed(name: str, data: Path, placement: str) -> dict[str, DeviceSplit]:
    raw = copy.deepcopy(load_shipped_recipe(name))
    raw["data"].update(dir=str(data), size=DATASETS[name][0], placement=placement)
    raw["train"]["device"] = "cpu"
    r = validate(raw)
    return device_splits(r, load_dataset(r), torch.device("cpu"))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes (NaN pixels included)."""
    same_bytes = torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    return a.dtype == b.dtype and a.shape == b.shape and same_bytes


def assert_same_batches(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert same_bits(x, ex)
        assert y.keys() == ey.keys()
        assert all(same_bits(y[k], ey[k]) for k in y)


@pytest.mark.parametrize("name", list(DATASETS))
def test_streamed_batches_are_the_in_memory_ones_for_several_epochs(prepared: Path, name: str) -> None:
    device, streamed = placed(name, prepared, "device")["train"], placed(name, prepared, "stream")["train"]
    assert type(device) is DeviceSplit and isinstance(streamed, StreamedSplit)
    n, batch = len(device), 3
    steps = training_steps(n, batch)
    generator = torch.Generator().manual_seed(0)
    for _epoch in range(3):
        perm = torch.randperm(n, generator=generator)
        for shard, start in ((lambda i: i, 0), (lambda i: i, 2), (lambda i: i[1::2], 1)):  # a mid-epoch start, rank 1 of 2
            with device.feed(EpochPlan(perm, batch, steps, start=start, shard=shard)) as feed:
                expected = list(feed)
            with streamed.feed(EpochPlan(perm, batch, steps, start=start, shard=shard)) as feed:
                got = list(feed)
            assert len(got) == steps - start
            assert_same_batches(got, expected)
    x, y = streamed.batch(slice(1, 3))  # evaluation gathers on demand
    ex, ey = device.batch(slice(1, 3))
    assert_same_batches([(x, y)], [(ex, ey)])
    assert not readers()


def test_the_reader_stops_when_the_epoch_is_left_early(prepared: Path) -> None:
    split = placed("celeba", prepared, "stream")["train"]
    perm = torch.randperm(len(split))
    with split.feed(EpochPlan(perm, 2, training_steps(len(split), 2))) as feed:
        next(feed)
        assert len(readers()) == 1  # reading ahead, blocked on the full queue
    assert not readers()


def test_auto_is_device_on_the_cpu_and_a_bad_placement_is_one_problem(prepared: Path) -> None:
    assert type(placed("celeba", prepared, "auto")["train"]) is DeviceSplit
    raw = copy.deepcopy(load_shipped_recipe("celeba"))
    raw["data"]["placement"] = "gpu"
    with pytest.raises(RecipeError) as info:
        validate(raw)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("data.placement")


def test_cli_training_streamed_equals_device_bitwise(tiny_recipe, write_recipe) -> None:
    runs = []
    for placement in ("device", "stream"):
        raw = copy.deepcopy(tiny_recipe)
        raw["data"]["placement"] = placement
        raw["output"]["dir"] += f"-{placement}"
        result = runner.invoke(app, ["train", str(write_recipe(raw, f"{placement}.yaml")), "-q"])
        assert result.exit_code == 0, result.output
        runs.append(Path(result.stdout.strip().splitlines()[-1]))
    assert_same_run(*runs)
    assert not readers()


def test_streamed_mid_epoch_resume_equals_uninterrupted(data_dir, tmp_path) -> None:
    raw = recipe(data_dir, tmp_path / "out", epochs=2)  # 4 steps per epoch
    raw["data"]["placement"] = "device"
    reference = trainer(raw).run()
    raw["data"]["placement"] = "stream"
    first = trainer(raw)
    assert isinstance(first.splits["train"], StreamedSplit)
    signal_at_step(first, 6, signal.SIGTERM)  # epoch 2, batch 2: the reader was ahead, and restarts from batch 3
    with pytest.raises(TrainingInterrupted, match="epoch 2, batch 2"):
        first.run()
    assert not readers()
    assert first.run_dir is not None
    resumed = Trainer.resume(first.run_dir, show_progress=False)
    resumed.run()
    assert_same_run(reference, first.run_dir)


def test_a_reader_error_is_one_error_line(tiny_recipe, write_recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = stream.gather

    def failing(array: torch.Tensor, index: torch.Tensor, pin: bool) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2:  # the second batch's images (one images and one labels gather per batch)
            raise OSError(5, "Input/output error")
        return real(array, index, pin)

    monkeypatch.setattr(stream, "gather", failing)
    tiny_recipe["data"]["placement"] = "stream"
    result = runner.invoke(app, ["train", str(write_recipe(tiny_recipe)), "-q"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert "reading training batch 2 from" in result.output and "Input/output error" in result.output
    assert not readers()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_to_cuda_equals_device_and_pins(prepared: Path) -> None:
    cuda = torch.device("cuda")
    for name, (size, _counts) in DATASETS.items():
        raw = copy.deepcopy(load_shipped_recipe(name))
        raw["data"].update(dir=str(prepared), size=size)
        splits = {}
        for placement in ("device", "stream"):
            raw["data"]["placement"] = placement
            r = validate(copy.deepcopy(raw))
            splits[placement] = device_splits(r, load_dataset(r), cuda)["train"]
        assert splits["device"].images.is_cuda and not splits["stream"].images.is_cuda
        n = len(splits["device"])
        perm = torch.randperm(n, device=cuda)
        batches = {}
        for placement, split in splits.items():
            with split.feed(EpochPlan(perm, 2, training_steps(n, 2))) as feed:
                batches[placement] = [(x.cpu(), {k: v.cpu() for k, v in y.items()}) for x, y in feed]
        assert_same_batches(batches["stream"], batches["device"])
    assert stream.gather(torch.zeros(4, 2), torch.tensor([1, 0]), True).is_pinned()
    assert not readers()


def test_prepared_stand_ins_are_memory_mapped(prepared: Path) -> None:
    """What the tests above stream from: the files on disk, not arrays in memory."""
    data = load_prepared(prepared, "nyuv2")
    assert isinstance(data.images["train"], np.memmap) and all(isinstance(a, np.memmap) for a in data.targets["train"].values())


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_training_on_cuda_equals_device(data_dir, tmp_path, restore_determinism) -> None:
    """The step waits for the side stream's copies: a batch read before its copy ended would train otherwise."""
    runs = []
    for placement in ("device", "stream"):
        raw = recipe(data_dir, tmp_path / placement, epochs=2, device="cuda", deterministic=True)
        raw["data"]["placement"] = placement
        t = trainer(raw)
        assert isinstance(t.splits["train"], StreamedSplit) == (placement == "stream")
        runs.append(t.run())
    a, b = (load_checkpoint(run / "last.pt") for run in runs)
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-5, atol=1e-6)
    assert not readers()
