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
    "config", "excess-mtl",
    "nash-mtl",
    "stch",
    "modo", "sdmgrad",
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
    problems = option_problems("uniform", {"grads": "batched"})
    assert len(problems) == 1
    assert "applies to mgda, mgda-unconstrained, imtl-g, imtl-g-exact, pcgrad" in problems[0][1]
    problems = option_problems("mgda-ub", {"grads": "batched"})  # mgda-ub is mgda on z: the level is named
    assert problems == [(("grads",), "does not apply to mgda-ub: mgda-ub is mgda at level representation, "
                         "where grads means nothing; it applies to mgda at level shared")]
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


OPTIONAL_HOOKS = ("step_skipped", "epoch_stats", "end_epoch")


@pytest.mark.parametrize("name", sorted(ISSUE_METHODS - {"grid", "static"}))
def test_every_hook_of_the_protocol_is_a_method_of_the_class(name: str) -> None:
    """The trainer calls every hook unconditionally: each is defined (a no-op by default), none found by getattr."""
    from mtlcli.methods.base import MethodHooks

    method = build(name)
    assert isinstance(method, MethodHooks)
    method.setup(2, torch.device("cpu"))
    assert isinstance(method.epoch_stats(), dict)
    method.end_epoch(torch.ones(2))
    method.step_skipped()
    for hook in OPTIONAL_HOOKS:
        assert callable(getattr(type(method), hook))


def test_the_gram_shell_applies_a_weighting_at_the_options_level() -> None:
    """GramMethod: the subclass gives `weights`; `backward` is the one level step for all of them."""
    from mtlcli.methods._levels import GramMethod, level_step

    shells = sorted(name for name in ISSUE_METHODS - {"grid", "static"} if isinstance(build(name), GramMethod))
    assert shells == [
        "aligned-mtl", "cagrad", "config", "dualproj", "fairgrad", "gradvac", "imtl-g", "imtl-g-exact", "mgda",
        "mgda-unconstrained", "modo", "nash-mtl", "sdmgrad", "upgrad",
    ]  # fmt: skip
    # Nash-MTL wraps the level step (unclipped heads, no solve between solves); GradVac's `groups: layer | matrix`
    # takes one Gram matrix per parameter group (`groups: whole`, its default, is the shell's step); MoDo and
    # SDMGrad take their Gram matrix from two halves of the batch (`two_sample_step`)
    from mtlcli.methods._two_samples import TwoSampleGramMethod

    for name in set(shells) - {"nash-mtl", "gradvac", "modo", "sdmgrad"}:
        assert type(build(name)).backward is GramMethod.backward
    for name in ("modo", "sdmgrad"):
        assert type(build(name)).backward is TwoSampleGramMethod.backward
    with pytest.raises(TypeError, match="abstract"):
        GramMethod()  # type: ignore[abstract]
    assert GramMethod.backward.__code__.co_names.count(level_step.__name__) == 1


def test_registry_entries_have_an_implementation_and_a_schema() -> None:
    """The torch-free registry and the implementations list the same names; each class is named like its entry,
    and each entry's schema is a class of methods.options."""
    from mtlcli.methods import options
    from mtlcli.methods.implementations import IMPLEMENTATIONS

    assert list(IMPLEMENTATIONS) == list(REGISTRY)
    for name, info in REGISTRY.items():
        assert info.options is getattr(options, info.options_schema)
        if name != "grid":
            assert IMPLEMENTATIONS[name].name == name
    assert [n for n, i in REGISTRY.items() if i.independent_networks] == ["single-task"]


def test_declared_names_match_their_implementations() -> None:
    """names.py (what a recipe validates against without torch) equals the torch registries, and drift fails."""
    from mtlcli import augment, names, tasks

    assert tuple(tasks.LOSSES) == names.LOSS_NAMES
    assert tuple(tasks.METRICS) == names.METRIC_NAMES
    assert augment.AUGMENT_CHOICES == names.AUGMENT_CHOICES
    with pytest.raises(RuntimeError, match="declares"):
        names.check_implemented("losses", names.LOSS_NAMES, {**tasks.LOSSES, "huber": None})
