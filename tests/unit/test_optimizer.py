"""The optimiser: learned loss scales (uncertainty, imtl-l, imtl) never get the model's weight decay."""

from __future__ import annotations

import copy

import pytest
import torch

from mtlcli import methods
from mtlcli import recipe as recipes
from mtlcli.training.build import make_optimizer
from tests.conftest import load_shipped_recipe


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("method", ["uncertainty", "imtl-l", "imtl"])
def test_weight_decay_shrinks_the_model_but_not_the_learned_scales(optimizer: str, method: str) -> None:
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    raw["optim"] = {"name": optimizer, "lr": 0.1, "weight_decay": 0.5}
    raw["method"] = {"name": method}
    recipe = recipes.load(raw=raw)
    model_weight = torch.nn.Parameter(torch.ones(3))
    built = methods.build(method)
    built.setup(2, torch.device("cpu"))
    scales = built.parameters()
    assert scales, "a learned-scale method has parameters"
    with torch.no_grad():
        for s in scales:
            s.fill_(0.7)
    opt = make_optimizer(recipe, [model_weight], scales)
    for p in [model_weight, *scales]:
        p.grad = torch.zeros_like(p)  # no loss gradient: only weight decay can move a parameter
    opt.step()
    assert torch.all(model_weight < 1.0)  # decayed
    assert all(torch.equal(s, torch.full_like(s, 0.7)) for s in scales)  # not decayed


def test_without_weight_decay_one_group_as_older_checkpoints_have() -> None:
    raw = copy.deepcopy(load_shipped_recipe("multifashion"))
    raw["method"] = {"name": "uncertainty"}
    recipe = recipes.load(raw=raw)
    built = methods.build("uncertainty")
    built.setup(2, torch.device("cpu"))
    opt = make_optimizer(recipe, [torch.nn.Parameter(torch.ones(3))], built.parameters())
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 2
