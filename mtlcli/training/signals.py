"""Stopping on a signal: SIGINT/SIGTERM end training between two steps, after a resumable checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from mtlcli.errors import MtlError


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the current step, saves and exits."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, _frame: Any) -> None:
            if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self.signal = signum

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class TrainingInterrupted(MtlError):
    """Training stopped on a signal after saving a resumable checkpoint (exit status 130, as for Ctrl-C)."""

    exit_code = 130
