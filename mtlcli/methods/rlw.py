"""Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting: A Litmus Test for
Multi-Task Learning", TMLR 2022).

Every step draws a random vector from `distribution` and minimises sum_k lambda_k L_k with

- `normal` (the default, and the only one LibMTL keeps today): lambda = softmax(x), x ~ N(0, I);
- `uniform`: lambda = softmax(x), x ~ U(0, 1)^K;
- `dirichlet`: lambda = softmax(x), x ~ Dir(1, ..., 1);
- `bernoulli`: lambda = x, x_k ~ Bernoulli(1/2), redrawn while all zero (weights 0/1, sum 1..K);
- `constrained-bernoulli`: lambda = one-hot of a uniformly drawn task (one task per step).

The softmax weights lie on the simplex (sum 1, not K). These are the authors' own implementation in LibMTL
(LibMTL/weighting/RLW.py at its first commits, 2d842d6 to d884c93, Dec 2021), which softmaxes the
uniform, normal and Dirichlet draws alike and uses the Bernoulli draws raw; LibMTL's current RLW is the
`normal` case alone. The draws come from the method's own CPU generator, seeded with the run's seed at
`setup` and saved in checkpoints, so runs are reproducible and resume identically.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mtlcli.methods._seeded import SeededRandom
from mtlcli.methods.base import Step, weighted_backward
from mtlcli.methods.options import Distribution, RlwOptions


def draw_weights(distribution: Distribution, num_tasks: int, generator: torch.Generator) -> Tensor:
    """One weight vector [K] (float32, CPU) drawn with `generator`."""
    if distribution == "normal":
        return torch.softmax(torch.randn(num_tasks, generator=generator), dim=0)
    if distribution == "uniform":
        return torch.softmax(torch.rand(num_tasks, generator=generator), dim=0)
    if distribution == "dirichlet":  # Dir(1): normalised i.i.d. Exp(1) draws
        gamma = torch.empty(num_tasks).exponential_(1.0, generator=generator)
        return torch.softmax(gamma / gamma.sum(), dim=0)
    if distribution == "bernoulli":
        while True:
            draw = torch.randint(0, 2, (num_tasks,), generator=generator).float()
            if bool(draw.any()):
                return draw
    one_hot = torch.zeros(num_tasks)
    one_hot[torch.randint(0, num_tasks, (1,), generator=generator)] = 1.0
    return one_hot


class Rlw(SeededRandom):
    """sum_k lambda_k L_k with lambda drawn afresh at every step."""

    name: ClassVar[str] = "rlw"

    def __init__(self, options: RlwOptions | None = None) -> None:
        super().__init__()
        self.options = options or RlwOptions()

    def __repr__(self) -> str:
        return f"Rlw(distribution={self.options.distribution!r})"

    def draw(self, num_tasks: int) -> Tensor:
        return draw_weights(self.options.distribution, num_tasks, self.generator)

    def backward(self, step: Step) -> Tensor:
        weights = self.draw(step.num_tasks).to(step.losses)
        weighted_backward(step.losses, weights)
        return weights
