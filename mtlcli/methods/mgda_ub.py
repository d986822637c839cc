"""MGDA-UB (Sener & Koltun, NeurIPS 2018, §3.3 and Algorithm 2).

The min-norm point of the convex hull of the task gradients, taken with respect to the shared
representation z instead of the shared parameters: an upper bound of the MGDA objective that needs
one backward through the encoder. Weights alpha solve min ||sum_t alpha_t dL_t/dz||^2 on the
simplex (optionally on normalised gradients); they multiply the raw losses, as in the authors' code.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from mtlcli.methods._representation import gram_step_on_representation, normalize_gram
from mtlcli.methods.base import Stateless, Step
from mtlcli.methods.min_norm import min_norm
from mtlcli.methods.options import MgdaOptions


def min_norm_weights(losses: Tensor, gram: Tensor, options: MgdaOptions) -> Tensor:
    """MGDA's weights (shared by mgda and mgda-ub): the min-norm point for the normalised Gram matrix, over the
    tasks whose gradient is not exactly zero (a task with no label in the batch constrains no direction: with it,
    the hull would contain 0 and no step would be taken; it gets weight 0)."""
    normalized = normalize_gram(gram, losses, options.normalization)
    return min_norm(normalized, solver=options.solver, max_iter=options.max_iter, tol=options.tol, skip_still=True)


class MgdaUb(Stateless):
    """MGDA on representation gradients: weights from the T x T Gram matrix of dL_t/dz."""

    name: ClassVar[str] = "mgda-ub"

    def __init__(self, options: MgdaOptions | None = None) -> None:
        self.options = options or MgdaOptions()

    def __repr__(self) -> str:
        o = self.options
        return f"MgdaUb(normalization={o.normalization!r}, solver={o.solver!r}, head_grads={o.head_grads!r})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Min-norm weights on the simplex for the (normalised) Gram matrix."""
        return min_norm_weights(losses, gram, self.options)

    def backward(self, step: Step) -> Tensor:
        return gram_step_on_representation(step, self.weights, head_grads=self.options.head_grads)
