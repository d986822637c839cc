"""Precision and compilation through the trainer, on the CPU: the loss scale is exact for every method, overflowed
steps are skipped, resume is exact in every precision, bf16 stays near fp32, compile computes the same losses,
and the step makes only the host syncs the code documents."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
import torch

from mtlcli.methods import REGISTRY
from mtlcli.training import Trainer, TrainingInterrupted
from mtlcli.training import loop as loop_module
from mtlcli.training import precision as precision_module
from mtlcli.training.build import compile_problem
from mtlcli.training.callbacks import Callback
from tests.integration._reliability import assert_same_run, metrics, recipe, signal_at_step, trainer

STEPS = 4  # 108 tiny training images in batches of 32
PER_STEP = [name for name in REGISTRY if name != "grid"]
BF16_LOSS_RTOL = 1e-3  # bf16 vs fp32: mean training losses of the first epoch (measured: < 5e-5 relative)
BF16_WEIGHT_ATOL = 5e-3  # and the method's mean weights (measured: 3e-4 for MGDA-UB)


def _raw(data_dir, out, method: str, **train) -> dict:
    raw = recipe(data_dir, out, **train)
    raw["method"] = {"name": method}
    return raw


@pytest.fixture
def fp16_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """fp16 is refused on the CPU (no speed to gain there); CPU autocast and GradScaler('cpu') still compute it,
    so the tests run the scaler's path with the device check lifted."""
    monkeypatch.setattr(loop_module, "check_execution", lambda recipe, device: None)


VARIANTS = {  # the paths a method's defaults do not take
    "static": ("static", {"weights": [0.3, 0.7]}),
    "mgda-batched": ("mgda", {"grads": "batched"}),  # one vmapped backward through ScaleGrad
    "nash-mtl-reuse": ("nash-mtl", {"level": "shared", "update_weights_every": 2}),  # clips .grad by its norm
}


@pytest.mark.parametrize("method", [*PER_STEP, "mgda-batched", "nash-mtl-reuse"])
def test_a_loss_scale_changes_nothing_for_any_method(data_dir, tmp_path, method) -> None:
    """fp32 with a power-of-two loss scale (what fp16 training does to every gradient) trains bit for bit the
    run without one: every method reads the true gradients and writes the scaled update back, and the
    method's own parameters end true after unscaling."""
    name, options = VARIANTS.get(method, (method, {}))
    raw = _raw(data_dir, tmp_path / "a", name, epochs=1)
    raw["method"].update(options)
    reference = trainer(raw).run()
    raw["output"]["dir"] = str(tmp_path / "b")
    scaled = trainer(raw)
    scaled.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # no autocast: fp32 numbers, scaled
    scaled.guard.scaled = True
    run = scaled.run()
    assert scaled.precision.state_dict()["scale"] == 2.0**10  # no overflow, so the scale was in every step
    assert_same_run(reference, run)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # no step was applied
@pytest.mark.parametrize("method", ["gradnorm", "famo", "nash-mtl", "db-mtl", "uncertainty"])
def test_overflowed_steps_are_skipped_steps(data_dir, tmp_path, monkeypatch, fp16_on_cpu, method) -> None:
    """A scale too large overflows every gradient: each step is skipped (not an error under on_nonfinite: stop),
    the scale halves each time, and neither the model nor the method's state moves."""
    monkeypatch.setattr(precision_module, "INIT_SCALE", 2.0**120)
    t = trainer(_raw(data_dir, tmp_path / "out", method, epochs=1, precision="fp16"))
    model, state = {k: v.clone() for k, v in t.model.state_dict().items()}, t.method.state_dict()
    t.run()
    assert t.skipped_steps == STEPS and metrics(t.run_dir)[0]["skipped_steps"] == STEPS
    assert t.precision.state_dict()["scale"] == 2.0 ** (120 - STEPS)
    assert all(torch.equal(v, model[k]) for k, v in t.model.state_dict().items())
    assert _same(t.method.state_dict(), state)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        same_shape = isinstance(b, torch.Tensor) and a.shape == b.shape
        return same_shape and torch.allclose(a.double(), b.double(), rtol=0, atol=0, equal_nan=True)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_resume_is_exact_in_every_precision(data_dir, tmp_path, monkeypatch, fp16_on_cpu, precision) -> None:
    """Interrupted mid-epoch and resumed, a bf16 or fp16 run ends bit for bit as the uninterrupted one; under fp16
    the scale starts high enough to overflow the first steps, so the resumed run needs the scaler's state."""
    monkeypatch.setattr(precision_module, "INIT_SCALE", 2.0**20)
    raw = _raw(data_dir, tmp_path / "out", "mgda-ub", epochs=2, precision=precision)
    reference = trainer(raw)
    reference_dir = reference.run()
    first = trainer(raw)
    signal_at_step(first, STEPS + 2, signal.SIGTERM)
    with pytest.raises(TrainingInterrupted):
        first.run()
    resumed = Trainer.resume(first.run_dir, show_progress=False)
    resumed.run()
    assert_same_run(reference_dir, resumed.run_dir)
    assert resumed.precision.state_dict() == reference.precision.state_dict()
    if precision == "fp16":
        assert 0 < reference.skipped_steps < 2 * STEPS  # overflows, then steps at the lowered scale
        assert reference.precision.state_dict()["scale"] < 2.0**20


@pytest.mark.parametrize("method", ["uniform", "mgda-ub"])
def test_bf16_stays_near_fp32(data_dir, tmp_path, method) -> None:
    """bf16 autocast on the CPU against fp32, one epoch (4 steps): the mean training losses agree within
    BF16_LOSS_RTOL and the weights within BF16_WEIGHT_ATOL (bf16 keeps 8 bits of mantissa: 2^-8 per op)."""
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = metrics(trainer(_raw(data_dir, tmp_path / precision, method, epochs=1, precision=precision)).run())
    fp32, bf16 = runs["fp32"][0], runs["bf16"][0]
    for task, loss in fp32["train"]["loss"].items():
        assert bf16["train"]["loss"][task] == pytest.approx(loss, rel=BF16_LOSS_RTOL)
        assert bf16["alphas"][task] == pytest.approx(fp32["alphas"][task], abs=BF16_WEIGHT_ATOL)
    assert bf16["train"]["loss"] != fp32["train"]["loss"]  # autocast did run in bf16


COMPILER = compile_problem(torch.device("cpu"))


@pytest.mark.skipif(COMPILER is not None, reason=f"torch.compile cannot work on this machine: {COMPILER}")
def test_compiled_model_gives_the_same_losses(data_dir, tmp_path, monkeypatch) -> None:
    """torch.compile of the encoder and heads (Inductor's CPU kernels) against eager mode, mgda-ub, one epoch:
    the same losses and weights to float32 rounding (fused kernels may round differently); same parameter names.
    Inductor draws dropout masks from its own generator: told to draw eager's (`fallback_random`) to compare."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    runs = {}
    for compiled in (False, True):
        t = trainer(_raw(data_dir, tmp_path / str(compiled), "mgda-ub", epochs=1, compile=compiled))
        runs[compiled] = metrics(t.run())[0]
    eager, compiled = runs[False], runs[True]
    for task, loss in eager["train"]["loss"].items():
        assert compiled["train"]["loss"][task] == pytest.approx(loss, rel=1e-5)
        assert compiled["alphas"][task] == pytest.approx(eager["alphas"][task], abs=1e-4)
    assert all("_orig_mod" not in name for name in t.model.state_dict())  # checkpoints are the eager model's


SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class _Count(Callback):
    """Counts the host transfers between each step's start and end (the progress refresh, every
    `REFRESH_EVERY` steps and at the epoch's end, comes after the step's end and is not counted)."""

    def __init__(self) -> None:
        self.on = False
        self.per_step: list[Counter] = []

    def on_step_start(self, trainer) -> None:
        self.per_step.append(Counter())
        self.on = True

    def on_step_end(self, trainer, losses, weights) -> None:
        self.on = False


def _count_syncs(monkeypatch, raw: dict, *, as_on_cuda: bool = True) -> list[Counter]:
    counter = _Count()
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name, **kwargs):
            if counter.on:
                counter.per_step[-1][_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    from rich.console import Console

    from mtlcli.recipe import validate

    t = Trainer(validate(raw), console=Console(stderr=True, quiet=True), show_progress=False, extra_callbacks=[counter])
    if as_on_cuda:  # under on_nonfinite: stop the CPU reads the guard's flag every step (free there), CUDA does not
        t.guard.immediate = t.guard.scaled
    t.run()
    return counter.per_step


@pytest.mark.parametrize(
    ("method", "precision", "expected"),
    [
        ("uniform", "fp32", Counter()),
        ("uniform", "bf16", Counter()),
        ("mgda-ub", "fp32", Counter(numpy=1)),  # the min-norm-point solver reads the T x T Gram matrix on the host
        ("mgda-ub", "bf16", Counter(numpy=1)),
        ("uniform", "fp16", Counter(tolist=1)),  # the guard reads the scaler's overflow (GradScaler.step does too)
    ],
)
def test_host_syncs_per_step(data_dir, tmp_path, monkeypatch, fp16_on_cpu, method, precision, expected) -> None:
    """The step path makes only the documented host transfers: none for uniform, the min-norm solver's one for
    mgda-ub, and under fp16 the one read of the overflow flag that decides whether the step is skipped."""
    raw = _raw(data_dir, tmp_path / "out", method, epochs=1, precision=precision)
    per_step = _count_syncs(monkeypatch, raw)
    assert len(per_step) == STEPS
    assert per_step == [expected] * STEPS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("method", "precision", "expected"),
    [
        ("uniform", "fp32", Counter()),
        ("uniform", "bf16", Counter()),
        ("mgda-ub", "bf16", Counter(numpy=1)),
        ("mgda-ub", "fp16", Counter(numpy=1, tolist=1)),
    ],
)
def test_host_syncs_per_step_on_cuda(data_dir, tmp_path, monkeypatch, method, precision, expected) -> None:
    """The same count on a GPU, the guard as it runs there (its flag read with the progress refresh)."""
    raw = _raw(data_dir, tmp_path / "out", method, epochs=1, precision=precision, device="cuda")
    assert _count_syncs(monkeypatch, raw, as_on_cuda=False) == [expected] * STEPS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_cuda_stays_near_fp32(data_dir, tmp_path, precision) -> None:
    """bf16 and fp16 (with its scaler) against fp32 on the GPU, MGDA-UB, one epoch."""
    runs = {}
    for p in ("fp32", precision):
        t = trainer(_raw(data_dir, tmp_path / p, "mgda-ub", epochs=1, precision=p, device="cuda"))
        runs[p] = metrics(t.run())[0]
    for task, loss in runs["fp32"]["train"]["loss"].items():
        assert runs[precision]["train"]["loss"][task] == pytest.approx(loss, rel=1e-2)
    assert runs[precision]["skipped_steps"] <= 1  # fp16: at most the scaler's first overflow
