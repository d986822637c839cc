"""GradVac, Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021, Algorithm 2).

Like PCGrad, but towards adaptive similarity goals instead of orthogonality. For every task i, in a
random order of the other tasks j, with phi_ij = cos(g_i', g_j) (g_i' the already modified g_i) and
phi_hat_ij an exponential moving average of past phi_ij:

- if phi_ij < phi_hat_ij, g_i' += ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
  / (||g_j|| sqrt(1 - phi_hat^2)) g_j, which makes cos(g_i', g_j) exactly phi_hat_ij;
- then phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij (phi_ij measured before the correction).

The shared update is sum_i g_i'; heads get their own raw gradients by default (LibMTL: only the
shared gradient is overwritten). Each g_i' is kept as coefficients on the g_k, so the whole method
is T x T arithmetic on the Gram matrix (as TorchJD's GradVacWeighting), on the Gram's device without
host syncs; it therefore runs at either level (`level: shared`, dL_t/dtheta_sh as the paper, the
default; `level: representation`, dL_t/dz with one encoder backward).

Goals per parameter group (`groups`, LibMTL's `GradVac_group_type`). The paper keeps goals per
layer / block of the model; LibMTL offers 0 "whole_model" (its default), 1 "all_layer" (each module
with parameters) and 2 "all_matrix" (each parameter tensor). `groups: whole` (default) is 0;
`layer` and `matrix` (level shared only) cut the shared gradients into those blocks: each block k
gets its own goals phi_hat^k [T, T], its own Gram matrix and its own vaccination, with the same
random orders for every block in a step (as LibMTL's loop, whose blocks never interact), so block k
of the shared update is sum_m w^k_m g_m[block k]. `backward` then returns the w^k averaged in
proportion to the blocks' sizes (for the logs); `head_grads: weighted` has no single weight to use
and is refused with them.

Choices, against LibMTL (`GradVac.py`, commit 4336804) and TorchJD 0.18 (`GradVacWeighting`):
- `beta` defaults to 0.5 as both references (the paper reports beta = 1e-2 for its NMT runs);
  phi_hat starts at 0 (both references), so the first step is PCGrad-like on conflicting pairs.
- No `eps` in the denominators (both references add 1e-8, which is not scale-invariant: gradients
  of norm ~1e-4 would feel it); instead a zero gradient has cosine 0 with everything, and a
  correction whose denominator ||g_j|| sqrt(1 - phi_hat^2) is 0 (g_j = 0, or a target phi_hat = 1
  that no finite multiple of g_j reaches) is skipped. The cosine is clamped to [-1, 1].
- The orders: per task, a random permutation of the other tasks (TorchJD's draw, `randperm(T - 1)`;
  LibMTL shuffles the same list with Python's `random`), from a CPU generator seeded with the run's
  seed at `setup`; phi_hat ([T, T], or [K, T, T] with K groups; float64) and the generator state are
  checkpointed, so a resumed run is exact. A step the trainer skips (`step_skipped`) restores both,
  as if it never ran.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mtlcli.methods._levels import GramMethod
from mtlcli.methods._shared_params import grouped_gram_step_on_shared_parameters, parameter_groups
from mtlcli.methods.base import Step
from mtlcli.methods.options import GradVacOptions


def gradvac_coefficients(gram: Tensor, phi_hat: Tensor, orders: list[list[int]], beta: float) -> tuple[Tensor, Tensor]:
    """(C, phi_hat'): C [T, T] with g_i' = sum_k C[i, k] g_k, visiting `orders[i]` (other tasks' indices;
    i itself is skipped), and the updated goals. `phi_hat` is not modified. `gram` and `phi_hat` may have
    leading dimensions (one Gram matrix and its goals per parameter group [K, T, T]): every group is
    vaccinated on its own, in the same orders."""
    t = gram.shape[-1]
    dtype, device = gram.dtype, gram.device
    tiny = torch.finfo(dtype).tiny
    zero = torch.zeros((), dtype=dtype, device=device)
    norms = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    goals = phi_hat.to(dtype=dtype, device=device).clone()
    coefficients = torch.eye(t, dtype=dtype, device=device).expand_as(gram).clone()
    if t < 2:
        return coefficients, goals
    # Row i only ever reads and writes row i (its coefficients, its goals), so the T tasks advance together:
    # step k pairs every task with the k-th task of its own order (T - 1 steps instead of T (T - 1)).
    partners = torch.tensor([[j for j in order if j != i] for i, order in enumerate(orders)], device=device)
    rows = torch.arange(t, device=device)
    for k in range(partners.shape[1]):
        j = partners[:, k]
        dots = coefficients @ gram  # dots[..., i, m] = g_i' . g_m
        norm_i = (dots * coefficients).sum(dim=-1).clamp_min(0).sqrt()
        norm_j = norms[..., j]
        denom = norm_i * norm_j
        phi = torch.where(denom > 0, dots[..., rows, j] / denom.clamp_min(tiny), zero).clamp(-1, 1)
        goal = goals[..., rows, j]
        root_phi = (1 - phi * phi).clamp_min(0).sqrt()
        root_goal = (1 - goal * goal).clamp_min(0).sqrt()
        w_denom = norm_j * root_goal
        w = norm_i * (goal * root_phi - phi * root_goal) / w_denom.clamp_min(tiny)
        coefficients[..., rows, j] += torch.where((phi < goal) & (w_denom > 0), w, zero)
        goals[..., rows, j] = (1 - beta) * goal + beta * phi
    return coefficients, goals


class GradVac(GramMethod):
    """Move each task gradient towards adaptive cosine goals with the others (random order), then sum."""

    name: ClassVar[str] = "gradvac"

    def __init__(self, options: GradVacOptions | None = None) -> None:
        self.options = options or GradVacOptions()
        self.generator = torch.Generator()
        self.generator.manual_seed(0)
        self.phi_hat: Tensor | None = None
        self._before: tuple[Tensor | None, Tensor] | None = None

    def __repr__(self) -> str:
        o = self.options
        groups = f", groups={o.groups!r}" if o.groups != "whole" else ""
        return f"GradVac(beta={o.beta}{groups}, {o.describe_level()})"

    def setup(self, num_tasks: int, device: torch.device) -> None:
        self.generator.manual_seed(torch.initial_seed())
        self.phi_hat = torch.zeros(num_tasks, num_tasks, dtype=torch.float64, device=device)
        self._before = None

    def parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.get_state()}
        if self.phi_hat is not None:
            state["phi_hat"] = self.phi_hat.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if "phi_hat" in state:
            saved = state["phi_hat"]
            if self.phi_hat is not None and self.phi_hat.shape == saved.shape:
                self.phi_hat.copy_(saved)
            else:
                device = self.phi_hat.device if self.phi_hat is not None else saved.device
                self.phi_hat = saved.to(device=device, dtype=torch.float64).clone()
        self._before = None

    def step_skipped(self) -> None:
        """Undo the last `weights` call: its goals update and its random draws."""
        if self._before is not None:
            self.phi_hat, generator_state = self._before
            self.generator.set_state(generator_state)
            self._before = None

    def orders(self, num_tasks: int) -> list[list[int]]:
        """Per task i, a random permutation of the other tasks."""
        orders = []
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            orders.append([others[k] for k in torch.randperm(num_tasks - 1, generator=self.generator).tolist()])
        return orders

    def backward(self, step: Step) -> Tensor:
        o = self.options
        if o.groups == "whole":
            return super().backward(step)
        sizes = parameter_groups(step.model, o.groups)
        return grouped_gram_step_on_shared_parameters(step, self.group_weights, sizes, grads=o.grads or "loop")

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Weights w with sum_i g_i' = sum_k w_k g_k; updates the goals. `losses` is unused."""
        return self._vaccinate(gram)

    def group_weights(self, losses: Tensor, grams: Tensor) -> Tensor:
        """Weights [K, T] from the parameter groups' Gram matrices [K, T, T] (block k of the update is
        sum_m w[k, m] g_m[block k]); updates the goals [K, T, T]. `losses` is unused."""
        return self._vaccinate(grams)

    def _vaccinate(self, gram: Tensor) -> Tensor:
        t = gram.shape[-1]
        if self.phi_hat is None or self.phi_hat.shape != gram.shape:
            self.phi_hat = torch.zeros(gram.shape, dtype=torch.float64, device=gram.device)
        self._before = (self.phi_hat, self.generator.get_state())
        coefficients, goals = gradvac_coefficients(gram.to(torch.float64), self.phi_hat, self.orders(t), self.options.beta)
        self.phi_hat = goals.to(self.phi_hat.device)
        return coefficients.sum(dim=-2).to(gram.dtype)
