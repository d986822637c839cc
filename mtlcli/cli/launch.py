"""`mtl train --nproc N`'s launcher (`python -m mtlcli.cli.launch TORCHRUN-ARGS`): torchrun itself, quiet when a
worker fails. The worker has already said what went wrong in its one `Error:` line (or its traceback, for a bug);
torchrun would add its own traceback, a failure table and log lines that say only that a worker exited. Its banner
about OMP_NUM_THREADS (1 per worker unless set) is left out too; the README says it."""

from __future__ import annotations

import logging
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def launch(argv: list[str]) -> int:
    """Run torchrun with `argv`; the exit code of the first failed worker (1 when it died by a signal), 128 + the
    signal's number when the launcher itself was stopped (Ctrl-C, SIGTERM: the workers saved and said how to resume)."""
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # "failed (exitcode: 1) ..." lines
    logging.getLogger("torch.distributed.run").setLevel(logging.ERROR)  # the OMP_NUM_THREADS=1 banner (README)
    try:
        torchrun(argv)
    except ChildFailedError as exc:
        codes = [failure.exitcode for failure in exc.failures.values()]
        return next((code for code in codes if code > 0), 1)
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
