"""The Python API (issue 19, part 3): `mtlcli.train`, `evaluate`, `compare` on the tiny data, and the methods in a
training loop of one's own (`mtlcli.backward`, `mtlcli.method`), checked against the trainer's own `Step.of`."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import mtlcli
from mtlcli.errors import MtlError, RecipeError
from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.models import MultiTaskModel
from mtlcli.recipe import validate
from tests.conftest import ROOT


def test_import_mtlcli_is_light_and_its_api_is_loaded_on_first_use() -> None:
    probe = (
        "import sys, mtlcli\n"
        "assert 'torch' not in sys.modules and 'mtlcli.api' not in sys.modules\n"
        "assert {'train', 'evaluate', 'compare', 'backward', 'method', 'Run'} <= set(dir(mtlcli))\n"
        "run = mtlcli.Run\n"
        "assert 'mtlcli.api' in sys.modules and 'torch' not in sys.modules\n"
        "try:\n    mtlcli.nothing\nexcept AttributeError as exc:\n    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "module 'mtlcli' has no attribute 'nothing'"


def test_train_evaluate_and_compare_from_python(tiny_recipe: dict[str, Any], write_recipe: Any, tmp_path: Path) -> None:
    given = copy.deepcopy(tiny_recipe)
    from_file = mtlcli.train(write_recipe(tiny_recipe), method="uniform", seed=1, sets=["optim.lr=0.01"])
    from_dict = mtlcli.train(tiny_recipe, method="mgda-ub", epochs=2)
    from_recipe = mtlcli.train(validate(copy.deepcopy(tiny_recipe)), out=tmp_path / "elsewhere")
    assert tiny_recipe == given  # the caller's mapping is not modified
    assert (from_file.method, from_file.seed, from_file.recipe["optim"]["lr"]) == ("uniform", 1, 0.01)
    assert (from_dict.method, len(from_dict.metrics)) == ("mgda-ub", 2)
    assert from_recipe.dir.parent == tmp_path / "elsewhere" and from_recipe.method == "mgda-ub"
    for run in (from_file, from_dict, from_recipe):
        assert run.summary is not None and run.summary["status"] == "complete"
        assert run == mtlcli.Run.load(run.dir)

    test = mtlcli.evaluate(from_dict)  # the best checkpoint on test: what summary.json recorded for that epoch
    val = mtlcli.evaluate(from_dict.dir, split="val", device="cpu")
    assert from_dict.summary is not None
    for task in ("left", "right"):
        assert test[task]["accuracy"] == pytest.approx(from_dict.summary["test"][task]["accuracy"], abs=1e-9)
        assert val[task]["accuracy"] == pytest.approx(from_dict.summary["val"][task]["accuracy"], abs=1e-9)
    assert (from_dict.dir / "eval-val-best.json").is_file()
    with pytest.raises(MtlError, match="split 'train'"):
        mtlcli.evaluate(from_dict, split="train")

    frame = mtlcli.compare([Path(tiny_recipe["output"]["dir"]), from_recipe])
    assert sorted(frame["run"]) == sorted(str(r.dir) for r in (from_file, from_dict, from_recipe))
    assert {"dataset", "method", "seed", "epochs", "test left accuracy", "val right accuracy", "ms/step"} <= set(frame.columns)
    row = frame.set_index("run").loc[str(from_dict.dir)]
    assert row["test left accuracy"] == pytest.approx(from_dict.summary["test"]["left"]["accuracy"])
    assert row["epochs"] == [from_dict.summary["best_epoch"]]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(MtlError, match="no finished runs"):
        mtlcli.compare([tmp_path / "nothing"])


def test_train_reports_every_recipe_problem_as_the_cli_does(tiny_recipe: dict[str, Any]) -> None:
    with pytest.raises(RecipeError) as info:
        mtlcli.train(tiny_recipe, method="mgda-ubb", sets=["optim.lr=-1"])
    assert any("did you mean 'mgda-ub'?" in p for p in info.value.problems)
    assert "optim.lr: must be > 0, got -1" in info.value.problems


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 6)

    @property
    def last_layer(self) -> nn.Module:
        return self.fc2

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.fc2(torch.tanh(self.fc1(x))))


def small_model() -> MultiTaskModel:
    torch.manual_seed(3)
    heads = {name: nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 1)) for name in ("a", "b", "c")}
    return MultiTaskModel(Encoder(), heads).double()


def forward(model: MultiTaskModel) -> tuple[Tensor, list[Tensor]]:
    """z and three task losses of very different scales (x0.1, x1, x10)."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    z, outputs = model(x)
    scales = (0.1, 1, 10)
    return z, [scales[i] * ((outputs[t].squeeze(1) - y[:, i]) ** 2).mean() for i, t in enumerate("abc")]


def grads(model: MultiTaskModel) -> list[Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("name", ["uniform", "mgda-ub", "mgda", "upgrad", "imtl-g", "imtl-g-exact", "cagrad", "nash-mtl",
                                  "gradnorm", "famo", "pcgrad"])  # fmt: skip
def test_backward_on_parameter_lists_equals_the_trainers_step_on_its_model(name: str) -> None:
    """The same method, two ways: the trainer's `Step.of(model, z, losses)`, and `mtlcli.backward` given only the
    parameters (encoder, heads as a list) and z; the gradients agree to 1e-12."""
    model = small_model()
    reference = build(name)
    reference.setup(3, torch.device("cpu"))
    z, losses = forward(model)
    expected_weights = reference.backward(Step.of(model, z, losses))
    expected = grads(model)

    model.zero_grad()
    method = mtlcli.method(name, tasks=3)
    z, losses = forward(model)
    heads = list(model.heads.values())
    weights = mtlcli.backward(method, losses, shared=model.encoder, heads=heads, features=z, last_layer=model.encoder.fc2)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-12)
    for got, want in zip(grads(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in expected)


def test_backward_takes_a_name_for_a_method_without_state_and_parameter_lists() -> None:
    model = small_model()
    z, losses = forward(model)
    expected_weights = build("mgda-ub").backward(Step.of(model, z, losses))
    expected = grads(model)
    model.zero_grad()
    z, losses = forward(model)
    shared = list(model.encoder.parameters())
    heads = [list(head.parameters()) for head in model.heads.values()]
    weights = mtlcli.backward("mgda-ub", torch.stack(losses), shared=shared, heads=heads, features=z)
    torch.testing.assert_close(weights, expected_weights, rtol=0, atol=1e-12)
    for got, want in zip(grads(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "message", "hint"),
    [
        (lambda m, z, ls: mtlcli.backward("upgrad", ls, shared=m.encoder, heads=[m.heads["a"]], features=z),
         "3 task losses but 1 heads", "one head per task"),
        (lambda m, z, ls: mtlcli.backward("upgrad", [ls[0].expand(2), *ls[1:]], shared=m.encoder, heads=list(m.heads.values()),
                                          features=z), "every task loss must be a scalar", None),
        (lambda m, z, ls: mtlcli.backward("famo", ls, shared=m.encoder, heads=list(m.heads.values()), features=z),
         "famo keeps state from step to step", "mtlcli.method('famo', tasks=3)"),
        (lambda m, z, ls: mtlcli.backward(mtlcli.method("gradnorm", tasks=3), ls, shared=m.encoder, heads=list(m.heads.values()),
                                          features=z), "this method reads the encoder's last layer", "last_layer="),
    ],
    ids=["heads", "scalar", "stateful-by-name", "gradnorm-last-layer"],
)  # fmt: skip
def test_backward_misuse_is_one_clear_error(call: Any, message: str, hint: str | None) -> None:
    model = small_model()
    z, losses = forward(model)
    with pytest.raises(MtlError, match=re.escape(message)) as info:
        call(model, z, losses)
    if hint is not None:
        assert hint in (info.value.hint or "")


def readme_block(containing: str) -> str:
    """The README's Python code block containing `containing` (the README is the test's source: they cannot drift)."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL) if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} README blocks contain {containing!r}"
    return blocks[0]


def test_the_readmes_training_loop_example_runs_and_learns(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("mtlcli.backward("), "README.md", "exec"), namespace)
    first, last = namespace["history"][0], namespace["history"][-1]
    assert all(b < 0.5 * a for a, b in zip(first, last, strict=True)), (first, last)
    weights = namespace["weights"]
    assert weights.shape == (2,) and (weights > 0).all()  # UPGrad's weights of a step without conflict
    assert capsys.readouterr().out.startswith("losses [0.39")
