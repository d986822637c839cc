"""Shared fixtures: tiny raw IDX files in the real on-disk format, prepared data and a tiny recipe."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mtlcli.data.idx import write_idx

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = 120
TINY_TEST = 40


def make_raw_dir(
    directory: Path, *, seed: int, n_train: int = TINY_TRAIN, n_test: int = TINY_TEST, compress: bool = True
) -> Path:
    """Write the four IDX files of a tiny MNIST-format dataset (class-dependent blobs, learnable)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose position encodes the class
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
    return directory


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts seeded, single-threaded, with no MTL_* variables leaking in."""
    for key in ("MTL_DATA_DIR", "MTL_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def raw_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    return {"mnist": make_raw_dir(root / "mnist", seed=1), "fashion-mnist": make_raw_dir(root / "fashion", seed=2)}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory, raw_dirs: dict[str, Path]) -> Path:
    """A data dir with tiny multifashion and multimnist prepared (shared by the whole session: read only)."""
    from mtlcli.data.prepare import prepare

    root = tmp_path_factory.mktemp("data")
    prepare("multifashion", data_dir=root, source_dirs={"fashion-mnist": raw_dirs["fashion-mnist"]})
    prepare("multimnist", data_dir=root, source_dirs={"mnist": raw_dirs["mnist"]})
    return root


def load_shipped_recipe(name: str = "multifashion") -> dict[str, Any]:
    return yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())


@pytest.fixture
def tiny_recipe(data_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The shipped multifashion recipe shrunk to seconds: tiny data, 1 epoch, small batches, CPU."""
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    raw["data"]["dir"] = str(data_dir)
    raw["train"].update(epochs=1, batch_size=32, eval_batch_size=64, device="cpu")
    raw["output"]["dir"] = str(tmp_path / "results")
    return raw


@pytest.fixture
def write_recipe(tmp_path: Path):
    def _write(raw: dict[str, Any], name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    return _write
