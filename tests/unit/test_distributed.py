"""mtlcli.distributed in one process: a real gloo group of world size 1 (a FileStore in tmp_path) for the calls
themselves, and fake collectives that play a second rank (known tensors) for what is summed, gathered or sent.
The multi-process runs under torchrun are in tests/integration/test_distributed.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from mtlcli import distributed
from mtlcli.distributed import (
    DEBUG_ENV,
    DEFAULT_TIMEOUT,
    TIMEOUT_ENV,
    Distributed,
    DistributedError,
    current,
    setup_from_environment,
    sum_gradients,
    teardown,
)
from mtlcli.errors import MtlError

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", TIMEOUT_ENV, DEBUG_ENV)


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(distributed, "_CURRENT", Distributed())


@pytest.fixture
def gloo(tmp_path):
    """A real gloo process group of world size 1 in this process."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


class SecondRank:
    """Fake collectives of a 2-process job seen from one rank: the other rank holds `other` (a tensor per call, in
    order), rank 0's object is `rank0_text`, and all_gather returns `gathered`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *others: torch.Tensor) -> None:
        self.others = list(others)
        self.calls: list[tuple] = []
        self.rank0_text = "runs/rank0"
        self.gathered: list[torch.Tensor] | None = None
        monkeypatch.setattr(dist, "all_reduce", self.all_reduce)
        monkeypatch.setattr(dist, "broadcast_object_list", self.broadcast_object_list)
        monkeypatch.setattr(dist, "all_gather", self.all_gather)
        monkeypatch.setattr(dist, "barrier", lambda: self.calls.append(("barrier",)))

    def all_reduce(self, tensor: torch.Tensor, op) -> None:
        self.calls.append(("all_reduce", op, tensor.numel()))
        other = self.others.pop(0)
        if op == dist.ReduceOp.SUM:
            tensor.add_(other)
        elif op == dist.ReduceOp.MAX:
            torch.maximum(tensor, other, out=tensor)
        else:
            raise AssertionError(op)

    def broadcast_object_list(self, box: list, src: int) -> None:
        self.calls.append(("broadcast", src))
        assert src == 0
        box[0] = self.rank0_text

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        self.calls.append(("all_gather", len(out)))
        assert tensor.is_contiguous()
        for slot, value in zip(out, self.gathered or [tensor] * len(out), strict=True):
            slot.copy_(value)


# ------------------------------------------------------------------------------------------------------------
# one process: everything is the identity and no collective is called


def test_a_plain_process_is_rank_0_of_1() -> None:
    job = current()
    assert job == Distributed(rank=0, world=1, local_rank=0)
    assert not job.active and job.writer
    assert Distributed(rank=1, world=2).active and not Distributed(rank=1, world=2).writer
    assert Distributed(rank=0, world=2).writer


def test_one_process_calls_no_collective(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SecondRank(monkeypatch)
    monkeypatch.setenv(DEBUG_ENV, "1")
    job = Distributed()
    t = torch.tensor([1.0, 2.0])
    assert job.sum_(t) is t and job.max_(t) is t and t.tolist() == [1.0, 2.0]
    gram, losses = torch.eye(2), torch.ones(2)
    assert job.sum_gram_and_losses(gram, losses) == (gram, losses)
    assert job.broadcast_text("runs/mine") == "runs/mine"
    with pytest.raises(AssertionError):
        job.broadcast_text(None)
    job.check_identical(t, "weights")
    job.barrier()
    sum_gradients(job, [t])
    assert t.tolist() == [1.0, 2.0] and fake.calls == []


@pytest.mark.parametrize(("rank", "world", "rows"), [(0, 1, list(range(10))), (0, 2, [0, 2, 4, 6, 8]), (1, 3, [1, 4, 7])])
def test_shard_takes_every_world_th_row_from_rank(rank: int, world: int, rows: list[int]) -> None:
    assert Distributed(rank=rank, world=world).shard(torch.arange(10)).tolist() == rows


# ------------------------------------------------------------------------------------------------------------
# two ranks (fake collectives): what is summed, maxed, sent and gathered


def test_sum_and_max_add_the_other_ranks_values_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SecondRank(monkeypatch, torch.tensor([10.0, 20.0]), torch.tensor([0.5, 9.0]))
    job = Distributed(rank=1, world=2)
    t = torch.tensor([1.0, 2.0])
    assert job.sum_(t) is t and t.tolist() == [11.0, 22.0]
    assert job.max_(t) is t and t.tolist() == [11.0, 22.0 if 22.0 > 9.0 else 9.0]
    assert [c[:2] for c in fake.calls] == [("all_reduce", dist.ReduceOp.SUM), ("all_reduce", dist.ReduceOp.MAX)]


def test_the_gram_matrix_and_the_losses_go_in_one_all_reduce(monkeypatch: pytest.MonkeyPatch) -> None:
    other = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0], dtype=torch.float64)  # the other rank's G (2 x 2), losses
    fake = SecondRank(monkeypatch, other)
    gram = torch.tensor([[4.0, 1.0], [1.0, 9.0]], dtype=torch.float64)
    losses = torch.tensor([0.5, 0.25], dtype=torch.float32)
    summed_gram, summed_losses = Distributed(rank=0, world=2).sum_gram_and_losses(gram, losses)
    assert fake.calls == [("all_reduce", dist.ReduceOp.SUM, 6)]
    assert summed_gram.tolist() == [[5.0, 3.0], [4.0, 13.0]]
    assert summed_losses.dtype == torch.float32 and summed_losses.tolist() == [10.5, 20.25]


def test_broadcast_text_gives_every_rank_rank_0s_string(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SecondRank(monkeypatch)
    assert Distributed(rank=1, world=2).broadcast_text(None) == "runs/rank0"
    fake.rank0_text = 42  # whatever was sent, a string comes out
    assert Distributed(rank=1, world=2).broadcast_text("mine") == "42"
    assert fake.calls == [("broadcast", 0), ("broadcast", 0)]


def test_barrier_waits_for_the_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SecondRank(monkeypatch)
    Distributed(rank=1, world=2).barrier()
    assert fake.calls == [("barrier",)]


def test_check_identical_only_in_debug_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SecondRank(monkeypatch)
    job = Distributed(rank=0, world=2)
    weights = torch.tensor([0.25, 0.75])
    fake.gathered = [weights, torch.tensor([0.25, 0.5])]
    job.check_identical(weights, "weights")  # debug off: nothing gathered
    assert fake.calls == []
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(DistributedError, match=r"^weights differ across ranks: \[\[0\.25, 0\.75\], \[0\.25, 0\.5\]\]$"):
        job.check_identical(weights, "weights")
    assert fake.calls == [("all_gather", 2)]
    fake.gathered = [weights, weights.clone()]
    job.check_identical(weights[::1], "weights")
    three = Distributed(rank=2, world=3)
    fake.gathered = [weights, weights.clone(), torch.tensor([0.0, 1.0])]  # the third rank differs
    with pytest.raises(DistributedError, match="differ"):
        three.check_identical(weights, "weights")


def test_sum_gradients_gives_each_gradient_its_own_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    other = torch.arange(1.0, 10.0)  # the other rank's gradients, flattened: [[1, 2], [3, 4]], [5, 6, 7], [8, 9]
    fake = SecondRank(monkeypatch, other)
    a, b, c = torch.zeros(2, 2), torch.tensor([100.0, 200.0, 300.0]), torch.tensor([-1.0, -2.0])
    held = (a, b, c)
    sum_gradients(Distributed(rank=0, world=2), [a, b, c])
    assert all(x is y for x, y in zip((a, b, c), held, strict=True))
    assert a.tolist() == [[1.0, 2.0], [3.0, 4.0]] and b.tolist() == [105.0, 206.0, 307.0] and c.tolist() == [7.0, 7.0]
    assert fake.calls == [("all_reduce", dist.ReduceOp.SUM, 9)]
    sum_gradients(Distributed(rank=0, world=2), [])
    assert len(fake.calls) == 1


# ------------------------------------------------------------------------------------------------------------
# a failed collective


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (RuntimeError("Connection reset by peer\nat gloo/transport.cc"), "Connection reset by peer"),
        (RuntimeError("x" * 300), "x" * 200),
        (RuntimeError("   "), "RuntimeError"),
        (dist.DistBackendError("NCCL watchdog timeout"), "NCCL watchdog timeout"),
    ],
)
def test_a_lost_rank_becomes_a_distributed_error(monkeypatch: pytest.MonkeyPatch, error: Exception, shown: str) -> None:
    def fail(*args, **kwargs) -> None:
        raise error

    monkeypatch.setattr(dist, "all_reduce", fail)
    with pytest.raises(DistributedError) as caught:
        Distributed(rank=0, world=2).sum_(torch.ones(1))
    assert str(caught.value).startswith(f"lost contact with another training process ({shown})")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert caught.value.hint == (
        "a rank died or hung; the last checkpoint is kept: resume with `torchrun ... -m mtlcli train --resume RUN`"
    )


def test_other_errors_of_a_collective_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def wrong(*args, **kwargs) -> None:
        raise TypeError("bad argument")

    monkeypatch.setattr(dist, "barrier", wrong)
    with pytest.raises(TypeError, match="bad argument"):
        Distributed(rank=0, world=2).barrier()


# ------------------------------------------------------------------------------------------------------------
# a real gloo group (world size 1): the calls are ones gloo accepts


def test_the_collectives_run_on_a_real_gloo_group(gloo) -> None:
    job = Distributed(rank=0, world=2)  # active, on a group whose only member is this process: sums are identities
    t = torch.tensor([1.0, -2.0])
    assert job.sum_(t).tolist() == [1.0, -2.0] and job.max_(t).tolist() == [1.0, -2.0]
    gram, losses = job.sum_gram_and_losses(torch.eye(2, dtype=torch.float64), torch.tensor([0.5, 1.5]))
    assert gram.tolist() == [[1.0, 0.0], [0.0, 1.0]] and losses.tolist() == [0.5, 1.5]
    assert job.broadcast_text("runs/here") == "runs/here"
    job.barrier()
    g = torch.ones(3)
    sum_gradients(job, [g])
    assert g.tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------------------
# joining and leaving a job


def test_without_torchrun_nothing_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined"))
    assert setup_from_environment("auto") == (Distributed(), "auto")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_from_environment("cpu") == (Distributed(), "cpu")


@pytest.mark.parametrize(("spec", "device"), [("auto", "cpu"), ("cpu", "cpu")])
def test_joining_an_initialised_group(gloo, monkeypatch: pytest.MonkeyPatch, spec: str, device: str) -> None:
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("initialised twice"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    job, got = setup_from_environment(spec)
    assert job == Distributed(rank=3, world=4, local_rank=1) and got == device
    assert current() is job
    assert setup_from_environment(spec) == (job, device)  # a resumed trainer joins the same job


def joining(monkeypatch: pytest.MonkeyPatch, cuda: bool, **env: str) -> list:
    calls: list = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: calls.append((backend, timeout)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", **env}.items():
        monkeypatch.setenv(key, value)
    return calls


def test_joining_on_the_cpu_uses_gloo_and_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = joining(monkeypatch, cuda=False)
    job, device = setup_from_environment("auto")
    assert job == Distributed(rank=1, world=2, local_rank=0) and device == "cpu"
    assert calls == [("gloo", timedelta(seconds=DEFAULT_TIMEOUT))] and DEFAULT_TIMEOUT == 300
    calls.clear()
    monkeypatch.setenv(TIMEOUT_ENV, "12.5")
    setup_from_environment("cpu")
    assert calls == [("gloo", timedelta(seconds=12.5))]


@pytest.mark.parametrize("spec", ["auto", "cuda", "cuda:0"])
def test_joining_with_cuda_uses_nccl_on_the_local_rank(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    calls = joining(monkeypatch, cuda=True, LOCAL_RANK="1")
    job, device = setup_from_environment(spec)
    assert device == "cuda:1" and job.local_rank == 1
    assert calls == [("set_device", 1), ("nccl", timedelta(seconds=300))]


def test_the_cpu_when_asked_even_with_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = joining(monkeypatch, cuda=True)
    assert setup_from_environment("cpu")[1] == "cpu" and calls == [("gloo", timedelta(seconds=300))]


def test_cuda_asked_for_without_cuda_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    joining(monkeypatch, cuda=False)
    with pytest.raises(MtlError, match=r"^device 'cuda:1' was asked for, but torch sees no CUDA device$"):
        setup_from_environment("cuda:1")


def test_a_job_that_cannot_be_joined_is_a_distributed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's variables without its rendezvous (no MASTER_ADDR): the real init fails, and says why in one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedError, match=r"^cannot join the torchrun job: [^\n]*MASTER_ADDR"):
        setup_from_environment("auto")
    assert current() == Distributed() and not dist.is_initialized()

    def refuse(*args, **kwargs) -> None:
        raise RuntimeError("x" * 300 + "\nsecond line")

    monkeypatch.setattr(dist, "init_process_group", refuse)
    with pytest.raises(DistributedError) as caught:
        setup_from_environment("auto")
    assert str(caught.value).splitlines()[0] == "cannot join the torchrun job: " + "x" * 200


def test_teardown_leaves_the_job(gloo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "_CURRENT", Distributed(rank=1, world=2))
    teardown()
    assert not dist.is_initialized() and current() == Distributed()
    teardown()  # twice: nothing left to destroy
    assert current() == Distributed()


# ------------------------------------------------------------------------------------------------------------
# which methods run on several processes


def test_every_method_but_grid_modo_and_sdmgrad_runs_on_several_processes_at_its_defaults() -> None:
    from mtlcli.methods.registry import REGISTRY

    refused = {"grid", "modo", "sdmgrad"}
    for name in REGISTRY:
        reason = distributed.refusal(name, {})
        assert (reason is None) == (name not in refused), name
    assert "sweep" in str(distributed.refusal("grid", {}))
    assert "two halves" in str(distributed.refusal("modo", {})) and "interleaved" in str(distributed.refusal("sdmgrad", {}))
    assert distributed.refusal("not-checked-yet", {}) == distributed.NOT_REDUCED  # a method added to the registry only


@pytest.mark.parametrize("method", ["db-mtl", "moco"])
def test_a_per_row_state_at_the_representation_level_is_refused(method: str) -> None:
    assert distributed.refusal(method, {"level": "shared"}) is None
    reason = distributed.refusal(method, {"level": "representation", "beta": 0.5})
    assert reason is not None and "row per example" in reason and "use level shared" in reason
    assert distributed.refusal("mgda-ub", {"level": "representation"}) is None  # a Gram matrix sums over rows


def test_the_refusal_names_the_method_the_processes_and_the_reason() -> None:
    from mtlcli.recipe import load
    from mtlcli.training.build import check_distributable
    from tests.conftest import load_shipped_recipe

    raw = load_shipped_recipe("multifashion")
    check_distributable(load(raw=raw, method="uncertainty"), Distributed(rank=0, world=2))  # no error
    recipe = load(raw=load_shipped_recipe("multifashion"), method="moco", sets=["method.level=representation"])
    with pytest.raises(MtlError, match="method moco does not run on 4 processes: at level representation") as caught:
        check_distributable(recipe, Distributed(rank=0, world=4))
    assert "choose one of: single-task" in str(caught.value.hint)
