"""The registry: every method builds, shows its hyper-parameters, and rejects options it does not take."""

from __future__ import annotations

import pytest
import torch

from mtlcli.errors import MtlError
from mtlcli.methods import REGISTRY, build, option_problems
from mtlcli.methods.base import Method

ISSUE_METHODS = {
    "single-task", "uniform", "static", "grid", "uncertainty", "gradnorm", "mgda", "mgda-ub", "mgda-unconstrained",
    "imtl-g", "imtl-g-exact", "imtl-l", "imtl", "gls", "pcgrad", "famo",
    "dwa", "rlw",
    "upgrad", "dualproj",
    "cagrad",
    "gradvac", "graddrop",
    "db-mtl", "moco",
    "aligned-mtl", "fairgrad",
    "nash-mtl",
    "stch",
}  # fmt: skip
GRAM_BASED = ["mgda", "mgda-ub", "mgda-unconstrained", "imtl-g", "imtl-g-exact"]


def test_every_method_of_the_issue_is_registered() -> None:
    assert set(REGISTRY) == ISSUE_METHODS


@pytest.mark.parametrize("name", sorted(ISSUE_METHODS - {"grid", "static"}))
def test_builds_with_defaults_and_follows_the_protocol(name: str) -> None:
    method = build(name)
    assert isinstance(method, Method) and method.name == name
    method.setup(3, torch.device("cpu"))
    assert isinstance(method.state_dict(), dict)
    assert repr(method).endswith(")")


@pytest.mark.parametrize("name", GRAM_BASED)
def test_gram_based_methods_expose_weights(name: str) -> None:
    gram = torch.tensor([[2.0, 0.5, -0.3], [0.5, 1.0, 0.1], [-0.3, 0.1, 3.0]], dtype=torch.float64)
    weights = build(name).weights(torch.ones(3, dtype=torch.float64), gram)
    assert weights.shape == (3,) and abs(float(weights.sum()) - 1) < 1e-9


def test_an_option_of_another_method_names_the_methods_it_applies_to() -> None:
    problems = option_problems("mgda-ub", {"grads": "batched"})
    assert len(problems) == 1
    assert "applies to mgda, mgda-unconstrained, imtl-g, imtl-g-exact, pcgrad" in problems[0][1]
    with pytest.raises(MtlError, match="applies to gradnorm"):
        build("imtl-g", alpha=0.0)
    with pytest.raises(MtlError, match="grads"):
        build("mgda", grads="vmap")


def test_grid_is_a_sweep_not_a_step_method() -> None:
    assert option_problems("grid", {"points": 5}) == []
    with pytest.raises(MtlError, match="sweep"):
        build("grid")


def test_simplex_grid() -> None:
    from mtlcli.methods.grid import default_points, simplex_grid

    two = simplex_grid(2, default_points(2))
    assert len(two) == 11 and two[0] == [1.0, 0.0] and two[-1] == [0.0, 1.0]
    three = simplex_grid(3, default_points(3))
    assert len(three) == 21  # C(5 + 2, 2)
    assert all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in three)
    assert len({tuple(w) for w in three}) == 21
