"""MoDo, multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in
Multi-Objective Learning: Optimization, Generalization and Conflict-Avoidance", NeurIPS 2023; JMLR 2024).

Per step, with two independent samples of the task Jacobian J_1, J_2 [T, P] and their cross Gram matrix
G_12 = J_1 J_2^T:

    lambda <- P(lambda - gamma (G_12 lambda + rho lambda))       (P: Euclidean projection on the simplex)
    update  = (J_1 + J_2)^T lambda / 2                           (with the new lambda)

lambda starts at 1/T and is kept across steps (`state_dict`: "lambda"). Its fixed points are the lambda with
P(lambda - gamma (G + rho I) lambda) = lambda, the minimisers of 1/2 ||J^T lambda||^2 + rho/2 ||lambda||^2 on the
simplex (MGDA's min-norm point as rho -> 0) when G_12 = G is symmetric positive semi-definite.

Reference: the authors' code, heshandevaka/Trade-Off-MOL, LibMTL/LibMTL/weighting/MoDo.py (commit a1799ed; the
trainer LibMTL/LibMTL/trainer.py at 0eb17a0 draws the two samples): gamma 0.1 and rho 0.1 (LibMTL/LibMTL/config.py),
the two samples' gradients from two batches, lambda updated first, then the shared update (J_1 + J_2)^T lambda and
the heads' raw gradients of both samples (their backward passes accumulate). What differs, and why:

- the samples are the two halves of the step's batch (`mtlcli.methods._two_samples`), not two batches: one forward
  pass, one pass over the data per epoch;
- the update is the mean of the two samples' gradients (the paper's update), the authors' sum halved (their
  comment: "handle avging via lr of x"); with equal halves it is the batch's own gradient, and so are the heads';
- LibMTL's MoDo (median-research-group/LibMTL, LibMTL/weighting/MoDo.py, commit 4336804) draws a third batch for
  the update (and defaults gamma to 1e-3); TorchJD's `MoDoWeighting` is the lambda step alone (the same formula).

`level: shared` (the default) is the paper's; `level: representation` the cheaper variant on z (row-summed
z-gradients in G_12, see `_two_samples`). The batch must hold at least two examples (a recipe check).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtlcli.methods._two_samples import TwoSampleGramMethod
from mtlcli.methods.min_norm import project_simplex
from mtlcli.methods.options import MoDoOptions


def modo_step(lambd: Tensor, gram: Tensor, gamma: float, rho: float) -> Tensor:
    """One MoDo step of the weights: P(lambda - gamma (G lambda + rho lambda))."""
    return project_simplex(lambd - gamma * (gram @ lambd + rho * lambd))


class MoDo(TwoSampleGramMethod):
    """Weights lambda by one projected step on the cross Gram matrix of two halves of the batch, kept across steps."""

    name: ClassVar[str] = "modo"
    state_key: ClassVar[str] = "lambda"

    def __init__(self, options: MoDoOptions | None = None) -> None:
        super().__init__()
        self.options = options or MoDoOptions()

    def __repr__(self) -> str:
        o = self.options
        return f"MoDo(gamma={o.gamma}, rho={o.rho}, {o.describe_level()})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """The new lambda from the kept one and G_12 (`losses` is unused)."""
        kept = self.current(gram)
        self.kept = modo_step(kept, gram.to(kept.dtype), self.options.gamma, self.options.rho)
        return self.kept.to(gram.dtype)
