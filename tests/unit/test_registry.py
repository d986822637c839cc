"""The dataset and encoder registries, and what the recipe learns from them (never a dataset's name)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlcli import recipe as recipes
from mtlcli.data import registry
from mtlcli.data.device import DeviceSplit
from mtlcli.data.store import IGNORE_INDEX, PreparedDataset
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.errors import DataError, RecipeError
from mtlcli.models import ENCODERS
from mtlcli.tasks import LOSSES, METRICS
from mtlcli.training.build import input_normalization, input_shape
from tests.conftest import load_shipped_recipe

TABLE_META = {
    "dataset": "table",
    "input": "images",
    "size": 64,
    "channels": 3,
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.2, 0.2],
    "tasks": [
        {"name": "species", "kind": "classification", "num_classes": 3, "target": "task0"},
        {"name": "age", "kind": "regression", "num_classes": 1, "target": "task1", "mean": 30.0, "std": 10.0},
    ],
}


@pytest.mark.parametrize("spec", list(registry.DATASETS.values()), ids=list(registry.DATASETS))
def test_every_dataset_entry_is_consistent(spec: registry.DatasetSpec) -> None:
    if spec.from_table:  # its tasks come from the prepared meta.json
        assert not spec.tasks
        spec = registry.table_spec(spec, TABLE_META, "mine")
    names = spec.task_names
    assert len(set(names)) == len(names) and names
    assert all(t.loss in LOSSES and t.metrics and all(m in METRICS for m in t.metrics) for t in spec.tasks)
    assert len(spec.mean) == len(spec.std) == spec.channels
    assert spec.min_size <= spec.default_size <= spec.max_size
    assert spec.default_encoder in ENCODERS
    assert registry.canonical_name(spec.name.upper()) == spec.name
    assert all(registry.canonical_name(alias) == spec.name for alias in spec.aliases)


@pytest.mark.parametrize("name", list(registry.DATASETS))
def test_synthetic_data_has_the_registered_shapes(name: str) -> None:
    spec = registry.get(name)
    data = synthetic_dataset(name, seed=3, counts={"train": 5, "val": 2, "test": 2})
    if spec.graph:  # molecules: node features [V, channels], a target value per molecule and task
        graph = data.graphs["train"]
        assert graph["nodes"].shape == (graph["atoms"].sum(), spec.channels) and data.count("train") == 5
        assert all(data.targets["train"][t.target].shape == (5,) for t in spec.tasks) and data.task_names == spec.task_names
        again = synthetic_dataset(name, seed=3, counts={"train": 5, "val": 2, "test": 2})
        assert np.array_equal(again.graphs["train"]["positions"], graph["positions"])
        return
    hw = (spec.default_size, spec.width_of(spec.default_size))
    shape = hw + ((spec.channels,) if spec.channels > 1 else ())
    assert data.images["train"].shape == (5, *shape) and data.images["train"].dtype == np.uint8
    label_tasks = [t for t in spec.tasks if t.target is None]
    if label_tasks:
        assert data.labels["train"].shape == (5, len(label_tasks))
        assert all((data.labels["train"][:, i] < t.num_classes).all() for i, t in enumerate(label_tasks))
    for task in spec.tasks:
        if task.target is None:
            continue
        array, kind = data.targets["train"][task.target], spec.target_kinds[task.target]
        if kind == "segmentation":
            assert array.shape == (5, *hw) and array.dtype == np.uint8
            assert set(np.unique(array)) <= {*range(task.num_classes), IGNORE_INDEX}
        else:
            assert array.dtype == np.float32 and array.shape[-2:] == hw
            assert array.ndim == (3 if task.num_classes == 1 else 4) and np.isnan(array).any()
    assert data.task_names == spec.task_names
    again = synthetic_dataset(name, seed=3, counts={"train": 5, "val": 2, "test": 2})
    assert np.array_equal(again.images["train"], data.images["train"])


def test_unknown_dataset_names_the_closest() -> None:
    with pytest.raises(DataError) as info:
        registry.canonical_name("celeb")
    assert "celeba" in (info.value.hint or "")


def celeba_recipe(**changes: object) -> dict:
    raw = copy.deepcopy(load_shipped_recipe("celeba"))
    raw.update(changes)
    return raw


def test_tasks_all_expands_to_the_40_attributes_with_their_loss_and_metric() -> None:
    recipe = recipes.load(raw=celeba_recipe())
    assert [t.name for t in recipe.tasks] == list(registry.CELEBA_ATTRIBUTES)
    assert {(t.loss, tuple(t.metrics)) for t in recipe.tasks} == {("cross_entropy", ("error",))}
    dumped = recipe.dump()
    assert len(dumped["tasks"]) == 40 and dumped["tasks"][31] == {
        "name": "Smiling",
        "loss": "cross_entropy",
        "metrics": ["error"],
        "loss_scale": 1.0,
    }
    assert dumped["model"] == {"encoder": "resnet18-cifar", "width": 64}


def test_a_subset_of_attributes_and_defaults_from_the_dataset() -> None:
    raw = celeba_recipe(tasks=[{"name": "Smiling"}, {"name": "Male", "metrics": ["accuracy", "error"]}], model={})
    recipe = recipes.load(raw=raw)
    assert [(t.name, t.metrics) for t in recipe.tasks] == [("Smiling", ["error"]), ("Male", ["accuracy", "error"])]
    assert recipe.model.encoder == "resnet18-cifar" and recipe.model.options == {"width": 64}
    mnist = recipes.load(raw=load_shipped_recipe("multifashion"))
    assert mnist.model.options == {"hidden": 50, "dropout": 0.5}


def test_registry_driven_recipe_problems_are_reported_together() -> None:
    raw = celeba_recipe(tasks=[{"name": "Smilling"}, {"name": "Male"}])
    raw["model"] = {"encoder": "resnet18-cifar", "hidden": 10, "width": 0}
    raw["data"].update(size=16, mean=[0.5, 0.5])
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    text = "\n".join(info.value.problems)
    assert "tasks.0.name: 'Smilling' is not a task of celeba (did you mean 'Smiling'?" in text
    assert "model.hidden: not an option of encoder resnet18-cifar; it is an option of multilenet" in text
    assert "model.width: must be > 0, got 0" in text
    assert "data.size: celeba images are 32..256 pixels a side, got 16" in text
    assert "data.mean: celeba has 3 channel(s): give 1 or 3 values, got 2" in text


def test_unknown_encoder_suggests_one() -> None:
    raw = celeba_recipe()
    raw["model"] = {"encoder": "resnet18-cifr"}
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    assert "model.encoder: unknown encoder 'resnet18-cifr' (did you mean 'resnet18-cifar'?)" in info.value.problems[0]


def _dataset(meta: dict, channels: int = 3) -> PreparedDataset:
    shape = (4, 6, 6, channels) if channels > 1 else (4, 6, 6)
    images = {s: np.zeros(shape, np.uint8) for s in ("train", "val", "test")}
    targets = {s: {"labels": np.zeros((4, 40), np.uint8)} for s in ("train", "val", "test")}
    return PreparedDataset(Path("x"), meta, images, targets)


def test_normalisation_comes_from_the_recipe_then_the_prepared_data_then_the_registry() -> None:
    recipe = recipes.load(raw=celeba_recipe())
    measured = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    assert input_normalization(recipe, _dataset(measured)) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert input_normalization(recipe, _dataset({})) == ([0.5] * 3, [0.5] * 3)
    raw = celeba_recipe()
    raw["data"].update(mean=0.25, std=[0.1, 0.2, 0.3])
    assert input_normalization(recipes.load(raw=raw), _dataset(measured)) == ([0.25] * 3, [0.1, 0.2, 0.3])
    assert input_shape(_dataset({})) == (3, 6, 6) and input_shape(_dataset({}, channels=1)) == (1, 6, 6)


def test_a_colour_batch_is_channels_first_and_normalised_per_channel() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(5, 4, 3, 3), dtype=np.uint8))
    labels = torch.arange(10).reshape(5, 2)
    split = DeviceSplit.create(images, {"labels": labels}, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0], torch.device("cpu"))
    x, y = split.batch(torch.tensor([3, 1]))
    want = images[[3, 1]].permute(0, 3, 1, 2).float() / 255.0
    want = (want - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    assert x.shape == (2, 3, 4, 3) and x.is_contiguous()
    torch.testing.assert_close(x, want)
    assert y["labels"].tolist() == [[6, 7], [2, 3]]


GENERIC_MODULES = ("training", "recipe.py", "ablation.py", "results.py", "tasks.py", "report", "methods")
SAME_WORD = {
    ("render.py", "table"),  # `mtl compare --format table`, not the dataset
    ("published.py", "table"),  # a published table's number (Table 2), not the dataset
}


def test_generic_code_never_names_a_dataset() -> None:
    """Only the registry (and each dataset's own module) knows datasets by name."""
    package = Path(__file__).resolve().parents[2] / "mtlcli"
    files = [p for m in GENERIC_MODULES for p in ((package / m).rglob("*.py") if (package / m).is_dir() else [package / m])]
    assert len(files) > 10
    for path in files:
        text = path.read_text().lower()
        for name in registry.DATASETS:
            if (path.name, name) in SAME_WORD:
                text = text.replace(f'"{name}"', "")
            assert f'"{name}"' not in text and f"'{name}'" not in text, f"{path.name} names dataset {name}"


def test_prepared_arrays_are_memory_mapped(data_dir: Path) -> None:
    from mtlcli.data.store import load_prepared

    data = load_prepared(data_dir, "multifashion")
    assert isinstance(data.images["train"], np.memmap)
    assert torch.from_numpy(data.images["train"])[:2].shape[0] == 2  # writable copy-on-write map: no torch warning


def test_an_image_side_the_encoder_cannot_take_is_a_clear_error_before_and_after_loading() -> None:
    from mtlcli.errors import MtlError
    from mtlcli.training.build import make_model

    with pytest.raises(RecipeError) as info:
        recipes.load(raw={**celeba_recipe(), "data": {"name": "celeba", "size": 48}})
    assert "data.size: resnet18-cifar takes images whose side is a multiple of 32" in str(info.value.problems)
    recipe = recipes.load(raw={**celeba_recipe(), "data": {"name": "celeba"}})  # size known only from the data
    prepared_at_48 = synthetic_dataset("celeba", size=48, seed=0, counts={"train": 2, "val": 1, "test": 1})
    with pytest.raises(MtlError, match=r"model\.encoder resnet18-cifar: .* got 48") as error:
        make_model(recipe, prepared_at_48)
    assert "--size" in (error.value.hint or "")


def test_every_registered_dataset_and_encoder_has_its_torch_side() -> None:
    """The torch-free registries and the modules that build (prepares, encoder builders) list the same names."""
    from mtlcli.data.preparers import PREPARERS
    from mtlcli.data.registry import DATASETS
    from mtlcli.models.builders import BUILDERS
    from mtlcli.models.registry import ENCODERS

    assert list(PREPARERS) == list(DATASETS)
    assert list(BUILDERS) == list(ENCODERS)
