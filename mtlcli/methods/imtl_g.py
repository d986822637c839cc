"""IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, §3.1 and appendix B.1).

Scaling factors alpha (sum 1, any sign) such that the aggregated gradient g = sum_t alpha_t g_t has
equal projections onto every unit gradient u_t = g_t/||g_t||: alpha_{2:T} = g_1 U^T (D U^T)^-1,
alpha_1 = 1 - sum(alpha_{2:T}), computed from the Gram matrix (see `_closed_form`; a singular D U^T
is handled by the pseudo-inverse). `imtl-g` uses the gradients of the shared feature z as the paper
does (one encoder backward); `imtl-g-exact` the gradients of the shared parameters (the paper's
"IMTL-G (exact)" row). Scale-invariant: no normalisation option.

Heads get their raw gradients dL_t/dtheta_t by default, as the paper's Algorithm 1 updates theta_t,
as LibMTL (median-research-group/LibMTL, commit 4336804, LibMTL/weighting/IMTL.py) and TorchJD's
`IMTLG` with `mtl_backward` do (alpha may be negative: a head scaled by it would climb its own loss);
`head_grads: weighted` gives them alpha_t dL_t/dtheta_t (minimising L = sum_t alpha_t L_t, §3.1).

References (tests/unit/methods/test_conformance_libmtl.py): `imtl-g-exact` is LibMTL's `IMTL` gradient
part with `rep_grad=False` and TorchJD's `IMTLG`; `imtl-g` is TorchJD's `IMTLG` applied to the whole
dL_t/dz [T, batch x features]. LibMTL's `rep_grad=True` solves for alpha on dL_t/dz summed over the
batch ([T, features]), which is that only for one-example batches: `imtl-g` keeps the paper's whole
gradient of z.
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
