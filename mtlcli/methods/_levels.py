"""Where a Gram-based method takes its task gradients: the `level` option every such method offers.

- ``representation`` (default): dL_t/dz, the MGDA-UB trick (Sener & Koltun 2018, §3.3): one backward
  per (small) head and ONE encoder backward for the combined update;
- ``shared``: dL_t/dtheta_sh, the exact gradients of the shared parameters, by T backward passes
  (``grads: loop``) or one vmapped backward (``grads: batched``).

A method's options subclass `LevelOptions`; the method subclasses `GramMethod`, the one shell of the Gram-based
methods: it defines `weights(losses, gram)` and the shell applies them at the options' level.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from torch import Tensor

from mtlcli.methods._representation import WeightsFn, gram_step_on_representation
from mtlcli.methods._shared_params import gram_step_on_shared_parameters
from mtlcli.methods.base import Stateless, Step
from mtlcli.methods.options import GradsMode, HeadGrads, Level


class AtLevel(Protocol):
    """What `level_step` reads of a method's options (`LevelOptions`, or exact MGDA's)."""

    level: Level
    grads: GradsMode | None
    head_grads: HeadGrads


def level_step(step: Step, weights: WeightsFn, options: AtLevel) -> Tensor:
    """The whole step of a Gram-based method at the options' level; returns the detached weights."""
    if options.level == "representation":
        return gram_step_on_representation(step, weights, head_grads=options.head_grads)
    return gram_step_on_shared_parameters(step, weights, grads=options.grads or "loop", head_grads=options.head_grads)


class GramMethod(Stateless, ABC):
    """The shell of a Gram-based method: a weighting (the Gram matrix G = J J^T [T, T] and the losses [T] ->
    weights [T], TorchJD's `Weighting`) applied at the level its options choose (`level_step`).

    A method defines `weights` (and its own state hooks when it keeps state); the shell gives it `backward`.
    """

    options: AtLevel

    @abstractmethod
    def weights(self, losses: Tensor, gram: Tensor) -> Tensor:
        """The task weights [T] for this step's Gram matrix."""

    def backward(self, step: Step) -> Tensor:
        return level_step(step, self.weights, self.options)
