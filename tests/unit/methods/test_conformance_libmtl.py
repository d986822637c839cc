"""PCGrad, GradVac, IMTL-G and MoCo: the default update equals LibMTL's (issue 16, parts 3 and 5).

Each reference step is transcribed below from LibMTL (median-research-group/LibMTL, commit 4336804), with
`AbsWeighting`'s helpers (LibMTL/weighting/abstract_weighting.py) it relies on: `_compute_grad(mode='backward')`
runs one backward per task and keeps each task's shared gradient, then zeroes the shared gradients (so the heads
keep the raw gradients of their own losses), and `_reset_grad` writes the new shared gradient. Both sides train
the float64 small model of `test_conformance` (loss scales x0.1, x1, x10) for 5 SGD steps with `assert_same_updates`
(parameters equal to 1e-6 after every step); `mtl`'s methods are built with no options unless a test says so.

Random orders (PCGrad, GradVac): LibMTL shuffles with Python's `random.shuffle`, `mtl` draws from its own seeded
generator; `SameOrders` records `mtl`'s draws and makes the reference's `random.shuffle` (and TorchJD's
`torch.randperm`) return them, so both sides visit the tasks in the same orders.

IMTL-G: LibMTL's `IMTL` is the hybrid; the transcription keeps its gradient part (the IMTL-L loss scales, which start
at 0, i.e. exp(s) L - s = L, are `mtl`'s `imtl-l` / `imtl`). With `rep_grad=False` it is IMTL-G on the shared
parameters, `mtl`'s `imtl-g-exact` (and `imtl-g` with `level: shared`); with `rep_grad=True` LibMTL solves for
alpha from dL_t/dz SUMMED over the batch ([T, features]), where the paper's and `mtl`'s `imtl-g` use the whole
dL_t/dz ([T, batch x features]): the two agree on batches of one example (tested), not otherwise (tested too). On
full batches the representation-level oracle is TorchJD's `IMTLG` applied to the whole dL_t/dz.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import pytest
import torch

from mtlcli.methods import build
from mtlcli.methods.base import Method, Step
from mtlcli.models import MultiTaskModel
from tests.unit.methods.test_conformance import (
    SCALES,
    TASKS,
    assert_same_updates,
    batches,
    reference_step,
    small_model,
    task_losses,
)

pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)
T = len(TASKS)


class SameOrders:
    """Hands the orders `method` draws to the reference: each `random.shuffle(items)` (LibMTL) or
    `torch.randperm(n)` without a generator (TorchJD) returns the next order `method` drew, in task order."""

    def __init__(self, method: Method, monkeypatch: pytest.MonkeyPatch) -> None:
        self.queue: list[list[int]] = []
        drawn = method.orders  # type: ignore[attr-defined]

        def recording(num_tasks: int) -> list[list[int]]:
            orders = drawn(num_tasks)
            self.queue.extend(orders)
            return orders

        method.orders = recording  # type: ignore[attr-defined]
        randperm = torch.randperm

        def torchjd_randperm(n: int, *args: object, generator: torch.Generator | None = None, **kwargs: object) -> torch.Tensor:
            if generator is not None:  # `mtl`'s own draws
                return randperm(n, *args, generator=generator, **kwargs)
            order = self.queue.pop(0)
            assert sorted(order) == list(range(n))
            return torch.tensor(order)

        monkeypatch.setattr(random, "shuffle", self.shuffle)
        monkeypatch.setattr(torch, "randperm", torchjd_randperm)

    def shuffle(self, items: list[int]) -> None:
        order = self.queue.pop(0)
        assert sorted(order) == sorted(items)
        items[:] = order


def libmtl_grads(model: MultiTaskModel, losses: list[torch.Tensor]) -> torch.Tensor:
    """`AbsWeighting._compute_grad(losses, mode='backward')` (rep_grad False): [T, P]."""
    shared = list(model.encoder.parameters())
    grads = torch.zeros(len(losses), sum(p.numel() for p in shared))
    for tn, loss in enumerate(losses):
        loss.backward(retain_graph=tn + 1 != len(losses))
        grads[tn] = torch.cat([p.grad.reshape(-1) for p in shared])  # _grad2vec
        for p in shared:  # zero_grad_share_params
            p.grad = torch.zeros_like(p)
    return grads


def libmtl_reset_grad(model: MultiTaskModel, new_grads: torch.Tensor) -> None:
    """`AbsWeighting._reset_grad`: the shared parameters' gradients become `new_grads`."""
    offset = 0
    for p in model.encoder.parameters():
        p.grad = new_grads[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def libmtl_pcgrad(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
    """LibMTL/weighting/PCGrad.py, `PCGrad.backward`: every task's gradient, for each task in a shuffled order
    of ALL tasks (itself included), projected off the ones it conflicts with; the sum."""
    _, losses = task_losses(model, x, y)
    grads = libmtl_grads(model, losses)
    pc_grads = grads.clone()
    for tn_i in range(T):
        task_index = list(range(T))
        random.shuffle(task_index)
        for tn_j in task_index:
            g_ij = torch.dot(pc_grads[tn_i], grads[tn_j])
            if g_ij < 0:
                pc_grads[tn_i] -= g_ij * grads[tn_j] / (grads[tn_j].norm().pow(2) + 1e-8)
    libmtl_reset_grad(model, pc_grads.sum(0))


class LibMtlGradVac:
    """LibMTL/weighting/GradVac.py, `GradVac.backward` with `GradVac_beta` and `GradVac_group_type`: per task, in
    a shuffled order of the other tasks, per group k of the shared gradient (0: the whole; 1: each leaf module
    with parameters; 2: each parameter tensor), the cosine rho_ijk, the correction up to the goal rho_T[i, j, k]
    when below it, the goal's EMA; the sum."""

    def __init__(self, group_type: int = 0, beta: float = 0.5) -> None:
        self.group_type, self.beta, self.step = group_type, beta, 0
        self.k_idx: list[int] = []
        self.rho_t = torch.zeros(0)

    def _init_rho(self, model: MultiTaskModel) -> None:
        if self.group_type == 0:
            self.k_idx = [-1]
        elif self.group_type == 1:
            self.k_idx = [
                sum(w.data.numel() for w in module.parameters())
                for module in model.encoder.modules()
                if len(module._modules.items()) == 0 and len(module._parameters) > 0
            ]
        else:
            self.k_idx = [p.data.numel() for p in model.encoder.parameters()]
        self.rho_t = torch.zeros(T, T, len(self.k_idx))

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        if self.step == 0:
            self._init_rho(model)
        _, losses = task_losses(model, x, y)
        grads = libmtl_grads(model, losses)
        beta, rho_t = self.beta, self.rho_t
        pc_grads = grads.clone()
        for tn_i in range(T):
            task_index = list(range(T))
            task_index.remove(tn_i)
            random.shuffle(task_index)
            for tn_j in task_index:
                for k in range(len(self.k_idx)):
                    beg, end = sum(self.k_idx[:k]), sum(self.k_idx[: k + 1])
                    if end == -1:
                        end = grads.size()[-1]
                    gi, gj = pc_grads[tn_i, beg:end], grads[tn_j, beg:end]
                    rho_ijk = torch.dot(gi, gj) / (gi.norm() * gj.norm() + 1e-8)
                    if rho_ijk < rho_t[tn_i, tn_j, k]:
                        goal = rho_t[tn_i, tn_j, k]
                        w = gi.norm() * (goal * (1 - rho_ijk**2).sqrt() - rho_ijk * (1 - goal**2).sqrt())
                        w = w / (gj.norm() * (1 - goal**2).sqrt() + 1e-8)
                        pc_grads[tn_i, beg:end] += gj * w
                    rho_t[tn_i, tn_j, k] = (1 - beta) * rho_t[tn_i, tn_j, k] + beta * rho_ijk
        libmtl_reset_grad(model, pc_grads.sum(0))
        self.step += 1


def libmtl_imtl_alpha(grads: torch.Tensor) -> torch.Tensor:
    """LibMTL/weighting/IMTL.py, `IMTL.backward`'s closed form for alpha from grads [T, d]."""
    grads_unit = grads / torch.norm(grads, p=2, dim=-1, keepdim=True)
    d = grads[0:1].repeat(T - 1, 1) - grads[1:]
    u = grads_unit[0:1].repeat(T - 1, 1) - grads_unit[1:]
    alpha = torch.matmul(torch.matmul(grads[0], u.t()), torch.inverse(torch.matmul(d, u.t())))
    return torch.cat((1 - alpha.sum().unsqueeze(0), alpha), dim=0)


def libmtl_imtl_g_shared(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
    """`IMTL.backward` with rep_grad False, its loss scales left out: alpha from the shared-parameter gradients,
    the shared update sum_t alpha_t g_t (`_backward_new_grads`), the heads' raw gradients."""
    _, losses = task_losses(model, x, y)
    grads = libmtl_grads(model, losses)
    alpha = libmtl_imtl_alpha(grads)
    libmtl_reset_grad(model, sum(alpha[i] * grads[i] for i in range(T)))


def libmtl_imtl_g_representation(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
    """`IMTL.backward` with rep_grad True, its loss scales left out: each head reads its own detached copy of z
    (`_prepare_rep`), alpha from per_grads.reshape(T, batch, -1).sum(1) (`_get_grads`), then
    rep.backward(sum_t alpha_t per_grads_t) (`_backward_new_grads`); the heads keep their raw gradients."""
    rep = model.encoder(x)
    rep_tasks = {t: rep.detach().clone().requires_grad_(True) for t in TASKS}
    losses = [s * torch.mean((model.heads[t](rep_tasks[t]) - y[t]) ** 2) for s, t in zip(SCALES, TASKS, strict=True)]
    per_grads = torch.zeros(T, *rep.size())
    for tn, task in enumerate(TASKS):
        losses[tn].backward(retain_graph=tn + 1 != T)
        per_grads[tn] = rep_tasks[task].grad.data.clone()
    grads = per_grads.reshape(T, rep.size()[0], -1).sum(1)
    alpha = libmtl_imtl_alpha(grads)
    rep.backward(sum(alpha[i] * per_grads[i] for i in range(T)))


class LibMtlMoCo:
    """LibMTL/weighting/MoCo.py, `MoCo.backward` with its defaults (beta 0.5, beta_sigma 0.5, gamma 0.1,
    gamma_sigma 0.5, rho 0): loss-length gradients tracked in y, one softmax step for lambda, the update y^T lambda."""

    def __init__(self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5) -> None:
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma, self.rho = beta, beta_sigma, gamma, gamma_sigma, 0.0
        self.step = 0
        self.y: torch.Tensor | None = None
        self.lambd = torch.ones([T]) / T

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        _, losses = task_losses(model, x, y)
        if self.y is None:  # init_param
            self.y = torch.zeros(T, sum(p.numel() for p in model.encoder.parameters()))
        self.step += 1
        grads = libmtl_grads(model, losses)
        with torch.no_grad():
            for tn in range(T):
                grads[tn] = grads[tn] / (grads[tn].norm() + 1e-8) * losses[tn]
        self.y = self.y - (self.beta / self.step**self.beta_sigma) * (self.y - grads)
        step = self.gamma / self.step**self.gamma_sigma
        self.lambd = torch.softmax(self.lambd - step * (self.y @ self.y.t() + self.rho * torch.eye(T)) @ self.lambd, -1)
        libmtl_reset_grad(model, self.y.t() @ self.lambd)


def torchjd_on_representation(aggregator: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., None]:
    """TorchJD's aggregator applied to the whole dL_t/dz [T, batch x features]: z gets the aggregate, each head
    its raw gradient."""

    def step(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        z, losses = task_losses(model, x, y)
        rows = []
        for t, loss in zip(TASKS, losses, strict=True):
            head = list(model.heads[t].parameters())
            grads = torch.autograd.grad(loss, [z, *head], retain_graph=True)
            rows.append(grads[0].reshape(-1))
            for p, g in zip(head, grads[1:], strict=True):
                p.grad = g
        z.backward(aggregator(torch.stack(rows)).view_as(z))

    return step


def single_examples() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """The batches of `batches()` cut to their first example (where summing dL/dz over the batch changes nothing)."""
    return [(x[:1], {t: v[:1] for t, v in y.items()}) for x, y in batches()]


def moved_by_surgery(method: Method) -> list[bool]:
    """Wraps `method.backward`: records, per step, whether the shared weights differ from all ones (some
    projection or vaccination happened, so the orders mattered)."""
    seen: list[bool] = []
    backward = method.backward

    def recording(step: Step) -> torch.Tensor:
        weights = backward(step)
        seen.append(bool((weights - 1).abs().max() > 1e-9))
        return weights

    method.backward = recording  # type: ignore[method-assign]
    return seen


# ---------------------------------------------------------------- PCGrad
def test_pcgrad_is_libmtls_update_in_the_same_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    ours = build("pcgrad")
    SameOrders(ours, monkeypatch)
    projected = moved_by_surgery(ours)
    assert assert_same_updates(ours, libmtl_pcgrad, batches()) > 1e-3
    assert any(projected)  # some gradients conflicted: the projections (and their order) were exercised


def test_pcgrad_is_torchjds_update_in_the_same_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchjd.aggregation import PCGrad

    ours = build("pcgrad")
    SameOrders(ours, monkeypatch)
    assert assert_same_updates(ours, reference_step(PCGrad()), batches()) > 1e-3


def test_pcgrad_skips_the_self_projection_libmtl_makes_in_a_corner_case() -> None:
    """LibMTL (and the authors' code) shuffle all tasks, i included: after g_1 is projected off g_2 and g_3 here,
    g_1^PC . g_1 < 0, and LibMTL then projects g_1^PC off g_1 too. `mtl` skips j = i, as the paper's Algorithm 1
    and TorchJD; on the conformance model no such step occurs (the tests above)."""
    from mtlcli.methods.pcgrad import pcgrad_coefficients

    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [-1.0, -0.414]])
    orders = [[1, 2, 0], [0, 1, 2], [2, 0, 1]]
    ours = pcgrad_coefficients(grads @ grads.T, orders)[0] @ grads
    theirs = grads[0].clone()
    for j in orders[0]:  # LibMTL's inner loop for task 0, its 1e-8 left out
        g_ij = torch.dot(theirs, grads[j])
        if g_ij < 0:
            theirs -= g_ij * grads[j] / grads[j].norm().pow(2)
    assert float(torch.dot(ours, grads[0])) < 0  # the corner: g_1^PC . g_1 < 0 when task 0 itself comes up
    assert float(torch.dot(theirs, grads[0])) == pytest.approx(0, abs=1e-12)  # LibMTL projected it off g_1
    assert float((ours - theirs).abs().max()) > 0.05


# ---------------------------------------------------------------- GradVac
@pytest.mark.parametrize(("groups", "group_type"), [("whole", 0), ("layer", 1), ("matrix", 2)])
def test_gradvac_is_libmtls_update_for_each_group_type(groups: str, group_type: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (`groups: whole`, LibMTL's default group type 0) and the per-layer / per-matrix goals, over
    10 steps (the goals become nonzero after the first)."""
    ours = build("gradvac", **({} if groups == "whole" else {"groups": groups}))
    SameOrders(ours, monkeypatch)
    vaccinated = moved_by_surgery(ours)
    assert assert_same_updates(ours, LibMtlGradVac(group_type), batches() + batches(seed=2)) > 1e-3
    assert sum(vaccinated) >= 2


# ---------------------------------------------------------------- IMTL-G
def test_imtl_g_exact_is_libmtls_update_on_the_shared_parameters() -> None:
    assert assert_same_updates(build("imtl-g-exact"), libmtl_imtl_g_shared, batches()) > 1e-3
    assert assert_same_updates(build("imtl-g", level="shared"), libmtl_imtl_g_shared, batches()) > 1e-3


def test_imtl_g_exact_is_torchjds_update() -> None:
    from torchjd.aggregation import IMTLG

    assert assert_same_updates(build("imtl-g-exact"), reference_step(IMTLG()), batches()) > 1e-3


def test_imtl_g_is_torchjds_imtlg_on_the_whole_representation_gradient() -> None:
    from torchjd.aggregation import IMTLG

    assert assert_same_updates(build("imtl-g"), torchjd_on_representation(IMTLG()), batches()) > 1e-3


def test_imtl_g_is_libmtls_representation_update_on_single_examples() -> None:
    assert assert_same_updates(build("imtl-g"), libmtl_imtl_g_representation, single_examples()) > 1e-4


def test_libmtls_batch_summed_representation_gradients_give_another_update() -> None:
    """On full batches LibMTL's alpha (from dL/dz summed over the examples) is not the paper's: the updates differ."""
    model = small_model()
    other = copy.deepcopy(model)
    (x, y), *_ = batches()
    method = build("imtl-g")
    z, losses = task_losses(model, x, y)
    method.backward(Step.of(model, z, losses))
    libmtl_imtl_g_representation(other, x, y)
    pairs = zip(model.encoder.parameters(), other.encoder.parameters(), strict=True)
    assert max(float((a.grad - b.grad).abs().max()) for a, b in pairs) > 1e-6


# ---------------------------------------------------------------- MoCo
def test_moco_is_libmtls_update() -> None:
    assert assert_same_updates(build("moco"), LibMtlMoCo(), batches() + batches(seed=2)) > 1e-3
