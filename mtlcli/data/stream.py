"""A split streamed from host memory: the next batches are read ahead while the device computes.

For a prepared dataset that does not fit on the device (`data.placement: stream`, or `auto` when it would take
more than its share of a GPU's free memory), the arrays stay memory-mapped from the prepared files and a
background thread gathers each batch's rows from them, in the epoch's order, into pinned host memory (on CUDA)
and starts their copy on a side CUDA stream; the training step waits on that copy's event, not on the host.
At most `DEPTH` batches are ahead. Normalisation and the dense augmentation stay on the device, as for a
`DeviceSplit`, and the batches are the same, bit for bit: the rows come from the same permutation.

The double-buffered prefetch is the pattern of NVIDIA's Apex ImageNet example (`data_prefetcher`,
github.com/NVIDIA/apex, examples/imagenet/main_amp.py) and of torch's DataLoader with `pin_memory=True`,
done here in one thread without worker processes: a gather of a few hundred rows is one `index_select`
per array, which runs without the GIL.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from mtlcli.data.device import Batch, DeviceSplit, EpochPlan, Feed
from mtlcli.errors import DataError

DEPTH = 2  # batches read ahead of the step
POLL_SECONDS = 0.05  # how often a waiting reader looks whether it was told to stop
JOIN_SECONDS = 10.0


def gather(array: Tensor, index: Tensor, pin: bool) -> Tensor:
    """Rows `index` of a host array into a new host tensor (pinned for an asynchronous copy to CUDA)."""
    out = torch.empty((len(index), *array.shape[1:]), dtype=array.dtype, pin_memory=pin)
    return torch.index_select(array, 0, index, out=out)


@dataclass
class StreamedSplit(DeviceSplit):
    """A `DeviceSplit` whose arrays (class labels included) stay in host memory: `batch` gathers on demand
    (evaluation), `feed` reads the training batches ahead in a background thread. `source` names the
    prepared files in error messages."""

    source: str = "the prepared data"

    @contextlib.contextmanager
    def feed(self, plan: EpochPlan) -> Iterator[Feed]:
        """The batches of `plan`, read ahead; the reader stops when the block ends, however it ends (the epoch done, a
        signal, an error)."""
        on_host = replace(plan, perm=plan.perm.cpu())  # one copy per epoch (or resume): the reader indexes host arrays
        reader = _Reader(self, on_host.indices(), first=plan.start)
        try:
            yield reader
        finally:
            reader.close()


class _End:
    """The reader has produced every batch."""


@dataclass
class _Failed:
    batch: int  # 1-based, in the epoch
    error: BaseException


class _Reader:
    """The background thread and the bounded queue between it and the training loop (an iterator of batches)."""

    def __init__(self, split: StreamedSplit, indices: Iterator[Tensor], *, first: int) -> None:
        self.split = split
        self.cuda = split.device.type == "cuda"
        self.copies = torch.cuda.Stream(split.device) if self.cuda else None
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=DEPTH)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(indices, first), name="mtl-stream", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- the background thread
    def _run(self, indices: Iterator[Tensor], first: int) -> None:
        batch = first
        try:
            for index in indices:
                batch += 1
                if not self._put(self._load(index)):
                    return
            self._put(_End())
        except BaseException as exc:  # handed to the training loop, which raises it as one DataError
            self._put(_Failed(batch, exc))

    def _load(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor], torch.cuda.Event | None]:
        s = self.split
        images = gather(s.images, index, self.cuda)
        targets = {name: gather(array, index, self.cuda) for name, array in s.targets.items()}
        if self.copies is None:
            return images, targets, None
        with torch.cuda.stream(self.copies):  # pinned -> device without blocking either thread
            images = images.to(s.device, non_blocking=True)
            targets = {name: t.to(s.device, non_blocking=True) for name, t in targets.items()}
            copied = torch.cuda.Event()
            copied.record(self.copies)
        return images, targets, copied

    def _put(self, item: Any) -> bool:
        """Queue `item`, waiting for room; False when told to stop first."""
        while not self.stopping.is_set():
            if _offer(self.queue, item):
                return True
        return False

    # ---------------------------------------------------------------- the training loop's side
    def __iter__(self) -> _Reader:
        return self

    def __next__(self) -> Batch:
        item = self._get()
        if isinstance(item, _End):
            raise StopIteration
        if isinstance(item, _Failed):
            error = item.error
            raise DataError(
                f"reading training batch {item.batch} from {self.split.source} failed: {type(error).__name__}: {error}",
                hint="check that the disk is readable and the prepared files are intact (prepare the dataset again with "
                "--force)",
            ) from error
        images, targets, copied = item
        if copied is not None:  # the step's stream waits for the copy; the tensors stay alive until it is done with them
            current = torch.cuda.current_stream(self.split.device)
            current.wait_event(copied)
            for tensor in (images, *targets.values()):
                tensor.record_stream(current)
        return self.split.finish(images, targets)

    def _get(self) -> Any:
        item = _poll(self.queue)
        while item is None:
            if not self.thread.is_alive() and self.queue.empty():
                raise DataError(f"the reader of {self.split.source} stopped without a batch")
            item = _poll(self.queue)
        return item

    def close(self) -> None:
        """Stop the thread: a reader waiting for room sees it within `POLL_SECONDS`, one gathering after its batch."""
        self.stopping.set()
        self.thread.join(JOIN_SECONDS)


def _offer(q: queue.Queue[Any], item: Any) -> bool:
    try:
        q.put(item, timeout=POLL_SECONDS)
    except queue.Full:
        return False
    return True


def _poll(q: queue.Queue[Any]) -> Any:
    try:
        return q.get(timeout=POLL_SECONDS)
    except queue.Empty:
        return None
