"""Train several runs one after the other in one process, or in one torchrun job (one launch and one process
group for all of them): `python -m torch.distributed.run ... tests/integration/train_many.py CASES.json`.

CASES.json is a list of {"recipe", "method", "sets", "epochs", "out", "trace", "run_file"}: each run's method
weights go to `trace` (every step, rank 0) and rank 0 writes its run directory to `run_file`. What `mtl train`
does for one recipe, without a process (and a process group) per run; test_distributed.py's runner.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from mtlcli import distributed
from mtlcli.recipe import load
from mtlcli.training.callbacks import StepTrace
from mtlcli.training.loop import Trainer


def train_many(cases: list[dict]) -> None:
    try:
        for case in cases:
            recipe = load(Path(case["recipe"]), method=case["method"], epochs=case["epochs"], out=case["out"], sets=case["sets"])
            trace = [StepTrace(Path(case["trace"]))]
            trainer = Trainer(recipe, console=Console(stderr=True, quiet=True), show_progress=False, extra_callbacks=trace)
            run_dir = trainer.run()
            if trainer.job.writer:
                Path(case["run_file"]).write_text(str(run_dir))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    train_many(json.loads(Path(sys.argv[1]).read_text()))
