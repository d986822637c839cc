"""FAMO (Liu et al., NeurIPS 2023) against the authors' formulas: the model's gradient, the logits' update
(softmax Jacobian-vector product, then Adam with L2 weight decay), its defining behaviour (the task whose
loss falls more slowly gains weight), checkpointing, and non-finite steps."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from mtlcli.methods import build
from mtlcli.methods.base import Step
from mtlcli.methods.famo import Famo
from mtlcli.models import MultiTaskModel

CPU = torch.device("cpu")


def famo(num_tasks: int = 3, **options: Any) -> Famo:
    """FAMO driven by `backward` alone: the next-batch update (the same-batch default needs `after_update`)."""
    method = build("famo", **{"update": "next-batch", **options})
    assert isinstance(method, Famo)
    method.setup(num_tasks, CPU)
    return method


def leaf_step(values: list[float] | torch.Tensor) -> Step:
    """A step whose losses are leaves (no network): FAMO needs only the losses."""
    return Step(model=None, z=None, losses=torch.as_tensor(values, dtype=torch.get_default_dtype()).clone().requires_grad_(True))  # type: ignore[arg-type]


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 4)

    @property
    def last_layer(self) -> nn.Module:
        return self.fc

    def forward(self, x):
        return torch.tanh(self.fc(x))


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    model = MultiTaskModel(_Encoder(), {"a": nn.Linear(4, 1), "b": nn.Linear(4, 1), "c": nn.Linear(4, 1)})
    x = torch.randn(16, 5)
    targets = torch.randn(16, 3)
    scales = torch.tensor([1.0, 10.0, 0.1])

    def step() -> Step:
        model.zero_grad(set_to_none=True)
        z, out = model(x)
        losses = torch.stack([((out[n].squeeze(1) - targets[:, i]) ** 2).mean() for i, n in enumerate("abc")]) * scales
        return Step.of(model, z, list(losses.unbind()))

    return model, step


def test_model_gradient_is_the_reference_weighted_log_loss_gradient() -> None:
    model, make_step = _problem()
    method = famo()
    logits = torch.tensor([0.3, -0.5, 1.1])
    method.w.copy_(logits)  # first step: no previous losses, so w is used as it is
    step = make_step()
    weights = method.backward(step)
    got = [p.grad.clone() for p in model.parameters()]

    # by hand: sum_t z_t / (c D_t) dL_t/dtheta, with per-task gradients
    losses = make_step().losses
    z = torch.softmax(logits, -1)
    d = losses.detach() + 1e-8
    c = (z / d).sum()
    per_task = [torch.autograd.grad(losses[t], list(model.parameters()), retain_graph=True, allow_unused=True) for t in range(3)]
    for i, p in enumerate(model.parameters()):
        expected = sum(
            (z[t] / (c * d[t])) * (per_task[t][i] if per_task[t][i] is not None else torch.zeros_like(p)) for t in range(3)
        )
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-7)

    # and the reference's own surrogate, (log(D) z / c).sum() with c detached
    model.zero_grad(set_to_none=True)
    losses = make_step().losses
    dd = losses + 1e-8
    (dd.log() * z / (z / dd).sum().detach()).sum().backward()
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(got[i], p.grad, rtol=1e-5, atol=1e-7)

    torch.testing.assert_close(weights, z / (c * d))
    assert abs(float(weights.sum()) - 1) < 1e-6 and not weights.requires_grad


@pytest.mark.parametrize("gamma", [0.0, 0.01, 0.5])
def test_logit_update_is_the_softmax_jvp_followed_by_torch_adam(gamma: float, float64: None) -> None:
    gen = torch.Generator().manual_seed(1)
    method = famo(4, gamma=gamma, w_lr=0.05)
    w_ref = torch.zeros(4, requires_grad=True)
    adam = torch.optim.Adam([w_ref], lr=0.05, weight_decay=gamma)
    losses = torch.rand(4, generator=gen) + 0.1
    method.backward(leaf_step(losses))  # stores the first losses; no update yet
    assert torch.equal(method.w, torch.zeros(4))
    for _ in range(6):
        new = losses * (0.5 + torch.rand(4, generator=gen))
        method.backward(leaf_step(new))
        delta = torch.log(losses + 1e-8) - torch.log(new + 1e-8)
        z = torch.softmax(w_ref.detach(), -1)
        jacobian = torch.diag(z) - torch.outer(z, z)  # d softmax / d w, symmetric
        adam.zero_grad()
        w_ref.grad = jacobian.T @ delta
        adam.step()
        assert method.w.dtype == torch.float64
        torch.testing.assert_close(method.w, w_ref.detach(), rtol=1e-12, atol=1e-14)
        losses = new
    state = adam.state[w_ref]
    torch.testing.assert_close(method.state_dict()["exp_avg"], state["exp_avg"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(method.state_dict()["exp_avg_sq"], state["exp_avg_sq"], rtol=1e-12, atol=1e-16)
    assert float(method.state_dict()["step"]) == float(state["step"]) == 6


def test_constant_losses_leave_the_logits_alone_but_for_weight_decay(float64: None) -> None:
    still = famo(3, gamma=0.0)
    for _ in range(5):
        still.backward(leaf_step([0.7, 2.0, 0.01]))
    assert torch.equal(still.w, torch.zeros(3))

    start = torch.tensor([0.4, -0.2, 0.1])
    decayed = famo(3, gamma=0.1, w_lr=0.02)
    decayed.w.copy_(start)
    w_ref = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([w_ref], lr=0.02, weight_decay=0.1)
    decayed.backward(leaf_step([0.7, 2.0, 0.01]))
    for _ in range(5):
        decayed.backward(leaf_step([0.7, 2.0, 0.01]))  # delta = 0: only the decay gamma * w pulls
        adam.zero_grad()
        w_ref.grad = torch.zeros(3)
        adam.step()
    torch.testing.assert_close(decayed.w, w_ref.detach(), rtol=1e-12, atol=1e-14)
    assert float(decayed.w.abs().sum()) < float(start.abs().sum())


def test_the_task_whose_loss_falls_more_slowly_gains_weight() -> None:
    """Task 0's loss falls 10% a step, task 1's 1%: FAMO moves weight to task 1's log-loss."""
    method = famo(2)
    z = []
    for k in range(60):
        losses = torch.tensor([2.0 * 0.9**k, 2.0 * 0.99**k])
        weights = method.backward(leaf_step(losses))
        z.append(torch.softmax(method.w, -1))
    assert float(z[-1][1]) > 0.8 and float(z[-1][1]) > float(z[10][1]) > 0.5
    # the effective weights on the raw losses are z_t / (c L_t): their share of the log-loss gradient is z
    torch.testing.assert_close(weights * (losses + 1e-8), z[-1] * float((weights * (losses + 1e-8)).sum()))
    # and the other way round
    method = famo(2)
    for k in range(60):
        method.backward(leaf_step([2.0 * 0.99**k, 2.0 * 0.9**k]))
    assert float(torch.softmax(method.w, -1)[0]) > 0.8


def test_on_a_shared_model_famo_balances_the_log_loss_decrease_rates() -> None:
    """Two tasks on one shared weight vector: with uniform weights the easy task's log-loss falls far faster;
    FAMO shifts weight to the hard task and narrows the gap."""

    def run(method_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        theta = torch.zeros(2, requires_grad=True)
        opt = torch.optim.SGD([theta], lr=0.05)
        method = build(method_name)
        method.setup(2, CPU)
        first = None
        for _ in range(100):
            opt.zero_grad()
            losses = torch.stack([(theta[0] - 1) ** 2 + 0.01, 0.05 * (theta[1] - 1) ** 2 + 0.01])  # task 1: flat
            first = losses.detach() if first is None else first
            weights = method.backward(Step(model=None, z=None, losses=losses))  # type: ignore[arg-type]
            opt.step()
            method.after_update(lambda: torch.stack([(theta[0] - 1) ** 2 + 0.01, 0.05 * (theta[1] - 1) ** 2 + 0.01]).detach())
        return torch.log(first) - torch.log(losses.detach()), weights

    uniform_drop, _ = run("uniform")
    famo_drop, weights = run("famo")
    assert float(weights[1]) > float(weights[0])
    assert float(famo_drop[1]) > float(uniform_drop[1])  # the slow task got further
    assert float(famo_drop[0] / famo_drop[1]) < float(uniform_drop[0] / uniform_drop[1])


def test_state_round_trips_and_the_next_steps_are_identical() -> None:
    gen = torch.Generator().manual_seed(2)
    a = famo(3)
    for _ in range(5):
        a.backward(leaf_step(torch.rand(3, generator=gen) + 0.05))
    b = famo(3)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"w", "exp_avg", "exp_avg_sq", "step", "prev_losses"}
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.w, torch.zeros(3))
    for _ in range(4):
        losses = torch.rand(3, generator=gen) + 0.05
        sa, sb = leaf_step(losses), leaf_step(losses)
        assert torch.equal(a.backward(sa), b.backward(sb))
        assert torch.equal(sa.losses.grad, sb.losses.grad)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    saved = a.state_dict()
    a.backward(leaf_step([0.3, 0.2, 0.1]))
    assert not torch.equal(saved["w"], a.w)  # state_dict is a copy, not a view


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_leave_the_logits_and_adam_untouched(bad: float) -> None:
    gen = torch.Generator().manual_seed(3)
    a, twin = famo(3), famo(3)
    for _ in range(4):
        losses = torch.rand(3, generator=gen) + 0.05
        a.backward(leaf_step(losses))
        twin.backward(leaf_step(losses))
    before = a.state_dict()
    a.backward(leaf_step([0.3, bad, 0.2]))  # the trainer's guard sees the loss, and stops or skips the step
    after = a.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    # the next finite step measures the decrease from the last finite losses, as if the bad step never happened
    losses = torch.rand(3, generator=gen) + 0.05
    assert torch.equal(a.backward(leaf_step(losses)), twin.backward(leaf_step(losses)))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), twin.state_dict().values(), strict=True))


def test_famo_in_the_trainer_resumes_exactly_and_survives_skipped_steps(data_dir, tmp_path) -> None:
    """Through the real trainer: an interrupted run resumes to the same model and FAMO state, bit for bit; under
    `on_nonfinite: skip` dropped steps leave FAMO's state as it was."""
    import signal

    from mtlcli.training import Trainer, TrainingInterrupted
    from tests.integration._reliability import recipe, trainer
    from tests.integration.test_nonfinite import poison_task

    raw = recipe(data_dir, tmp_path / "out", epochs=2)
    raw["method"] = {"name": "famo"}
    straight = trainer(raw)
    straight.run()
    interrupted = trainer(raw)
    backward, calls = interrupted.method.backward, []

    def stop_mid_epoch_two(step: Step) -> torch.Tensor:
        calls.append(1)
        if len(calls) == straight.global_step // 2 + 2:
            signal.raise_signal(signal.SIGTERM)
        return backward(step)

    interrupted.method.backward = stop_mid_epoch_two  # type: ignore[method-assign]
    with pytest.raises(TrainingInterrupted):
        interrupted.run()
    assert interrupted.run_dir is not None
    resumed = Trainer.resume(interrupted.run_dir, show_progress=False)
    assert resumed.position.epoch == 2 and resumed.position.batch > 0
    resumed.run()
    for key, value in straight.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key
    assert not torch.equal(straight.method.state_dict()["w"], torch.zeros(2))
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    raw = recipe(data_dir, tmp_path / "skip", epochs=1, on_nonfinite="skip")
    raw["method"] = {"name": "famo", "update": "next-batch"}  # one forward per step: the hooks below count them
    t = trainer(raw)
    poison_task(t, "right", {3})
    states: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(module: nn.Module, _args: Any) -> None:
        if module.training:
            states[t.global_step + 1] = t.method.state_dict()

    t.model.register_forward_pre_hook(snapshot)
    t.run()
    assert t.skipped_steps == 1
    assert not torch.equal(states[2]["w"], states[3]["w"])  # step 2 measured step 1's update and moved w
    assert all(torch.equal(states[3][k], states[4][k]) for k in states[3])  # step 3 (NaN) changed nothing
    assert torch.isfinite(t.method.w).all()


class AuthorsFamo:
    """The authors' FAMO (Cranial-XIX/FAMO, commit 0a6ad06, famo.py), transcribed; `max_norm` 0 (their NYUv2
    trainer's clip runs before the backward and clips nothing)."""

    def __init__(self, n_tasks: int, gamma: float = 0.01, w_lr: float = 0.025) -> None:
        self.min_losses = torch.zeros(n_tasks)
        self.w = torch.tensor([0.0] * n_tasks, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=w_lr, weight_decay=gamma)

    def backward(self, losses: torch.Tensor) -> None:
        self.prev_loss = losses
        z = torch.softmax(self.w, -1)
        d = losses - self.min_losses + 1e-8
        c = (z / d).sum().detach()
        (d.log() * z / c).sum().backward()

    def update(self, curr_loss: torch.Tensor) -> None:
        delta = (self.prev_loss - self.min_losses + 1e-8).log() - (curr_loss - self.min_losses + 1e-8).log()
        with torch.enable_grad():
            d = torch.autograd.grad(torch.softmax(self.w, -1), self.w, grad_outputs=delta.detach())[0]
        self.w_opt.zero_grad()
        self.w.grad = d
        self.w_opt.step()


def test_the_default_is_the_authors_loop_the_same_batch_re_evaluated_after_the_step() -> None:
    """Issue 16: `update: same-batch` (the default) equals the authors' loop: backward, optimiser step, then the
    same batch re-evaluated under no_grad and the logits updated, step for step (model and logits)."""
    ours_model, ours_steps = _problem(seed=4)
    theirs_model, theirs_steps = _problem(seed=4)
    ours, theirs = build("famo"), AuthorsFamo(3)
    ours.setup(3, CPU)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.05)
    theirs_opt = torch.optim.SGD(theirs_model.parameters(), lr=0.05)
    for _ in range(8):
        ours.backward(ours_steps())
        ours_opt.step()
        ours.after_update(lambda: ours_steps().losses.detach())
        step = theirs_steps()
        theirs.backward(step.losses.clone())
        theirs_opt.step()
        with torch.no_grad():
            theirs.update(theirs_steps().losses.detach())
        for a, b in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.w, theirs.w.detach(), rtol=1e-5, atol=1e-7)
    assert float(theirs.w.detach().abs().max()) > 1e-3  # the logits did move


def test_same_batch_measures_the_step_just_applied_and_a_skipped_step_measures_nothing() -> None:
    method = build("famo")
    method.setup(2, CPU)
    method.backward(leaf_step([1.0, 1.0]))
    method.after_update(lambda: torch.tensor([0.5, 1.0]))  # task 0 fell, task 1 did not: task 1 gains weight
    z = torch.softmax(method.w, -1)
    assert float(z[1]) > float(z[0])
    before = method.state_dict()
    method.backward(leaf_step([0.5, 1.0]))
    method.step_skipped()  # the trainer dropped it: no after_update, and a late one must not measure
    method.after_update(lambda: torch.tensor([0.1, 0.1]))
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
    calls = []
    next_batch = famo(2)
    next_batch.backward(leaf_step([1.0, 1.0]))
    next_batch.after_update(lambda: calls.append(1) or torch.ones(2))  # the next-batch form never re-evaluates
    assert calls == []
