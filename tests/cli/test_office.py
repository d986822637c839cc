"""Multi-input MTL on Office-31 / Office-Home miniatures (real JPEGs in the official layouts): prepare, per-task
batches, one-epoch training (uniform, mgda at the shared-parameter level, nash-mtl, famo), the refusal of
representation-level methods, bad input as one error, the offline ImageNet weights error, mid-epoch resume equal to
no interruption, each rank's share of every task (torchrun: tests/integration/test_distributed.py) and streamed
data equal to data on the device."""

from __future__ import annotations

import copy
import json
import re
import shutil
import signal
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mtlcli.cli import app
from mtlcli.data import office
from mtlcli.data.office import MISSING_LABEL
from mtlcli.errors import DataError
from mtlcli.models import resnet18 as resnet18_module
from mtlcli.models.registry import ResNet18Options
from mtlcli.training.multi_input import TaskStreams
from tests.conftest import ROOT
from tests.integration._reliability import assert_same_run, interrupted_then_resumed, trainer
from tests.office_fixture import CLASSES, LAYOUT, class_dir, write_office

runner = CliRunner()
SIZE = 32
BATCH = 4


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def one_error(code: int, output: str) -> str:
    assert code == 1 and "Traceback" not in output and len(re.findall(r"^Error: ", output, re.MULTILINE)) == 1, output
    return " ".join(output.split())


def prepare(tmp_path: Path, dataset: str = "office-31") -> Path:
    data_dir = tmp_path / "data"
    source = write_office(tmp_path / dataset, dataset)
    code, output = invoke("prepare", dataset, "--source", str(source), "--data-dir", str(data_dir), "--size", str(SIZE))
    assert code == 0, output
    return data_dir


def tiny(tmp_path: Path, data_dir: Path, dataset: str = "office-31", method: str = "uniform", **options: Any) -> dict[str, Any]:
    """The shipped recipe at 32x32, no ImageNet download, batches of 4 per task, one epoch on the CPU."""
    raw = yaml.safe_load((ROOT / "recipes" / f"{dataset}.yaml").read_text())
    raw["data"].update({"dir": str(data_dir), "size": SIZE})
    raw["model"].update({"pretrained": False, "hidden": 8})
    raw["method"] = {"name": method, **options}
    raw["train"].update({"epochs": 1, "batch_size": BATCH, "eval_batch_size": 16, "device": "cpu"})
    raw["output"]["dir"] = str(tmp_path / "results")
    return raw


def write(tmp_path: Path, raw: dict[str, Any], name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("dataset", ["office-31", "office-home"])
def test_prepare_writes_each_domains_rows_split_60_20_20(tmp_path: Path, dataset: str) -> None:
    data_dir = prepare(tmp_path, dataset)
    meta = json.loads((data_dir / dataset / "meta.json").read_text())
    domains = LAYOUT[dataset][0]
    assert meta["input"] == "multi" and meta["classes"] == sorted(CLASSES) and len(meta["tasks"]) == len(domains)
    total = {"train": 0, "val": 0, "test": 0}
    for t, domain in enumerate(domains):
        per_class = 10 + t  # tests/office_fixture.py
        counts = meta["domain_counts"][meta["tasks"][t]["name"]]
        n_train, n_val = round(0.6 * per_class), round(0.2 * per_class)
        assert counts == {"train": 3 * n_train, "val": 3 * n_val, "test": 3 * (per_class - n_train - n_val)}, domain
        for split in total:
            total[split] += counts[split]
    for split, n in total.items():
        images = np.load(data_dir / dataset / f"{split}_images.npy")
        labels = np.load(data_dir / dataset / f"{split}_labels.npy")
        assert images.shape == (n, SIZE, SIZE, 3) and images.dtype == np.uint8 and labels.shape == (n, len(domains))
        assert meta["counts"][split] == n
        assert ((labels != MISSING_LABEL).sum(axis=1) == 1).all()  # every image belongs to one domain's task
        assert set(np.unique(labels[labels >= 0])) == {0, 1, 2}
    code, output = invoke("prepare", dataset, "--source", str(tmp_path / dataset), "--data-dir", str(data_dir),
                          "--size", str(SIZE))  # fmt: skip
    assert code == 0 and "already" in output.lower(), output


def test_task_streams_take_a_full_batch_of_every_task_and_restart_each_on_its_own() -> None:
    rows = [torch.arange(0, 10), torch.arange(10, 16), torch.arange(16, 30)]
    streams = TaskStreams(rows)
    steps = streams.steps(4)
    assert steps == 3  # the largest task's full batches (drop_last, as LibMTL)
    g = torch.Generator().manual_seed(0)
    perm, bounds = streams.plan(4, steps, g)
    assert bounds == [0, 12, 24, 36]
    for b in range(steps):
        batch = perm[bounds[b] : bounds[b + 1]]
        owner = torch.bucketize(batch, torch.tensor([10, 16]), right=True)
        assert owner.tolist() == [0, 1, 2] * 4  # interleaved: halves and shards hold every task in proportion
    task0 = [set(perm[bounds[b] : bounds[b + 1]][0::3].tolist()) for b in range(steps)]
    assert len(task0[0] | task0[1]) == 8  # one pass over task 0's 10 rows: two disjoint batches, then a new pass
    task2 = [set(perm[bounds[b] : bounds[b + 1]][2::3].tolist()) for b in range(steps)]
    assert len(task2[0] | task2[1] | task2[2]) == 12  # task 2's 14 rows: three disjoint batches in one pass
    assert streams.cursors == [1, 1, 3]  # tasks 0 and 1 restarted on their own; task 2 went on
    state = copy.deepcopy(streams.state_dict())
    again = TaskStreams(rows)
    again.load_state_dict(state)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = streams.plan(4, steps, g1), again.plan(4, steps, g2)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_one_epoch_trains_each_task_on_its_own_images_and_compares(tmp_path: Path) -> None:
    data_dir = prepare(tmp_path)
    meta = json.loads((data_dir / "office-31" / "meta.json").read_text())
    methods = (("uniform", {}), ("mgda", {"level": "shared"}), ("nash-mtl", {}), ("famo", {}))  # shared level, weightings
    for method, options in methods:
        code, output = invoke("train", str(write(tmp_path, tiny(tmp_path, data_dir, method=method, **options))), "-q")
        assert code == 0, output
    runs = sorted((tmp_path / "results").iterdir())
    assert len(runs) == len(methods)
    for run in runs:
        (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert record["steps"] == max(c["train"] for c in meta["domain_counts"].values()) // BATCH
        accuracies = [record[split][task]["accuracy"] for split in ("val", "test") for task in ("amazon", "dslr", "webcam")]
        assert all(0 <= a <= 100 for a in accuracies)
    code, output = invoke("eval", str(runs[0]), "--split", "test")
    assert code == 0 and "webcam" in output, output
    code, output = invoke("compare", str(tmp_path / "results"))
    assert code == 0 and "dslr" in output and all(method in output for method, _ in methods), output


def test_office_home_trains_its_four_domains(tmp_path: Path) -> None:
    data_dir = prepare(tmp_path, "office-home")
    code, output = invoke("train", str(write(tmp_path, tiny(tmp_path, data_dir, "office-home", "mgda", level="shared"))), "-q")
    assert code == 0, output
    (run,) = (tmp_path / "results").iterdir()
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(record["test"]) == ["art", "clipart", "product", "real_world"]
    assert sorted(record["alphas"]) == ["art", "clipart", "product", "real_world"]
    assert record["steps"] == (3 * round(0.6 * 13)) // BATCH  # Real_World, the largest domain: 13 images a class


def test_ablate_synthetic_times_a_batch_of_every_task_and_skips_the_representation_level(tmp_path: Path) -> None:
    raw = tiny(tmp_path, tmp_path / "none")
    raw["data"] = {"name": "office-31", "size": SIZE}
    code, output = invoke("ablate", str(write(tmp_path, raw)), "--synthetic", "--methods", "uniform,mgda-ub,mgda",
                          "--steps", "1", "--warmup", "0", "--out", str(tmp_path / "ablation"), "--batch-size", "2")  # fmt: skip
    assert code == 0, output
    (payload,) = [json.loads(p.read_text()) for p in (tmp_path / "ablation").glob("*.json")]
    assert [row["method"] for row in payload["methods"]] == ["uniform", "mgda"]
    assert payload["tasks"] == ["amazon", "dslr", "webcam"]
    (skipped,) = payload["skipped"]
    assert skipped.startswith("mgda-ub: skipped, method mgda-ub works at level representation")


@pytest.mark.parametrize(
    ("method", "options", "hint"),
    [
        ("mgda-ub", {}, "use method mgda (level shared)"),
        ("upgrad", {"level": "representation"}, "set method.options.level: shared"),
        ("graddrop", {}, "choose a method at the shared-parameter level"),
    ],
)
def test_representation_level_methods_are_refused_with_one_line(
    tmp_path: Path, method: str, options: dict[str, Any], hint: str
) -> None:
    data_dir = prepare(tmp_path)
    code, output = invoke("train", str(write(tmp_path, tiny(tmp_path, data_dir, method=method, **options))), "-q")
    text = one_error(code, output)
    assert f"method {method} works at level representation" in text and "diagonal Gram matrix" in text and hint in text
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def _missing_domain(root: Path) -> Path:
    shutil.rmtree(root / "dslr")
    return root / "dslr" / "images"


def _class_in_one_domain(root: Path) -> Path:
    extra = class_dir(root, "office-31", "webcam", "zebra")
    extra.mkdir()
    shutil.copy(next(class_dir(root, "office-31", "webcam", "bike").iterdir()), extra / "frame_0000.jpg")
    return class_dir(root, "office-31", "amazon", "zebra")


def _bad_jpeg(root: Path) -> Path:
    path = class_dir(root, "office-31", "amazon", "bike") / "frame_0003.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return path


def _empty_class(root: Path) -> Path:
    folder = class_dir(root, "office-31", "dslr", "calculator")
    for path in folder.iterdir():
        path.unlink()
    return folder


@pytest.mark.parametrize("damage", [_missing_domain, _class_in_one_domain, _bad_jpeg, _empty_class])
def test_bad_release_is_one_error_naming_it_and_leaves_nothing_train_accepts(tmp_path: Path, damage: Any) -> None:
    source = write_office(tmp_path / "office-31")
    named = damage(source)
    data_dir = tmp_path / "data"
    code, output = invoke("prepare", "office-31", "--source", str(source), "--data-dir", str(data_dir), "--size", str(SIZE))
    text = one_error(code, output)
    assert str(named) in output.replace("\n", "") or str(named) in text, output
    assert not (data_dir / "office-31").exists() and not list(data_dir.glob(".office-31.tmp-*"))
    code, output = invoke("train", str(write(tmp_path, tiny(tmp_path, data_dir))), "-q")
    assert "not prepared" in one_error(code, output)


def test_pretrained_offline_is_one_error_saying_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_args: object, **_kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(resnet18_module.IMAGENET_WEIGHTS), "get_state_dict", offline)
    with pytest.raises(DataError) as info:
        resnet18_module.build_encoder((3, SIZE, SIZE), ResNet18Options(pretrained=True))
    where = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert resnet18_module.imagenet_weights_path() == where
    assert "cannot download the ResNet-18 ImageNet weights" in info.value.message
    assert str(where) in (info.value.hint or "") and "pretrained: false" in (info.value.hint or "")


def test_pretrained_loads_torchvisions_weights_strictly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import resnet18

    reference = resnet18(weights=None).state_dict()
    monkeypatch.setattr(type(resnet18_module.IMAGENET_WEIGHTS), "get_state_dict", lambda *_a, **_k: reference)
    encoder = resnet18_module.build_encoder((3, SIZE, SIZE), ResNet18Options(pretrained=True))
    assert torch.equal(encoder.state_dict()["stem.0.weight"], reference["conv1.weight"])
    assert torch.equal(encoder.state_dict()["layer4.1.bn2.running_var"], reference["layer4.1.bn2.running_var"])
    with_hidden = resnet18_module.build_encoder((3, SIZE, SIZE), ResNet18Options(pretrained=True, hidden=16))
    assert torch.equal(with_hidden.state_dict()["stem.0.weight"], reference["conv1.weight"])
    assert with_hidden.out_features == 16 and with_hidden.last_layer is with_hidden.hidden[0]
    assert with_hidden.hidden[0].bias.eq(0.1).all()  # LibMTL's init of its hidden layer
    assert with_hidden.eval()(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 16)


def test_mid_epoch_interruption_resumes_each_tasks_position_bitwise(tmp_path: Path) -> None:
    data_dir = prepare(tmp_path)
    raw = tiny(tmp_path, data_dir)
    raw["train"]["epochs"] = 2
    raw["output"]["dir"] = str(tmp_path / "reference")
    reference = trainer(raw).run()
    raw["output"]["dir"] = str(tmp_path / "resumed")
    # 5 steps an epoch (the largest domain's 21 training images // 4): stopped after epoch 2, batch 3, where the
    # smaller domains are part-way through their second pass
    resumed, message = interrupted_then_resumed(raw, 5 + 3, signal.SIGTERM)
    assert "SIGTERM at epoch 2, batch 3" in message
    assert_same_run(reference, resumed.run_dir)


@pytest.mark.parametrize(("batch", "world"), [(4, 2), (5, 2), (5, 3), (3, 3)])
def test_each_rank_holds_the_same_share_of_every_tasks_rows(batch: int, world: int) -> None:
    """torchrun: rank r takes samples r, r + N, ... of every task, so its share of each task's rows is its share of
    the batch (what the trainer weighs its masked losses by), B % N != 0 included; the ranks cover the step once."""
    from mtlcli.distributed import Distributed
    from mtlcli.training.multi_input import task_shard

    rows = [torch.arange(0, 9), torch.arange(9, 16), torch.arange(16, 30)]
    streams = TaskStreams(rows)
    perm, bounds = streams.plan(batch, 2, torch.Generator().manual_seed(1))
    for step in range(2):
        index = perm[bounds[step] : bounds[step + 1]]
        seen = []
        for rank in range(world):
            job = Distributed(rank=rank, world=world, local_rank=rank)
            mine = task_shard(job, len(rows))(index)
            share = len(mine) / len(index)
            tasks = torch.bucketize(mine, torch.tensor([9, 16]), right=True)
            for t in range(len(rows)):
                assert int((tasks == t).sum()) / batch == share  # this rank's share of task t's rows
            seen.append(mine)
        assert sorted(torch.cat(seen).tolist()) == sorted(index.tolist())
    assert perm.numel() == 2 * batch * len(rows)
    one = Distributed()
    assert torch.equal(task_shard(one, len(rows))(perm), perm)  # one process: the rows as planned


def test_a_streamed_multi_input_run_equals_a_device_one_and_resumes_bitwise(tmp_path: Path) -> None:
    """data.placement: stream reads each step's batch of every task ahead (mtlcli.data.stream): the same run."""
    data_dir = prepare(tmp_path)
    raw = tiny(tmp_path, data_dir)
    raw["train"]["epochs"] = 2
    raw["output"]["dir"] = str(tmp_path / "device")
    on_device = trainer(raw).run()
    raw["data"]["placement"] = "stream"
    raw["output"]["dir"] = str(tmp_path / "stream")
    streamed = trainer(raw)
    assert type(streamed.splits["train"]).__name__ == "StreamedSplit"
    assert_same_run(on_device, streamed.run())
    raw["output"]["dir"] = str(tmp_path / "resumed")
    resumed, message = interrupted_then_resumed(raw, 5 + 2, signal.SIGTERM)
    assert "SIGTERM at epoch 2, batch 2" in message
    assert_same_run(on_device, resumed.run_dir)


@pytest.mark.parametrize(("dataset", "images"), [("office-31", 4110), ("office-home", 15588)])
def test_libmtls_lists_are_shipped_whole(dataset: str, images: int) -> None:
    listed = office.libmtl_split(dataset)
    assert len(listed) == images  # the releases' image counts
    folders = {path.split("/")[0] for path in listed}
    assert folders == set(LAYOUT[dataset][0])
    if dataset == "office-31":
        assert all(path.split("/")[1] == "images" for path in listed)
    shares = np.array([sum(s == split for s in listed.values()) for split in ("train", "val", "test")]) / images
    assert np.allclose(shares, [0.6, 0.2, 0.2], atol=0.02)


def test_a_release_holding_exactly_libmtls_files_gets_libmtls_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_office(tmp_path / "office-31")
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.jpg"))
    listed = {path: ("train", "train", "val", "test", "train")[i % 5] for i, path in enumerate(files)}
    monkeypatch.setattr(office, "libmtl_split", lambda _name: listed)
    data_dir = tmp_path / "data"
    code, output = invoke("prepare", "office-31", "--source", str(source), "--data-dir", str(data_dir), "--size", str(SIZE))
    assert code == 0, output
    meta = json.loads((data_dir / "office-31" / "meta.json").read_text())
    assert meta["split"].startswith("LibMTL's lists") and "split: LibMTL's lists" in " ".join(output.split())
    for domain in LAYOUT["office-31"][0]:
        mine = [p for p in files if p.startswith(domain + "/")]
        assert meta["domain_counts"][domain] == {s: sum(listed[p] == s for p in mine) for s in ("train", "val", "test")}


def test_another_copy_of_the_release_gets_the_seeded_split_with_a_note(tmp_path: Path) -> None:
    source = write_office(tmp_path / "office-31")
    code, output = invoke("prepare", "office-31", "--source", str(source), "--data-dir", str(tmp_path / "data"), "--size", "32")
    text = " ".join(output.split())
    assert code == 0 and "the release differs from LibMTL's lists" in text, output
    assert re.search(r"\(\d+ listed file\(s\) missing \(first: \S+\), \d+ not listed", text), output
