"""IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, §3.1 and appendix B.1).

Scaling factors alpha (sum 1, any sign) such that the aggregated gradient g = sum_t alpha_t g_t has
equal projections onto every unit gradient u_t = g_t/||g_t||: alpha_{2:T} = g_1 U^T (D U^T)^-1,
alpha_1 = 1 - sum(alpha_{2:T}), computed from the Gram matrix (see `_closed_form`; a singular D U^T
is handled by the pseudo-inverse). `imtl-g` uses the gradients of the shared feature z as the paper
does (one encoder backward); `imtl-g-exact` the gradients of the shared parameters (the paper's
"IMTL-G (exact)" row). Scale-invariant: no normalisation option. Heads get alpha_t-scaled gradients
(minimising L = sum_t alpha_t L_t, §3.1) or their raw ones.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from mtlcli.methods._closed_form import NegativeProjections, imtl_g_weights
from mtlcli.methods._levels import GramMethod
from mtlcli.methods.options import ImtlGExactOptions, ImtlGOptions


class ImtlG(GramMethod):
    """IMTL-G on the representation gradients dL_t/dz."""

    name: ClassVar[str] = "imtl-g"

    def __init__(self, options: ImtlGOptions | None = None) -> None:
        self.options = options or ImtlGOptions()
        self.negative = NegativeProjections()

    def __repr__(self) -> str:
        o = self.options
        return f"ImtlG(head_grads={o.head_grads!r})" if o.level == "representation" else f"ImtlG({o.describe_level()})"

    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """Closed-form IMTL-G weights; `losses` is unused (the method is scale-invariant)."""
        alpha = imtl_g_weights(gram)
        self.negative.observe(gram, alpha)
        return alpha

    def epoch_stats(self) -> dict[str, int]:
        return self.negative.epoch_stats()

    def state_dict(self) -> dict[str, Any]:
        return self.negative.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.negative.load_state_dict(state)


class ImtlGExact(ImtlG):
    """IMTL-G on the shared-parameter gradients dL_t/dtheta_sh: `imtl-g` at `level: shared`."""

    name: ClassVar[str] = "imtl-g-exact"

    def __init__(self, options: ImtlGExactOptions | None = None) -> None:
        exact = options or ImtlGExactOptions()
        super().__init__(ImtlGOptions(level="shared", grads=exact.grads, head_grads=exact.head_grads))
        self.exact_options = exact

    def __repr__(self) -> str:
        return f"ImtlGExact(head_grads={self.exact_options.head_grads!r}, grads={self.exact_options.grads!r})"
