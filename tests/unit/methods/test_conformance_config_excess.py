"""ConFIG's and ExcessMTL's default updates equal their references' (issue 16, item 4), on the float64 small
model of `test_conformance` (three heads, losses x0.1, x1, x10), over 10 SGD steps, to 1e-6.

ConFIG: two references.
- The authors' MTL experiment step (tum-pbs/ConFIG, commit 9486243, experiments/MTL/methods/weight_methods.py
  `ConFIG._set_config_grads`, with conflictfree/grad_operator.py `ConFIGOperator` -> `ConFIG_update` for three
  losses, its defaults: equal weights, `ProjectionLength`, `use_least_square=True`), transcribed: per-task gradients
  of the shared parameters, the update from `torch.linalg.lstsq` of the unit gradients, the heads' gradients from
  `losses.sum()`.
- TorchJD 0.18's `ConFIG()` (aggregation/_config.py, adapted from the authors' code: `pinv` instead of `lstsq`) with
  `mtl_backward` (each head its raw gradient).

ExcessMTL: the authors' `ExcessMTL.backward` (uiuctml/ExcessMTL, commit b179956, LibMTL/LibMTL/weighting/ExcessMTL.py;
identical in median-research-group/LibMTL, commit 4336804), transcribed with `rep_grad` False: per-task gradients of
the shared parameters (`_get_grads(mode='autograd')`), the squared-gradient sum, the excess risks, the first step
setting E(0) only, then w <- w exp(eta E / E(0)) normalised to sum T, and `(losses * w).sum().backward()`. Run with
the authors' default eta = 1e-2 and with eta = 1 (their README's Office-Home command), where the weights move far
from 1. TorchJD's `ExcessMTL` is not the reference: it starts at 1/T, updates at the first call, adds 1e-7 to E(0).
"""

from __future__ import annotations

import pytest
import torch

from mtlcli.methods import build
from tests.unit.methods.test_conformance import (
    TASKS,
    Reference,
    assert_same_updates,
    batches,
    reference_step,
    task_losses,
)

pytest.importorskip("torchjd")
pytestmark = pytest.mark.usefixtures("float64")



def ten_steps() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    return batches() + batches(seed=2)  # made in the test: float64 (the fixture)


def _write(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def authors_config_step(model, x, y) -> None:
    """`ConFIG._set_config_grads` with `ConFIG_update(grads)` (three losses: no two-loss shortcut)."""
    shared = list(model.encoder.parameters())
    heads = [p for name in TASKS for p in model.heads[name].parameters()]
    _, losses = task_losses(model, x, y)
    losses = torch.stack(losses)
    grads = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
    )
    with torch.no_grad():
        weights = torch.ones(grads.shape[0])  # EqualWeight
        units = torch.nan_to_num(grads / grads.norm(dim=1).unsqueeze(1), 0)
        best_direction = torch.linalg.lstsq(units, weights).solution
        unit_target = best_direction / best_direction.norm()  # unit_vector (non-zero here)
        update = torch.sum(torch.stack([torch.dot(g, unit_target) for g in grads])) * unit_target  # ProjectionLength
    _write(shared, update)
    for p, g in zip(heads, torch.autograd.grad(losses.sum(), heads), strict=True):
        p.grad = g


def torchjd_config_step() -> Reference:
    from torchjd.aggregation import ConFIG

    return reference_step(ConFIG())


@pytest.mark.parametrize("reference", ["authors", "torchjd"])
def test_config_is_the_reference_update(reference: str) -> None:
    theirs = authors_config_step if reference == "authors" else torchjd_config_step()
    assert assert_same_updates(build("config"), theirs, ten_steps()) > 1e-3


class AuthorsExcessMtl:
    """The authors' `ExcessMTL` (`init_param` + `backward`, rep_grad False), transcribed."""

    def __init__(self, robust_step_size: float = 1e-2) -> None:
        self.robust_step_size = robust_step_size
        self.loss_weight = torch.tensor([1.0] * len(TASKS))
        self.grad_sum = None
        self.first_epoch = True
        self.initial_w = None
        self.history: list[torch.Tensor] = []

    def __call__(self, model, x, y) -> None:
        shared = list(model.encoder.parameters())
        _, losses = task_losses(model, x, y)
        losses = torch.stack(losses)
        grads = torch.stack(
            [torch.cat([g.view(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)]) for loss in losses]
        )
        if self.grad_sum is None:
            self.grad_sum = torch.zeros_like(grads)
        w = torch.zeros(len(TASKS))
        for i in range(len(TASKS)):
            self.grad_sum[i] += grads[i] ** 2
            grad_i = grads[i]
            h_i = torch.sqrt(self.grad_sum[i] + 1e-7)
            w[i] = grad_i * (1 / h_i) @ grad_i.t()
        if self.first_epoch:
            self.initial_w = w
            self.first_epoch = False
        else:
            w = w / self.initial_w
            self.loss_weight = self.loss_weight * torch.exp(w * self.robust_step_size)
            self.loss_weight = self.loss_weight / self.loss_weight.sum() * len(TASKS)
            self.loss_weight = self.loss_weight.detach().clone()
        self.history.append(self.loss_weight)
        torch.mul(losses, self.loss_weight).sum().backward()


@pytest.mark.parametrize("robust_step_size", [None, 1.0])
def test_excess_mtl_is_the_authors_update(robust_step_size: float | None) -> None:
    options = {} if robust_step_size is None else {"robust_step_size": robust_step_size}
    theirs = AuthorsExcessMtl(robust_step_size or 1e-2)
    assert assert_same_updates(build("excess-mtl", **options), theirs, ten_steps()) > 1e-3
    spread = float(theirs.history[-1].max() - theirs.history[-1].min())
    assert spread > (0.5 if robust_step_size == 1.0 else 1e-3)  # the weights matter in the comparison
