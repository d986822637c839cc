"""MGDA-UB (Sener & Koltun, NeurIPS 2018, §3.3 and Algorithm 2).

The min-norm point of the convex hull of the task gradients, taken with respect to the shared
representation z instead of the shared parameters: an upper bound of the MGDA objective that needs
one backward through the encoder. Weights alpha solve min ||sum_t alpha_t dL_t/dz||^2 on the
simplex (optionally on normalised gradients); they multiply the raw losses, as in the authors' code.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import Tensor

from mtlcli.methods._representation import HeadGrads, gram_step_on_representation, normalize_gram
from mtlcli.methods.base import Options, Stateless, Step
from mtlcli.methods.min_norm import Solver, min_norm

Normalization = Literal["none", "l2", "loss", "loss+"]


class MgdaOptions(Options):
    normalization: Normalization = Field("none", description="divide g_t by 1, ||g_t||, L_t or L_t ||g_t||")
    solver: Solver = Field("min-norm-point", description="min-norm solver (exact, paper's, authors' code)")
    max_iter: int = Field(250, gt=0, description="solver iteration limit")
    tol: float = Field(1e-10, gt=0, description="solver tolerance (duality gap, or step size)")
    head_grads: HeadGrads = Field("weighted", description="heads get alpha_t-scaled (authors) or raw (paper) grads")


def min_norm_weights(losses: Tensor, gram: Tensor, options: MgdaOptions) -> Tensor:
    """MGDA's weights (shared by mgda and mgda-ub): the min-norm point for the normalised Gram matrix."""
    normalized = normalize_gram(gram, losses, options.normalization)
    return min_norm(normalized, solver=options.solver, max_iter=options.max_iter, tol=options.tol)


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
