"""The loss-weighting methods' default updates equal their reference implementations' (issue 16, part 5).

Same set-up as tests/unit/methods/test_conformance.py (its small float64 model, losses scaled x0.1, x1, x10,
SGD, parameters equal to 1e-6 after every step): `mtl` with the method built with NO options against the
reference's backward, transcribed below from

- LibMTL: median-research-group/LibMTL, commit 4336804 (LibMTL/weighting/GLS.py, RLW.py, UW.py, DWA.py,
  STCH.py; its trainer.py keeps `train_loss_buffer[:, epoch]`, the epoch's mean batch losses, and puts the
  weighting's `loss_scale` into the model's optimiser);
- the authors' own code where it exists: lorenmt/mtan, commit c36c30b, im2im_pred/utils.py
  `multi_task_trainer` (DWA, `--temp 2.0`; and the uncertainty weighting LibMTL's UW.py copies, log-variances
  -0.5 at the start in model_segnet_mtan.py), and Xi-L/STCH, commit a510c1e,
  STCH_MTL/LibMTL/weighting/STCH.py (identical to LibMTL's STCH.py; `STCH_mu` 1.0, `STCH_warmup_epoch` 4).

The epoch-paced methods (DWA, STCH) run several epochs of two steps: `mtl` gets `end_epoch` with each epoch's
mean losses, as the trainer does; the references count their steps and keep their own epoch buffers.

RLW draws random weights: LibMTL draws them from torch's global generator, `mtl` from its own CPU generator
seeded with the run's seed (`torch.initial_seed()`) at `setup`. The transcription draws LibMTL's
`torch.randn(task_num)` from a generator seeded the same way (the seed `small_model` sets), so both sides see
the same draws.

GradNorm's default is the paper's Algorithm 1, transcribed below (the authors published no code; LibMTL's
GradNorm.py differs on purpose, as mtlcli/methods/gradnorm.py lists). The hybrid `imtl` is the paper's Algorithm 1
on dL_t/dz; LibMTL's IMTL.py (commit 4336804) with `rep_grad` is the same step except that it sums dL_t/dz over
the batch before solving for alpha, so the two are compared on batches of one example, and shown to differ on
batches of 16; without `rep_grad` (its default) LibMTL solves on the shared parameters. IMTL-L has no public
reference (LibMTL's IMTL.py is the hybrid).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mtlcli.methods import build
from mtlcli.models import MultiTaskModel
from tests.unit.methods.test_conformance import SCALES, TASKS, assert_same_updates, batches, task_losses

pytestmark = pytest.mark.usefixtures("float64")  # double precision (tests/unit/methods/conftest.py)
EPOCH_STEPS = 2  # steps per epoch for DWA and STCH


def libmtl_gls(model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
    """LibMTL's `GLS.backward`: (prod_t L_t)^(1/T), one backward."""
    _, losses = task_losses(model, x, y)
    losses = torch.stack(losses)
    torch.pow(losses.prod(), 1.0 / len(TASKS)).backward()


class LibMtlRlw:
    """LibMTL's `RLW.backward`: weights softmax(randn(T)), drawn here from a generator seeded like `mtl`'s."""

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        if self.generator is None:  # seeded with the run's seed, as `mtl` seeds its own at `setup`
            self.generator = torch.Generator().manual_seed(torch.initial_seed())
        _, losses = task_losses(model, x, y)
        batch_weight = F.softmax(torch.randn(len(TASKS), generator=self.generator), dim=-1)
        torch.mul(torch.stack(losses), batch_weight).sum().backward()


class LibMtlUw:
    """LibMTL's `UW` (MTAN's `--weight uncert`): sum_t L_t / (2 exp(s_t)) + s_t / 2, s_t = -0.5 at the start,
    optimised with the model."""

    def __init__(self) -> None:
        self.loss_scale = nn.Parameter(torch.tensor([-0.5] * len(TASKS)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.loss_scale]

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        _, losses = task_losses(model, x, y)
        (torch.stack(losses) / (2 * self.loss_scale.exp()) + self.loss_scale / 2).sum().backward()


class AuthorsDwa:
    """MTAN's `multi_task_trainer` with `opt.weight == 'dwa'` (three tasks, T = `opt.temp` = 2): lambda = 1 in
    epochs 0 and 1, then 3 exp(w_k / T) / sum_i exp(w_i / T) with w_k = avg_cost[e-1, k] / avg_cost[e-2, k],
    avg_cost the epoch's mean batch losses; the network minimises sum_k lambda_k L_k. (MTAN keeps avg_cost in
    float32; here it is float64, like the rest of the comparison.) LibMTL's DWA.py computes the same weights
    from its `train_loss_buffer` (`self.epoch > 1`)."""

    def __init__(self, epoch_steps: int, temperature: float = 2.0) -> None:
        self.train_batch, self.T, self.step = epoch_steps, temperature, 0
        self.avg_cost: list[np.ndarray] = []
        self.lambda_weight = np.ones(3)

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        index, k = divmod(self.step, self.train_batch)
        if k == 0:  # the start of epoch `index`
            if index in (0, 1):
                self.lambda_weight = np.ones(3)
            else:
                w = self.avg_cost[index - 1] / self.avg_cost[index - 2]
                self.lambda_weight = 3 * np.exp(w / self.T) / np.exp(w / self.T).sum()
            self.avg_cost.append(np.zeros(3))
        _, train_loss = task_losses(model, x, y)
        loss = sum(float(self.lambda_weight[i]) * train_loss[i] for i in range(3))
        loss.backward()
        self.avg_cost[index] += np.array([loss_i.item() for loss_i in train_loss]) / self.train_batch
        self.step += 1


class AuthorsStch:
    """The authors' `STCH.backward` (Xi-L/STCH = LibMTL): sum_t log(L_t + 1e-20) in epochs < warmup_epoch and in
    epoch warmup_epoch, whose batch losses are averaged into the nadir n; then
    T mu log sum_t exp((l_t - max l) / mu), l_t = log(L_t / n_t + 1e-20)."""

    def __init__(self, epoch_steps: int, mu: float = 1.0, warmup_epoch: int = 4) -> None:
        self.epoch_steps, self.mu, self.warmup_epoch, self.step = epoch_steps, mu, warmup_epoch, 0
        self.nadir_vector: torch.Tensor | None = None
        self.average_loss: torch.Tensor | float = 0.0
        self.average_loss_count = 0

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        epoch = self.step // self.epoch_steps
        self.step += 1
        _, losses = task_losses(model, x, y)
        losses = torch.stack(losses)
        if epoch < self.warmup_epoch:
            torch.log(losses + 1e-20).sum().backward()
        elif epoch == self.warmup_epoch:
            self.average_loss = self.average_loss + losses.detach()
            self.average_loss_count += 1
            torch.log(losses + 1e-20).sum().backward()
        else:
            if self.nadir_vector is None:
                self.nadir_vector = self.average_loss / self.average_loss_count
            logs = torch.log(losses / self.nadir_vector + 1e-20)
            reg_losses = logs - torch.max(logs.data).detach()
            (self.mu * torch.log(torch.sum(torch.exp(reg_losses / self.mu))) * len(TASKS)).backward()


class PaperGradNorm:
    """GradNorm as the paper's Algorithm 1 (Chen et al., ICML 2018; the authors published no code): weights
    w_i = 1 and L_i(0) from the first step; G_i = ||grad_W (w_i L_i)|| on the last shared layer's weight W (a
    graph kept for w); L_grad = sum_i |G_i - mean(G) r_i^alpha| with the target constant, r_i the loss ratio
    L_i / L_i(0) over its mean; the network steps on sum_i w_i L_i with this step's weights, w on grad_w L_grad
    (Adam, lr 0.025), then w is renormalised to sum T. alpha 1.5 (the paper's NYUv2 value)."""

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        self.alpha = alpha
        self.w = nn.Parameter(torch.ones(len(TASKS)))
        self.optimizer = torch.optim.Adam([self.w], lr=lr)
        self.initial: torch.Tensor | None = None

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        _, losses = task_losses(model, x, y)
        layer = model.encoder[2].weight  # the last shared layer
        if self.initial is None:
            self.initial = torch.stack(losses).detach()
        norms = torch.stack(
            [
                torch.autograd.grad(self.w[i] * loss, layer, retain_graph=True, create_graph=True)[0].norm()
                for i, loss in enumerate(losses)
            ]
        )
        ratio = torch.stack(losses).detach() / self.initial
        target = (norms.mean() * (ratio / ratio.mean()) ** self.alpha).detach()
        w_grad = torch.autograd.grad(torch.sum(torch.abs(norms - target)), self.w, retain_graph=True)[0]
        sum(self.w[i].detach() * loss for i, loss in enumerate(losses)).backward()
        self.optimizer.zero_grad()
        self.w.grad = w_grad
        self.optimizer.step()
        with torch.no_grad():
            self.w.mul_(len(TASKS) / self.w.sum())


def test_gradnorm_is_the_papers_algorithm() -> None:
    """Not LibMTL's GradNorm.py, which differs on purpose (mtlcli/methods/gradnorm.py lists how)."""
    ours = build("gradnorm")
    reference = PaperGradNorm()
    assert assert_same_updates(ours, reference, batches(1) + batches(2)) > 1e-3
    torch.testing.assert_close(ours.w.detach(), reference.w.detach(), rtol=1e-6, atol=1e-6)
    assert float((reference.w.detach() - 1).abs().max()) > 1e-2  # the weights moved


class LibMtlImtlRepGrad:
    """LibMTL's `IMTL.backward` with `rep_grad` (its representation form; HPS's `_prepare_rep` gives each head
    a detached copy of z): losses e^{s_t} L_t - s_t, one backward each (heads and s_t get their gradients),
    alpha = g_1 U^T (D U^T)^-1 from the z-gradients SUMMED over the batch, then z.backward(sum_t alpha_t dl_t/dz)."""

    def __init__(self) -> None:
        self.loss_scale = nn.Parameter(torch.zeros(len(TASKS)))

    def parameters(self) -> list[nn.Parameter]:
        return [self.loss_scale]

    def __call__(self, model: MultiTaskModel, x: torch.Tensor, y: dict[str, torch.Tensor]) -> None:
        rep = model.encoder(x)
        rep_tasks = {t: rep.detach().clone().requires_grad_(True) for t in TASKS}
        raw = [s * torch.mean((model.heads[t](rep_tasks[t]) - y[t]) ** 2) for s, t in zip(SCALES, TASKS, strict=True)]
        losses = self.loss_scale.exp() * torch.stack(raw) - self.loss_scale
        per_grads = []
        for tn, task in enumerate(TASKS):
            losses[tn].backward(retain_graph=tn + 1 != len(TASKS))
            per_grads.append(rep_tasks[task].grad.clone())
        per_grads = torch.stack(per_grads)
        grads = per_grads.reshape(len(TASKS), rep.size()[0], -1).sum(1)
        grads_unit = grads / torch.norm(grads, p=2, dim=-1, keepdim=True)
        D = grads[0:1].repeat(len(TASKS) - 1, 1) - grads[1:]
        U = grads_unit[0:1].repeat(len(TASKS) - 1, 1) - grads_unit[1:]
        alpha = torch.matmul(torch.matmul(grads[0], U.t()), torch.inverse(torch.matmul(D, U.t())))
        alpha = torch.cat((1 - alpha.sum().unsqueeze(0), alpha), dim=0)
        rep.backward(sum(alpha[i] * per_grads[i] for i in range(len(TASKS))))


def single_examples(seed: int = 4) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Batches of one example (the batch sum of dL/dz is then dL/dz itself)."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(1, 5, generator=generator), {t: torch.randn(1, 1, generator=generator) for t in TASKS})
        for _ in range(5)
    ]


def test_imtl_is_libmtls_representation_form_on_single_examples() -> None:
    """`imtl` (the paper's Algorithm 1 on dL_t/dz) equals LibMTL's IMTL with `rep_grad` where the batch sum LibMTL
    takes before solving for alpha changes nothing: one example per batch. Scales, heads and encoder all agree."""
    ours = build("imtl")
    reference = LibMtlImtlRepGrad()
    assert assert_same_updates(ours, reference, single_examples()) > 1e-3
    torch.testing.assert_close(ours.s.detach(), reference.loss_scale.detach(), rtol=1e-9, atol=1e-9)


def test_imtl_is_not_libmtls_batch_summed_form_on_batches() -> None:
    """On batches of 16 LibMTL's batch-summed Gram matrix gives other weights: the difference the README states."""
    with pytest.raises(AssertionError, match="not close"):
        assert_same_updates(build("imtl"), LibMtlImtlRepGrad(), batches())


def test_gls_is_libmtls_update() -> None:
    assert assert_same_updates(build("gls"), libmtl_gls, batches()) > 1e-3


def test_rlw_is_libmtls_update_on_the_same_draws() -> None:
    assert assert_same_updates(build("rlw"), LibMtlRlw(), batches()) > 1e-3


def test_uncertainty_is_mtans_and_libmtls_update() -> None:
    ours = build("uncertainty")
    reference = LibMtlUw()
    assert assert_same_updates(ours, reference, batches()) > 1e-3
    # the same objective, reparametrised: s_t = s'_t + log 2 all along, and both scales moved
    torch.testing.assert_close(ours.s.detach(), reference.loss_scale.detach() + np.log(2.0), rtol=1e-9, atol=1e-9)
    assert float((reference.loss_scale.detach() + 0.5).abs().max()) > 1e-3


def test_dwa_is_the_authors_update_across_epochs() -> None:
    data = batches(1) + batches(2)  # 10 steps: 5 epochs of 2, the weights move from epoch 2 on
    ours = build("dwa")
    assert assert_same_updates(ours, AuthorsDwa(EPOCH_STEPS), data, epoch_steps=EPOCH_STEPS) > 1e-3
    assert ours.epochs == 5 and float((ours.weights - 1).abs().max()) > 1e-4  # non-trivial weights were used


def test_stch_is_the_authors_update_after_the_warm_up() -> None:
    data = batches(1) + batches(2) + batches(3)  # 15 steps: warm-up epochs 0..4 (10 steps), then 5 STCH steps
    ours = build("stch")
    assert assert_same_updates(ours, AuthorsStch(EPOCH_STEPS), data, epoch_steps=EPOCH_STEPS) > 1e-3
    assert ours.recorded and ours.epochs == 7
