"""Each method's default update equals its reference implementation's (issue 16, part 5).

The model is a small float64 shared MLP with three regression heads whose losses differ in scale (x0.1, x1,
x10). Both sides start from the same weights and take 5 SGD steps on the same batches: `mtl` with the method
built with NO options, the reference with its own defaults. The parameters must agree to 1e-6 after every
step. The reference here is TorchJD 0.18 (`torchjd.autojac.mtl_backward` + `jac_to_grad`: the Jacobian of
the shared parameters aggregated, each head its own raw gradient), which implements these methods as their
authors define them:

- UPGrad and DualProj: TorchJD is the authors' own code (Quinton & Rey, github.com/TorchJD/torchjd,
  src/torchjd/aggregation/_upgrad.py and _dualproj.py), default `reg_eps` 1e-4. TorchJD's absolute
  `norm_eps` (1e-4, a Gram trace below it counts as zero) never triggers on these gradients; `mtl` keeps 0,
  the scale-free choice (see README, Methods).
- Aligned-MTL: the authors' update (SamsungLabs/MTL, the `AlignedMTL` weight method) sums the aligned task
  gradients, B.sum(0); TorchJD's `AlignedMTL` with `pref_vector` all ones is that sum (its default, 1/T each,
  is `reduction: mean`).
- FairGrad: TorchJD's `FairGrad(alpha=1)` solves the authors' equation G w = w^(-1/alpha) (OptMN-Lab/fairgrad
  solves it with SciPy's least_squares); alpha = 1 is the authors' default.

Nash-MTL's reference is the authors' `NashMTL.get_weighted_loss` + `backward` (AvivNavon/nash-mtl, commit
cce1840, methods/weight_methods.py), transcribed below: at every `update_weights_every`-th step alpha > 0 with
alpha_t (G alpha)_t = 1 on the shared parameters' Gram matrix, then `(sum_t alpha_t L_t).backward()` (the
heads get alpha_t-weighted gradients) and `clip_grad_norm_(shared_parameters, max_norm=1)`. The authors run
up to 20 rounds of a linearised ECOS problem for alpha; the transcription solves the equation exactly with
SciPy's root finder instead, as `mtl` does with its own Newton solver.

CAGrad's reference is the authors' `cagrad(grads, alpha, rescale=1)` (Cranial-XIX/CAGrad, commit dc3d481,
nyuv2/utils.py), transcribed below with c = 0.4 (nyuv2/run.sh's `--alpha 0.4`, `mtl`'s default): the weights minimise
w^T G g0 + c ||g0|| ||J^T w|| on the simplex, the update is g0 + c ||g0|| / ||J^T w|| J^T w, divided by
1 + c^2; each head keeps its own raw gradient (`zero_grad_shared_modules` after each task's backward). The
authors solve for w with SciPy's SLSQP (tolerance 1e-6); the transcription solves the same problem exactly
(cvxpy + Clarabel) instead, as `mtl` does. TorchJD's CAGrad is not the reference: it omits the 1 / (1 + c^2).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from mtlcli.methods import build
from mtlcli.methods.base import Method, Step
from mtlcli.models import MultiTaskModel

pytest.importorskip("torchjd")
SCALES = (0.1, 1.0, 10.0)
TASKS = ("a", "b", "c")
STEPS = 5


pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)


class Encoder(nn.Sequential):
    """The shared MLP; its last Linear is the `last_layer` on which GradNorm measures gradient norms."""

    @property
    def last_layer(self) -> nn.Module:
        return self[2]


def small_model(seed: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    encoder = Encoder(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 6), nn.Tanh())
    return MultiTaskModel(encoder, {name: nn.Linear(6, 1) for name in TASKS})


def batches(seed: int = 1) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 5, generator=generator), {t: torch.randn(16, 1, generator=generator) for t in TASKS})
        for _ in range(STEPS)
    ]


def task_losses(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    z, outputs = model(x)
    return z, [s * torch.mean((outputs[t] - y[t]) ** 2) for s, t in zip(SCALES, TASKS, strict=True)]


def small_step(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> Step:
    """The `Step` of `task_losses`, which can also give the losses of some rows of the batch (`Step.samples`)."""
    z, outputs = model(x)

    def losses_on(rows: slice) -> list[torch.Tensor]:
        return [s * torch.mean((outputs[t][rows] - y[t][rows]) ** 2) for s, t in zip(SCALES, TASKS, strict=True)]

    return Step.of(model, z, losses_on(slice(None)), losses_on)


Reference = Callable[[MultiTaskModel, torch.Tensor, dict[str, torch.Tensor]], None]


def assert_same_updates(
    ours: Method,
    theirs: Reference,
    data: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
    epoch_steps: int | None = None,
) -> float:
    """Train two copies of the small model side by side, `ours` through `Method.backward`, `theirs` as the
    reference's step, with SGD on the same batches; the parameters agree to 1e-6 after every step. Returns
    how far the parameters moved, so that agreeing means something.

    As in the trainer, the method's own parameters (learned loss scales) join its optimiser; a reference with
    learnable state of its own (LibMTL's `loss_scale`) exposes it as `theirs.parameters()`, which joins the
    reference's optimiser (LibMTL's `model.parameters()` include it). With `epoch_steps`, every `epoch_steps`
    steps end an epoch: `ours` gets the trainer's `epoch_stats()` and then `end_epoch(mean losses)`, the mean of
    that epoch's step losses; the reference counts its own steps."""
    ours_model = small_model()
    theirs_model = copy.deepcopy(ours_model)
    start = [p.detach().clone() for p in ours_model.parameters()]
    ours.setup(len(TASKS), torch.device("cpu"))
    ours_opt = torch.optim.SGD([*ours_model.parameters(), *ours.parameters()], lr=0.05)
    extra = theirs.parameters() if hasattr(theirs, "parameters") else []
    theirs_opt = torch.optim.SGD([*theirs_model.parameters(), *extra], lr=0.05)
    loss_sum = torch.zeros(len(TASKS))
    for i, (x, y) in enumerate(data, start=1):
        ours_opt.zero_grad(set_to_none=True)
        step = small_step(ours_model, x, y)
        ours.backward(step)
        ours_opt.step()
        loss_sum += step.losses.detach()
        if epoch_steps is not None and i % epoch_steps == 0:
            ours.epoch_stats()
            ours.end_epoch(loss_sum / epoch_steps)
            loss_sum = torch.zeros(len(TASKS))
        theirs_opt.zero_grad(set_to_none=True)
        theirs(theirs_model, x, y)
        theirs_opt.step()
        for (name, a), b in zip(ours_model.named_parameters(), theirs_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    return max(float((p.detach() - s).abs().max()) for p, s in zip(ours_model.parameters(), start, strict=True))


def reference_step(aggregator: object) -> Reference:
    from torchjd.autojac import jac_to_grad, mtl_backward

    def step(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        z, losses = task_losses(model, x, y)
        mtl_backward(losses, features=z)
        jac_to_grad(list(model.encoder.parameters()), aggregator)

    return step


def authors_cagrad(grads: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The authors' `cagrad(grads, alpha, rescale=1)` on grads [P, T], the SLSQP solve replaced by an exact one."""
    cp = pytest.importorskip("cvxpy")
    tasks = grads.shape[1]
    gram = grads.T @ grads
    g0_norm = np.sqrt(gram.mean())
    c = alpha * g0_norm
    w = cp.Variable(tasks)
    cost = (gram @ np.full(tasks, 1 / tasks)) @ w + c * cp.norm(grads @ w, 2)
    cp.Problem(cp.Minimize(cost), [w >= 0, cp.sum(w) == 1]).solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12)
    gw = grads @ w.value
    g = grads.mean(axis=1) + c / np.linalg.norm(gw) * gw
    return g / (1 + alpha**2)


def authors_cagrad_step(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
    """The authors' training step: each task's backward, its shared gradient kept and then zeroed (the heads keep
    theirs), CAGrad's update written into the shared parameters."""
    shared = list(model.encoder.parameters())
    _, losses = task_losses(model, x, y)
    columns = []
    for loss in losses:
        loss.backward(retain_graph=True)
        columns.append(torch.cat([p.grad.reshape(-1) for p in shared]).numpy().copy())
        for p in shared:
            p.grad = None
    update = torch.from_numpy(authors_cagrad(np.stack(columns, axis=1)))
    offset = 0
    for p in shared:
        p.grad = update[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def references() -> dict[str, Reference]:
    pytest.importorskip("qpsolvers", reason="TorchJD's projector needs qpsolvers and quadprog")
    from torchjd.aggregation import AlignedMTL, DualProj, FairGrad, UPGrad

    return {
        "upgrad": reference_step(UPGrad()),
        "dualproj": reference_step(DualProj()),
        "cagrad": authors_cagrad_step,
        "aligned-mtl": reference_step(AlignedMTL(pref_vector=torch.ones(len(TASKS)))),
        "fairgrad": reference_step(FairGrad(alpha=1.0)),
    }


@pytest.mark.parametrize("method", ["upgrad", "dualproj", "cagrad", "aligned-mtl", "fairgrad"])
def test_the_default_update_is_the_reference_update(method: str) -> None:
    assert assert_same_updates(build(method), references()[method], batches()) > 1e-3

def representation_gap(method: str) -> float:
    """How far the encoder gradients of one step at the method's default level and at `level: representation`
    are apart, from the same model and batch."""
    model = small_model()
    other = copy.deepcopy(model)
    (x, y), *_ = batches()
    for m, options in ((model, {}), (other, {"level": "representation"})):
        method_object = build(method, **options)
        method_object.setup(len(TASKS), torch.device("cpu"))
        method_object.backward(small_step(m, x, y))
    pairs = zip(model.encoder.parameters(), other.encoder.parameters(), strict=True)
    return max(float((a.grad - b.grad).abs().max()) for a, b in pairs)


@pytest.mark.parametrize(
    "method", ["upgrad", "dualproj", "cagrad", "aligned-mtl", "fairgrad", "config", "nash-mtl", "gradvac", "modo", "sdmgrad"]
)
def test_the_representation_variant_is_a_different_update(method: str) -> None:
    """`level: representation` (one encoder backward, MGDA-UB's trick) is another method: its update differs."""
    assert representation_gap(method) > 1e-6


class AuthorsNashMtl:
    """The authors' Nash-MTL step (module docstring), alpha solved exactly by SciPy's root finder."""

    def __init__(self, update_weights_every: int = 1, max_norm: float = 1.0) -> None:
        self.every, self.max_norm, self.step, self.alpha = update_weights_every, max_norm, 0, None

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        optimize = pytest.importorskip("scipy.optimize")
        shared = list(model.encoder.parameters())
        _, losses = task_losses(model, x, y)
        if self.step % self.every == 0:
            rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
            gram = torch.stack(rows).mm(torch.stack(rows).T).numpy()
            start = 1 / np.sqrt(np.diag(gram) * len(losses))
            solution = optimize.root(lambda a: a * (gram @ a) - 1, start, method="hybr", tol=1e-12)
            assert (solution.x > 0).all() and np.abs(solution.x * (gram @ solution.x) - 1).max() < 1e-10
            self.alpha = torch.from_numpy(solution.x)
        self.step += 1
        sum(a * loss for a, loss in zip(self.alpha, losses, strict=True)).backward()
        torch.nn.utils.clip_grad_norm_(shared, self.max_norm)


@pytest.mark.parametrize("every", [1, 3])
def test_nash_mtl_is_the_authors_update_and_reuses_alpha_without_per_task_gradients(every: int) -> None:
    """The default (every = 1) and `update_weights_every: 3`; between two solves no per-task gradient is taken."""
    ours = build("nash-mtl", **({"update_weights_every": every} if every != 1 else {}))
    assert assert_same_updates(ours, AuthorsNashMtl(update_weights_every=every), batches() + batches(seed=2)) > 1e-3
    assert ours.per_task_steps == -(-2 * STEPS // every)  # ceil: only the solving steps took per-task gradients


class LibMtlDbMtl:
    """LibMTL's `DB_MTL.backward` (median-research-group/LibMTL, commit 4336804, LibMTL/weighting/DB_MTL.py) with
    its defaults DB_beta 0.9 and DB_beta_sigma 0, transcribed: per-task backward passes of log(L_t + 1e-8) (the
    heads keep what those leave), an EMA of the shared gradients, each rescaled to the largest norm, summed."""

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.0) -> None:
        self.beta, self.beta_sigma, self.step, self.buffer = beta, beta_sigma, 0, None

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        shared = list(model.encoder.parameters())
        _, losses = task_losses(model, x, y)
        self.step += 1
        rows = []
        for t, loss in enumerate(losses):
            torch.log(loss + 1e-8).backward(retain_graph=t + 1 != len(losses))
            rows.append(torch.cat([p.grad.reshape(-1) for p in shared]))
            for p in shared:
                p.grad = None
        batch_grads = torch.stack(rows)
        buffer = torch.zeros_like(batch_grads) if self.buffer is None else self.buffer
        self.buffer = batch_grads + (self.beta / self.step**self.beta_sigma) * (buffer - batch_grads)
        norms = self.buffer.norm(dim=-1)
        alpha = norms.max() / (norms + 1e-8)
        update = sum(alpha[i] * self.buffer[i] for i in range(len(losses)))
        offset = 0
        for p in shared:
            p.grad = update[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()


def test_db_mtl_is_libmtls_update() -> None:
    assert assert_same_updates(build("db-mtl"), LibMtlDbMtl(), batches()) > 1e-3
