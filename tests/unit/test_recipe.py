"""Recipe validation: every problem at once, with its key path; overrides; shipped recipes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mtlcli import recipe as recipes
from mtlcli.errors import MtlError, RecipeError
from tests.conftest import ROOT, load_shipped_recipe


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid_and_say_how_to_run(path: Path) -> None:
    assert path.read_text().startswith(f"# run: mtl train recipes/{path.name}")
    recipe = recipes.load(path)
    name = recipe.data.name
    if name == "cityscapes":  # the authors' code: Adam 5e-4, batch 8, no normalisation; the paper: 250 epochs, 256x512
        assert (recipe.optim.name, recipe.optim.lr, recipe.train.batch_size, recipe.train.epochs) == ("adam", 5e-4, 8, 250)
        assert recipe.method.options["normalization"] == "none" and recipe.data.size == 256
        assert [t.name for t in recipe.tasks] == ["semantic", "instance", "disparity"] and recipe.model.options["pretrained"]
        assert recipe.optim.scheduler.step_size == 30 and recipe.optim.scheduler.gamma == 0.5
    elif name == "nyuv2":  # Nash-MTL / FAMO: Adam 1e-4, 200 epochs halved at 100, batch 2, scale-crop-flip
        assert (recipe.optim.name, recipe.optim.lr, recipe.train.batch_size, recipe.train.epochs) == ("adam", 1e-4, 2, 200)
        assert recipe.optim.scheduler.step_size == 100 and recipe.optim.scheduler.gamma == 0.5
        assert recipe.data.augment == "scale-crop-flip" and [t.name for t in recipe.tasks] == ["segmentation", "depth", "normal"]
    elif name == "cityscapes-mtan":  # FAMO's Cityscapes trainer: Adam 1e-4, 200 epochs halved at 100, batch 8, scale-crop-flip
        assert (recipe.optim.name, recipe.optim.lr, recipe.train.batch_size, recipe.train.epochs) == ("adam", 1e-4, 8, 200)
        assert recipe.optim.scheduler.step_size == 100 and recipe.optim.scheduler.gamma == 0.5
        assert recipe.data.augment == "scale-crop-flip" and [t.name for t in recipe.tasks] == ["segmentation", "depth"]
        assert recipe.data.size == 128 and recipe.model.encoder == "segnet-split"
    elif name == "qm9":  # Nash-MTL / FAMO trainer.py: Adam 1e-3, 300 epochs, batch 120, the 11 targets, the 64-wide network
        assert (recipe.optim.name, recipe.optim.lr, recipe.train.batch_size, recipe.train.epochs) == ("adam", 1e-3, 120, 300)
        assert recipe.optim.scheduler.name == "none" and recipe.model.encoder == "mpnn" and recipe.model.options["dim"] == 64
        assert [t.name for t in recipe.tasks] == ["mu", "alpha", "homo", "lumo", "r2", "zpve", "u0", "u", "h", "g", "cv"]
    elif name in ("office-31", "office-home"):  # LibMTL: Adam 1e-4, wd 1e-5, no scheduler, 100 epochs, bs 64
        assert (recipe.optim.name, recipe.optim.lr, recipe.optim.weight_decay) == ("adam", 1e-4, 1e-5)
        assert (recipe.optim.scheduler.name, recipe.train.batch_size, recipe.train.epochs) == ("none", 64, 100)
        assert recipe.model.encoder == "resnet18" and recipe.model.options["pretrained"] and recipe.data.size == 224
        assert recipe.model.options["hidden"] == 512  # LibMTL's shared layer after the pool
        assert recipe.method.name == "uniform" and all(t.loss == "masked_cross_entropy" for t in recipe.tasks)
    else:
        if name == "celeba":  # the authors' CelebA setting: Adam 5e-4, loss+ normalisation
            assert recipe.optim.name == "adam" and recipe.optim.lr == 5e-4
            assert recipe.method.options["normalization"] == "loss+" and len(recipe.tasks) == 40
        else:  # the MNIST family: SGD with momentum
            assert recipe.optim.name == "sgd" and recipe.optim.momentum == 0.9
        assert recipe.optim.scheduler.step_size == 30 and recipe.optim.scheduler.gamma == 0.5
        assert recipe.train.epochs == 100 and recipe.train.batch_size == 256
    assert recipe.train.device == "auto"


def test_all_problems_reported_at_once_with_key_paths() -> None:
    raw = load_shipped_recipe()
    raw["optim"]["lr"] = -1
    raw["train"]["epochs"] = 0
    raw["optim"]["lrr"] = 0.1
    raw["model"]["dropout"] = 1.5
    raw["train"]["device"] = "tpu"
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    problems = info.value.problems
    assert "optim.lr: must be > 0, got -1" in problems
    assert "train.epochs: must be > 0, got 0" in problems
    assert "optim.lrr: unknown key (did you mean 'lr'?)" in problems
    assert "model.dropout: must be < 1, got 1.5" in problems
    assert any(p.startswith("train.device: must be auto, cpu, cuda or cuda:N") for p in problems)
    assert len(problems) == 5


def test_missing_sections_and_wrong_types() -> None:
    with pytest.raises(RecipeError) as info:
        recipes.load(raw={"data": {"name": "multifashion"}, "tasks": "left"})
    problems = info.value.problems
    assert "method: required" in problems and "optim: required" in problems
    assert any(p.startswith("tasks: must be a list") for p in problems)
    with pytest.raises(RecipeError, match="must be a mapping of sections"):
        recipes.load(raw=[1, 2])  # type: ignore[arg-type]


def test_unknown_dataset_task_and_method() -> None:
    raw = load_shipped_recipe()
    raw["data"]["name"] = "cifar"
    raw["method"] = {"name": "mgda_ub"}
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    text = "\n".join(info.value.problems)
    names = (
        "multimnist, multifashion, multi-fashion-mnist, celeba, cityscapes, cityscapes-mtan, nyuv2, qm9, office-31, "
        "office-home or table"
    )
    assert f"data.name: must be one of {names}, got 'cifar'" in text
    assert "method.name: unknown method 'mgda_ub' (did you mean 'mgda-ub'?); choose one of:" in text
    raw = load_shipped_recipe()
    raw["tasks"][1]["name"] = "top"
    with pytest.raises(RecipeError, match=r"tasks.1.name: 'top' is not a task of multifashion \(its tasks: left, right\)"):
        recipes.load(raw=raw)


def test_method_options_are_validated_by_the_method() -> None:
    raw = load_shipped_recipe()
    raw["method"] = {"name": "mgda-ub", "normalization": "l3", "head_grad": "raw"}
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    text = "\n".join(info.value.problems)
    assert "method.normalization: must be one of none, l2, loss or loss+, got 'l3'" in text
    assert "method.head_grad: does not apply to mgda-ub: it is not an option of any method (did you mean 'head_grads'?)" in text
    raw["method"] = {"name": "uniform", "normalization": "l2"}
    applies = r"it applies to mgda, mgda-ub, mgda-unconstrained"
    with pytest.raises(RecipeError, match=r"method\.normalization: does not apply to uniform: " + applies):
        recipes.load(raw=raw)


def test_an_option_at_a_level_where_it_means_nothing_is_one_problem_naming_the_level() -> None:
    """Issue 16: an option of another level or variant is one problem, listed with every other problem."""
    raw = load_shipped_recipe()
    raw["method"] = {"name": "mgda-ub", "grads": "batched", "level": "shared", "solver": "simplex"}
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert (
        "method.grads: does not apply to mgda-ub: mgda-ub is mgda at level representation, where grads means nothing; "
        "it applies to mgda at level shared"
    ) in problems
    assert (
        "method.level: does not apply to mgda-ub: mgda-ub is mgda at level representation; "
        "for level shared use --method mgda with level: shared"
    ) in problems
    assert any(p.startswith("method.solver: must be one of") for p in problems)
    raw["method"] = {"name": "imtl-g-exact", "level": "representation"}
    with pytest.raises(RecipeError, match="for level representation use --method imtl-g with level: representation"):
        recipes.load(raw=raw)
    raw["method"] = {"name": "cagrad", "level": "representation", "grads": "loop", "c": -1}
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    assert len(info.value.problems) == 2, info.value.problems
    assert "method.grads: applies only at level shared" in "\n".join(info.value.problems)


def test_tasks_given_by_name_alone_take_the_datasets_loss_and_metrics() -> None:
    """`tasks: [left, right]` reads as people write it (issue 19): the same recipe as the mappings' defaults."""
    raw = load_shipped_recipe()
    raw["tasks"] = ["right", {"name": "left", "loss_scale": 2.0}]
    recipe = recipes.load(raw=raw)
    assert [(t.name, t.loss, t.metrics, t.loss_scale) for t in recipe.tasks] == [
        ("right", "cross_entropy", ["accuracy"], 1.0),
        ("left", "cross_entropy", ["accuracy"], 2.0),
    ]
    raw["tasks"] = ["left", "top", 3]
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    text = "\n".join(info.value.problems)
    assert "tasks.1.name: 'top' is not a task of multifashion" in text
    assert "tasks.2: must be a task name or a mapping (name, loss, metrics, loss_scale), got 3" in text


def test_cli_overrides_and_set() -> None:
    raw = load_shipped_recipe()
    recipe = recipes.load(
        raw=copy.deepcopy(raw),
        method="uniform",
        epochs=3,
        seed=7,
        device="cpu",
        out="elsewhere",
        data_dir="/d",
        sets=["optim.lr=0.01", "tasks.0.loss_scale=10", "optim.scheduler={name: none}"],
    )
    assert recipe.method.name == "uniform" and recipe.method.options == {}  # mgda-ub options dropped
    assert (recipe.train.epochs, recipe.train.seed, recipe.train.device) == (3, 7, "cpu")
    assert recipe.output.dir == "elsewhere" and recipe.data.dir == "/d"
    assert recipe.optim.lr == 0.01 and recipe.tasks[0].loss_scale == 10
    assert recipe.optim.scheduler.name == "none"
    same = recipes.load(raw=copy.deepcopy(raw), method="mgda-ub", sets=["method.normalization=l2"])
    assert same.method.options["normalization"] == "l2" and same.method.options["head_grads"] == "weighted"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [("optim.lr", "expected key.path=value"), ("tasks.5.name=x", "'5' is not an index"), ("optim..lr=1", "empty key")],
)
def test_bad_set_assignments(assignment: str, message: str) -> None:
    with pytest.raises(MtlError, match=message):
        recipes.load(raw=load_shipped_recipe(), sets=[assignment])


def test_broken_yaml_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  name: multifashion\n  size: [28\ntasks: []\n")
    with pytest.raises(MtlError, match=r"broken.yaml:4:\d+: broken YAML"):
        recipes.load(path)


def test_missing_recipe_file(tmp_path) -> None:
    with pytest.raises(MtlError, match="does not exist"):
        recipes.load(tmp_path / "nope.yaml")


def test_resolved_recipe_round_trips() -> None:
    recipe = recipes.load(raw=load_shipped_recipe())
    again = recipes.validate(recipe.dump())
    assert again == recipe


@pytest.mark.parametrize(
    ("value", "trackers"),
    [(None, []), ([], []), ("mlflow", ["mlflow"]), (["tensorboard", "mlflow"], ["tensorboard", "mlflow"])],
)
def test_output_trackers_take_a_list_or_one_name(value, trackers) -> None:
    raw = load_shipped_recipe()
    raw["output"]["trackers"] = value
    assert recipes.load(raw=raw).output.trackers == trackers
    assert recipes.load(raw=load_shipped_recipe()).output.trackers == []  # the default: none
    assert recipes.load(raw=load_shipped_recipe(), sets=["output.trackers=[tensorboard]"]).output.trackers == ["tensorboard"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["tensorbord"], "output.trackers: unknown tracker 'tensorbord' (did you mean 'tensorboard'?); choose one of: "
         "tensorboard, mlflow"),
        (["mlfow", "x"], "output.trackers: unknown tracker 'mlfow' (did you mean 'mlflow'?)"),
        ([1], "output.trackers: unknown tracker 1; choose one of"),
        (["mlflow", "mlflow"], "output.trackers: a tracker is listed twice, got [mlflow, mlflow]"),
        ({"tensorboard": True}, "output.trackers: must be a list of trackers (tensorboard, mlflow), got {tensorboard: true}"),
    ],
)
def test_output_trackers_problems_are_one_line_each(value, problem) -> None:
    raw = load_shipped_recipe()
    raw["output"]["trackers"] = value
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    [reported] = info.value.problems
    assert reported.startswith(problem)


def test_tasks_all_of_an_unknown_dataset_is_not_a_second_problem() -> None:
    raw = load_shipped_recipe()
    raw["data"]["name"] = "cifar"
    raw["tasks"] = "all"
    with pytest.raises(RecipeError) as info:
        recipes.load(raw=raw)
    assert [p for p in info.value.problems if p.startswith("tasks")] == []
    assert any(p.startswith("data.name: must be one of") for p in info.value.problems)
