"""A resumable prepare: arrays filled chunk by chunk in a partial directory, with done.json.

Datasets decoded from many image files (CelebA, Cityscapes) stream their rows into memory-mapped
`.npy` files in `DATA_DIR/.<name>.partial-.../`. done.json holds a fingerprint of what is being built
and the chunks finished so far; it is rewritten atomically after each chunk, once that chunk's rows
are flushed, so it never claims unwritten data, and an interrupted prepare resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import multiprocessing.forkserver
import shutil
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.lib.format import open_memmap

from mtlcli.data.store import SPLITS
from mtlcli.io import write_json_atomic

DONE = "done.json"
Job = tuple[str, int, Sequence[Any]]  # (split, chunk index, the chunk's items)
ArraySpecs = dict[str, dict[str, tuple[tuple[int, ...], Any]]]  # split -> array key -> (shape, dtype)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class ChunkedBuild:
    """The partial directory `path`: `arrays[split][key]` as `<split>_<key>.npy`, filled in chunks of
    `chunk` items of `items[split]`; resumed when done.json's fingerprint and the arrays match."""

    def __init__(
        self, path: Path, fingerprint: dict[str, Any], items: dict[str, Sequence[Any]], chunk: int, arrays: ArraySpecs
    ) -> None:
        self.path, self.fingerprint, self.items, self.chunk, self.arrays = path, fingerprint, items, chunk, arrays
        self.done: dict[str, set[int]] = {split: set() for split in SPLITS}
        if not self._resume():
            self._create()

    def file(self, split: str, key: str) -> Path:
        return self.path / f"{split}_{key}.npy"

    def _resume(self) -> bool:
        record = read_json(self.path / DONE)
        if not record or record.get("fingerprint") != self.fingerprint:
            return False
        try:
            for split in SPLITS:
                for key, (shape, dtype) in self.arrays[split].items():
                    array = open_memmap(self.file(split, key), mode="r")
                    if array.shape != shape or array.dtype != dtype:
                        return False
            self.done = {split: {int(k) for k in record["done"][split]} for split in SPLITS}
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def _create(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        for split in SPLITS:
            for key, (shape, dtype) in self.arrays[split].items():
                open_memmap(self.file(split, key), mode="w+", dtype=dtype, shape=shape).flush()
        self.done = {split: set() for split in SPLITS}
        self._save()

    def _save(self) -> None:
        done = {split: sorted(self.done[split]) for split in SPLITS}
        write_json_atomic(self.path / DONE, {"fingerprint": self.fingerprint, "done": done})

    def jobs(self) -> list[Job]:
        """The chunks still to do, in split then item order."""
        jobs: list[Job] = []
        for split in SPLITS:
            items = self.items[split]
            for k, start in enumerate(range(0, len(items), self.chunk)):
                if k not in self.done[split]:
                    jobs.append((split, k, items[start : start + self.chunk]))
        return jobs

    def start(self, job: Job) -> int:
        """The first row of a chunk."""
        return job[1] * self.chunk

    @property
    def decoded(self) -> int:
        """Items already done."""
        return sum(min(self.chunk, len(self.items[s]) - k * self.chunk) for s in SPLITS for k in self.done[s])

    def mark_done(self, job: Job) -> None:
        """Record a chunk as done (its rows are written and flushed)."""
        self.done[job[0]].add(job[1])
        self._save()



def fork_server(preload: str) -> multiprocessing.context.BaseContext:
    """A forkserver context whose server imports `preload` (and with it torch) once, so this process, which
    holds torch's threads, is never forked. The server starts with Ctrl-C ignored (inherited), so a ^C while it
    imports leaves it no traceback to print; this process gets the ^C and stops the build."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([preload])
    if threading.current_thread() is not threading.main_thread():
        return context
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)
    return context


# ----------------------------------------------------------------------------- parallel decoding
STATS_IMAGES = 2048  # images read at a time while measuring mean/std
T = TypeVar("T")


def init_worker() -> None:
    """A decoding process: one torch thread (the processes are the parallelism); Ctrl-C is the parent's."""
    import torch  # the workers decode with torchvision

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def take(items: Iterator[T], n: int) -> list[T]:
    """Up to n more items (jobs for the decoding pool)."""
    return list(itertools.islice(items, n))


def channel_stats(images: np.ndarray, *, block: int = STATS_IMAGES) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 images [N, H, W, C] in [0, 1] units.

    Streamed in blocks of images via exact 256-bin histograms, so the result is independent of the block
    size and never needs a float copy of the split.
    """
    channels = images.shape[-1]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), block):
        part = np.asarray(images[start : start + block])
        for c in range(channels):
            counts[c] += np.bincount(part[..., c].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    var = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1) / total
    return [float(m) for m in mean], [float(s) for s in np.sqrt(var)]
