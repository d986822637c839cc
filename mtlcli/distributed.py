"""Data-parallel training on PyTorch's own engine: `torch.distributed`, launched by `torchrun`.

Each of N processes (ranks) takes rows r, r + N, r + 2N, ... of the global batch that one process
would draw (the same permutation from the same seed), and weighs its per-task mean losses by its share
B_r / B of the batch, so that the ranks' losses add up to the one-process losses and their gradients
add up to the one-process gradients. What is summed across the ranks:

- the per-task losses (reported, and used by the `loss`/`loss+` normalisations);
- the T x T Gram matrix of representation gradients: z is split by rows across ranks, so the inner
  products of dL_t/dz over the global batch are the SUMS of the ranks' inner products (exact);
- the T x P Jacobian of exact (shared-parameter) methods, before its Gram matrix: every rank's row t
  is a partial sum of dL_t/dtheta, and <sum_r a_r, sum_r b_r> is not sum_r <a_r, b_r>, so the
  Jacobian itself is all-reduced (exact; it costs T x P numbers instead of T^2);
- every parameter gradient after the method's backward (one flattened all-reduce), which is what DDP
  does; DDP's reducer itself is not used because the methods write head and exact gradients straight
  into `.grad`, which its autograd hooks never see.

Every rank then solves the same T x T problem on the same numbers, so the weights are identical
(`MTL_DEBUG_DISTRIBUTED=1` gathers them every step and asserts it). The methods whose weights depend
only on the losses and the Gram matrix are exact this way; `SUPPORTED` lists them, and the others are
refused rather than run approximately.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from mtlcli.errors import DistributedError, MtlError

__all__ = ["SUPPORTED", "Distributed", "DistributedError", "current", "setup_from_environment", "sum_gradients", "teardown"]

# uniform/static: losses only; the others: weights from (the summed losses, the summed Gram matrix) at either
# level, with state derived from those weights alone (Nash-MTL, GradVac: identical on every rank)
SUPPORTED = (
    "uniform", "static", "mgda-ub", "mgda", "imtl-g", "imtl-g-exact", "mgda-unconstrained",
    "upgrad", "dualproj", "cagrad", "aligned-mtl", "fairgrad", "nash-mtl", "gradvac",
    "config",
)  # fmt: skip
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
        """The Gram matrix and the task losses summed across the ranks in ONE all-reduce of T^2 + T numbers."""
        if not self.active:
            return gram, losses
        t = losses.numel()
        flat = self.sum_(torch.cat([gram.reshape(-1), losses.to(gram.dtype).reshape(-1)]))
        return flat[: t * t].view(t, t), flat[t * t :].to(losses.dtype)

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
