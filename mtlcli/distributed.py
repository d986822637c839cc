"""Data-parallel training on PyTorch's own engine: `torch.distributed`, launched by `torchrun`.

Each of N processes (ranks) takes rows r, r + N, r + 2N, ... of the global batch that one process
would draw (the same permutation from the same seed), and weighs its per-task mean losses by its share
B_r / B of the batch, so that the ranks' losses add up to the one-process losses and their gradients
add up to the one-process gradients. What is summed across the ranks:

- the per-task losses (reported, and used by the `loss`/`loss+` normalisations);
- the T x T Gram matrix of representation gradients: z is split by rows across ranks, so the inner
  products of dL_t/dz over the global batch are the SUMS of the ranks' inner products (exact);
- the T x P Jacobian of the methods at the shared level (exact MGDA, PCGrad, DB-MTL, MoCo, ...), before
  anything is computed from it: every rank's row t is a partial sum of dL_t/dtheta, and
  <sum_r a_r, sum_r b_r> is not sum_r <a_r, b_r>, so the Jacobian itself is all-reduced, with the T losses
  in the same buffer (exact; it costs T x P numbers instead of T^2); every rank then writes 1/N of the
  shared update;
- what a method computes from the batch as a whole: GradNorm's T x numel(W) per-task gradients of the last
  shared layer (with the losses), GradDrop's per-feature sums of sign(z) dL_t/dz, FAMO's losses after the
  update;
- every parameter gradient after the method's backward (one flattened all-reduce), which is what DDP
  does, the learned loss scales (uncertainty, IMTL-L, IMTL) included; DDP's reducer itself is not used
  because the methods write head and exact gradients straight into `.grad`, which its autograd hooks
  never see.

A method whose weights are not linear in the losses (GLS, STCH, FAMO, DB-MTL's log-losses, GradNorm's
loss ratios) computes them from the summed losses, never from a rank's part of them; a term of the
objective in a learned scale alone (uncertainty's s/2, IMTL-L's -s) is added 1/N by each rank; random
draws (RLW, PCGrad's orders, GradDrop's U) come from generators seeded alike on every rank. Every rank
then solves the same problem on the same numbers, so the weights and the methods' states are identical
(`MTL_DEBUG_DISTRIBUTED=1` gathers the weights every step and asserts it): `SUPPORTED` lists the methods
made exact this way. `refusal` says why the rest do not run on several processes: `grid` is a sweep of runs,
not a per-step rule; DB-MTL and MoCo at level representation keep a row of state per example of the batch,
which the ranks would split (and a checkpoint holds rank 0's alone).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mtlcli.errors import DistributedError, MtlError

__all__ = [
    "REFUSED", "SUPPORTED", "Distributed", "DistributedError", "current", "refusal", "setup_from_environment",
    "sum_gradients", "teardown",
]  # fmt: skip

# the methods that are the same algorithm on N processes as on one (see the module docstring); each is checked
# against a 1-process run in tests/integration/test_distributed.py
SUPPORTED = (
    "single-task", "uniform", "static", "mgda-ub", "mgda", "imtl-g", "imtl-g-exact", "mgda-unconstrained",
    "upgrad", "dualproj", "cagrad", "aligned-mtl", "fairgrad", "nash-mtl", "gradvac",
    "config", "excess-mtl",
    "uncertainty", "imtl-l", "imtl", "gradnorm", "gls", "dwa", "rlw", "famo", "stch",
    "pcgrad", "graddrop", "db-mtl", "moco",
)  # fmt: skip
# the registered methods that do not run on several processes, with the reason the refusal gives
REFUSED = {
    "grid": "it is a sweep of static runs, one per point of the simplex, not a per-step rule",
    "modo": "it takes its two samples as the two halves of the step's batch; the shards hold interleaved rows, "
    "so the halves and their cross Gram matrix would differ from one process's",
    "sdmgrad": "it takes its two samples as the two halves of the step's batch; the shards hold interleaved rows, "
    "so the halves and their cross Gram matrix would differ from one process's",
}
PER_ROW_STATE = (  # methods whose state at level representation has a row per example of the batch
    "db-mtl", "moco",
)  # fmt: skip
NOT_REDUCED = (
    "it has not been made the same algorithm across processes (what it computes from the batch as a whole, or its "
    "state, is not reduced across them)"
)


def refusal(method: str, options: Mapping[str, Any]) -> str | None:
    """Why `method` with `options` (the recipe's) does not run on several processes; None when it does."""
    if method in PER_ROW_STATE and options.get("level") == "representation":
        return (
            "at level representation its state has a row per example of the batch (the EMA or tracked dL_t/dz), "
            "which the ranks would split between them, and a checkpoint holds rank 0's rows alone; use level shared"
        )
    if method in SUPPORTED:
        return None
    return REFUSED.get(method, NOT_REDUCED)
TIMEOUT_ENV = "MTL_DIST_TIMEOUT"  # seconds a collective waits for a lost rank before the job fails
DEFAULT_TIMEOUT = 300
DEBUG_ENV = "MTL_DEBUG_DISTRIBUTED"


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank r of `world` (1: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def writer(self) -> bool:
        """Rank 0 writes the run directory, metrics, checkpoints and the console output."""
        return self.rank == 0

    def shard(self, index: Tensor) -> Tensor:
        """Rows r, r + N, ... of the global batch `index`."""
        return index[self.rank :: self.world] if self.active else index

    def sum_(self, tensor: Tensor) -> Tensor:
        """All-reduce (sum) in place across the ranks; the identity on one process."""
        if self.active:
            _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gram_and_losses(self, gram: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """The Gram matrix (or any small tensor: squared norms, per-feature sums) and the task losses summed across
        the ranks in ONE all-reduce of gram.numel() + T numbers."""
        if not self.active:
            return gram, losses
        n = gram.numel()
        flat = self.sum_(torch.cat([gram.reshape(-1), losses.to(gram.dtype).reshape(-1)]))
        return flat[:n].view(gram.shape), flat[n:].to(losses.dtype)

    def max_(self, tensor: Tensor) -> Tensor:
        if self.active:
            _collective(dist.all_reduce, tensor, op=dist.ReduceOp.MAX)
        return tensor

    def broadcast_text(self, text: str | None) -> str:
        """Rank 0's string on every rank (e.g. the run directory it created)."""
        if not self.active:
            assert text is not None
            return text
        box = [text]
        _collective(dist.broadcast_object_list, box, src=0)
        return str(box[0])

    def check_identical(self, tensor: Tensor, what: str) -> None:
        """Debug mode: every rank holds bitwise the same `tensor` (the method's weights)."""
        if not (self.active and os.environ.get(DEBUG_ENV)):
            return
        gathered = [torch.empty_like(tensor) for _ in range(self.world)]
        _collective(dist.all_gather, gathered, tensor.contiguous())
        if not all(torch.equal(gathered[0], other) for other in gathered[1:]):
            raise DistributedError(f"{what} differ across ranks: {[g.tolist() for g in gathered]}")

    def barrier(self) -> None:
        if self.active:
            _collective(dist.barrier)


def sum_gradients(job: Distributed, grads: list[Tensor]) -> None:
    """All-reduce every gradient (one flattened buffer): the ranks' partial gradients add up to the batch's."""
    if not grads:
        return
    flat = job.sum_(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _collective(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DistributedError(
            f"lost contact with another training process ({first})",
            hint="a rank died or hung; the last checkpoint is kept: resume with `torchrun ... -m mtlcli train --resume RUN`",
        ) from None


_CURRENT = Distributed()


def current() -> Distributed:
    """The job this process belongs to (a single process unless `setup_from_environment` joined one)."""
    return _CURRENT


def setup_from_environment(device_spec: str) -> tuple[Distributed, str]:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).

    Returns the job and the device to train on: with `auto`, `cuda:<local rank>` when CUDA is there
    (NCCL), else the CPU (gloo). Without torchrun's variables (or with WORLD_SIZE 1) nothing happens.
    Calling it again (a resumed trainer) returns the same job.
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _CURRENT, device_spec
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = (device_spec == "auto" and torch.cuda.is_available()) or device_spec.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise MtlError(f"device {device_spec!r} was asked for, but torch sees no CUDA device")
        device_spec = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    elif device_spec == "auto":
        device_spec = "cpu"
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)))
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"cannot join the torchrun job: {str(exc).splitlines()[0][:200]}") from None
    _CURRENT = Distributed(rank=rank, world=world, local_rank=local_rank)
    return _CURRENT, device_spec


def teardown() -> None:
    """Leave the job (end of training, or an error): the process group is destroyed once."""
    global _CURRENT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT = Distributed()
