"""Precision: what stays float32 under autocast, the loss scale's exact round trip, the scaled guard, the checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mtlcli.errors import MtlError, RecipeError
from mtlcli.methods import build as build_method
from mtlcli.methods._representation import representation_grads
from mtlcli.methods._shared_params import shared_grads
from mtlcli.methods.base import Step
from mtlcli.methods.min_norm import min_norm
from mtlcli.models import ENCODERS, build_model
from mtlcli.recipe import validate
from mtlcli.training import build
from mtlcli.training.guard import NonFiniteGuard
from mtlcli.training.precision import Precision, ScaleGrad


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(encoder="multilenet", num_classes={"a": 3, "b": 4}, input_shape=(1, 20, 20), options={"hidden": 8})


def _step(model: nn.Module, precision: Precision, scale: torch.Tensor | None = None) -> Step:
    torch.manual_seed(1)
    x = torch.randn(6, 1, 20, 20)
    targets = {"a": torch.randint(0, 3, (6,)), "b": torch.randint(0, 4, (6,))}
    model.eval()  # no dropout: the same graph in every call
    with precision.autocast():
        z, outputs = model(x)
        losses = [nn.functional.cross_entropy(outputs[name], targets[name]) for name in ("a", "b")]
    return Step.of(model, z, precision.losses(losses, scale), grad_scale=scale)


def test_under_bf16_autocast_z_is_bf16_and_its_gram_float32() -> None:
    """z (and dL/dz) are bfloat16 under autocast; the Gram matrix and the min-norm weights are float32, computed
    from the float32 copies of those bfloat16 gradients."""
    model = _model()
    step = _step(model, Precision("bf16", torch.device("cpu")))
    assert step.z.dtype == torch.bfloat16 and step.losses.dtype == torch.float32
    raw = [torch.autograd.grad(step.task_loss(t), step.z, retain_graph=True)[0] for t in range(2)]
    assert raw[0].dtype == torch.bfloat16
    grads = representation_grads(step)
    assert grads.z_grads.dtype == torch.float32
    expected = torch.stack([g.float().reshape(-1) for g in raw])
    assert torch.equal(grads.z_grads, expected)
    gram = grads.gram()
    assert gram.dtype == torch.float32 and torch.equal(gram, expected @ expected.T)
    assert min_norm(gram).dtype == torch.float32
    jacobian = shared_grads(_step(model, Precision("bf16", torch.device("cpu")))).jacobian
    assert jacobian.dtype == torch.float32  # float32 parameters: float32 gradients, autocast or not


def test_the_loss_scale_is_divided_out_exactly() -> None:
    """Under a loss scale (a power of two) every gradient a method reads is the true one, bit for bit, and the
    update it writes is the scale times the true one."""
    fp32 = Precision("fp32", torch.device("cpu"))
    scale = torch.tensor(2.0**12)
    plain, scaled = _model(), _model()
    a, b = _step(plain, fp32), _step(scaled, fp32, scale)
    assert torch.equal(a.losses, b.losses)  # the losses keep their values
    ga, gb = representation_grads(a), representation_grads(b)
    assert torch.equal(ga.z_grads, gb.z_grads)
    ja, jb = shared_grads(_step(plain, fp32)), shared_grads(_step(scaled, fp32, scale), "batched")
    assert torch.allclose(ja.jacobian, jb.jacobian, rtol=1e-6, atol=0)  # loop vs batched: float tolerance
    assert torch.equal(ja.jacobian, shared_grads(_step(scaled, fp32, scale)).jacobian)
    weights = torch.tensor([0.25, 0.75])
    b.backward_z(weights @ gb.z_grads)
    a.backward_z(weights @ ga.z_grads)
    for p, q in zip(plain.encoder.parameters(), scaled.encoder.parameters(), strict=True):
        assert torch.equal(q.grad, p.grad * scale)


def test_gradnorm_measures_the_true_gradient_norms() -> None:
    """GradNorm's ||dL_t/dW|| under a loss scale are the unscaled ones (its Adam would hide a scaled norm)."""
    fp32 = Precision("fp32", torch.device("cpu"))
    method = build_method("gradnorm")
    method.setup(2, torch.device("cpu"))
    plain = method.grad_norms(_step(_model(), fp32))
    assert torch.equal(method.grad_norms(_step(_model(), fp32, torch.tensor(2.0**12))), plain)


def test_scale_grad_keeps_the_value_and_scales_batched_backwards() -> None:
    x = torch.tensor([1.5, -2.0], requires_grad=True)
    loss = (x**2).sum()
    scaled = ScaleGrad.apply(loss, torch.tensor(8.0))
    assert torch.equal(scaled, loss)
    (g,) = torch.autograd.grad(torch.stack([scaled, 2 * scaled]), x, torch.eye(2), is_grads_batched=True)
    assert torch.equal(g, torch.stack([16 * x, 32 * x]).detach())


def _guard(scaled: bool) -> tuple[NonFiniteGuard, nn.Parameter]:
    p = nn.Parameter(torch.zeros(3))
    return NonFiniteGuard(["a", "b"], [("w", p)], torch.device("cpu"), "stop", scaled=scaled), p


def test_scaled_guard_skips_an_overflow_and_stops_on_a_bad_loss() -> None:
    guard, p = _guard(scaled=True)
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert guard.observe(1, torch.tensor([0.5, 0.7]), "here") is False  # the scaler's overflow: skipped, not fatal
    with pytest.raises(MtlError, match="non-finite loss"):
        guard.observe(2, torch.tensor([float("nan"), 0.7]), "there")
    p.grad = torch.ones(3)
    assert guard.observe(3, torch.tensor([0.5, 0.7]), "fine") is True
    unscaled, q = _guard(scaled=False)
    q.grad = torch.tensor([1.0, float("inf"), 0.0])
    with pytest.raises(MtlError, match="non-finite gradient"):  # without a scaler an inf gradient is divergence
        unscaled.observe(1, torch.tensor([0.5, 0.7]), "here")


def test_unscale_leaves_the_method_parameters_true() -> None:
    """The model's gradients carry the scale, the method's own (learned loss scales) do not: both end true."""
    precision = Precision("fp16", torch.device("cpu"))  # the scaler's arithmetic, on the CPU for the test
    scale = precision.grad_scale()
    model_p, method_p = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    model_p.grad, method_p.grad = torch.tensor([0.5, -1.0]) * scale, torch.tensor([0.25, 2.0])
    optimizer = torch.optim.SGD([model_p, method_p], lr=0.1)
    precision.unscale_(optimizer, [method_p])
    assert torch.equal(model_p.grad, torch.tensor([0.5, -1.0])) and torch.equal(method_p.grad, torch.tensor([0.25, 2.0]))
    precision.update()
    assert precision.state_dict()["scale"] == 2.0**16


def _raw(tiny_recipe: dict, **train) -> dict:
    raw = copy.deepcopy(tiny_recipe)
    raw["train"].update(train)
    return raw


def test_recipe_takes_precision_channels_last_and_compile(tiny_recipe) -> None:
    recipe = validate(_raw(tiny_recipe, precision="bf16", compile=True))
    assert (recipe.train.precision, recipe.train.compile, recipe.train.channels_last) == ("bf16", True, False)
    with pytest.raises(RecipeError) as info:
        validate(_raw(tiny_recipe, precision="fp8"))
    assert [p for p in info.value.problems if p.startswith("train.precision")] == info.value.problems


def test_channels_last_on_multilenet_is_one_recipe_problem(tiny_recipe) -> None:
    with pytest.raises(RecipeError) as info:
        validate(_raw(tiny_recipe, channels_last=True))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("train.channels_last: encoder multilenet has no wide convolutions")
    wide = [name for name, spec in ENCODERS.items() if spec.channels_last]
    assert wide == ["resnet18-cifar", "resnet18", "resnet50-dilated", "segnet-split"]


def test_compile_with_batched_gradients_is_one_recipe_problem(tiny_recipe) -> None:
    """torch.vmap has no batching rule for the compiled backward's kernels (aten::mm.out): refused up front."""
    raw = _raw(tiny_recipe, compile=True)
    raw["method"] = {"name": "mgda", "grads": "batched"}
    with pytest.raises(RecipeError) as info:
        validate(raw)
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("method.grads: batched")
    raw["method"]["grads"] = "loop"
    assert validate(raw).train.compile


def test_fp16_on_the_cpu_is_one_error(tiny_recipe) -> None:
    recipe = validate(_raw(tiny_recipe, precision="fp16"))
    with pytest.raises(MtlError, match="fp16 needs a CUDA device") as info:
        build.check_execution(recipe, torch.device("cpu"))
    assert "\n" not in info.value.message
    build.check_execution(validate(_raw(tiny_recipe, precision="bf16")), torch.device("cpu"))  # bf16 autocasts on the CPU


def test_compile_without_a_cpp_compiler_is_one_error(tiny_recipe, monkeypatch) -> None:
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise FileNotFoundError("g++")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(MtlError, match=r"train.compile: torch.compile needs a working C\+\+ compiler"):
        build.check_execution(validate(_raw(tiny_recipe, compile=True)), torch.device("cpu"))


def test_channels_last_model_computes_what_the_contiguous_one_does() -> None:
    torch.manual_seed(0)
    model = build_model(encoder="resnet18-cifar", num_classes={"a": 3}, input_shape=(3, 32, 32), options={"width": 4}).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)[1]["a"]
    recipe = type("R", (), {"train": type("T", (), {"channels_last": True, "compile": False})()})()
    prepared = build.prepare_model(model, recipe)
    conv = next(m for m in prepared.encoder.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    got = prepared(x.contiguous(memory_format=torch.channels_last))[1]["a"]
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
