"""How long `mtl` takes to answer: help, the method list, a recipe error, a TAB, --version and the first step.

Run: python benchmarks/startup.py [--repeat 7] [--before DIR]
Each case starts a fresh `python -m mtlcli` and the median wall time of --repeat runs is printed. With
--before DIR (a checkout of an older mtl, e.g. `git worktree add /tmp/before <commit>`), the same cases run
against it in the same job, alternating, and the table shows the ratio. "first step" is the time from the
launch of `mtl train` (synthetic MultiFashion data, MultiLeNet, batch 256) until its first training step has
finished (read from the step trace the trainer writes), so it includes importing torch and building the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BAD_RECIPE = "data: {name: multifashion}\ntasks: [{name: left}]\nmethod: {name: mgda-ub, normalisation: l2}\noptim: {lr: -1}\n"
REPO = Path(__file__).resolve().parent.parent


def run_once(args: list[str], *, src: Path, cwd: Path, env: dict[str, str] | None = None) -> float:
    """Seconds for `python -m mtlcli ARGS` with the package taken from `src`."""
    full_env = {**os.environ, "PYTHONPATH": str(src), **(env or {})}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mtlcli", *args], cwd=cwd, env=full_env, capture_output=True, check=False)
    return time.perf_counter() - start


def first_step(*, src: Path, cwd: Path) -> float:
    """Seconds from launching `mtl train` until the first step is traced; the run is then stopped."""
    trace = cwd / "trace.jsonl"
    trace.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src), "MTL_STEP_TRACE": str(trace)}
    args = [REPO / "recipes" / "multifashion.yaml", "--set", "data.synthetic=true", "--epochs", "1", "--out", cwd / "runs", "-q"]
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "mtlcli", "train", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while not (trace.exists() and trace.read_text().strip()):
            if process.poll() is not None:
                return float("nan")
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        process.kill()
        process.wait()


def cases(cwd: Path) -> dict[str, dict]:
    complete = {"_MTL_COMPLETE": "complete_bash"}
    return {
        "mtl --help": {"args": ["--help"]},
        "mtl methods": {"args": ["methods"]},
        "mtl --version": {"args": ["--version"]},
        "a recipe error (mtl train bad.yaml)": {"args": ["train", "bad.yaml"]},
        "TAB: mtl train --method mg<TAB>": {
            "args": [], "env": {**complete, "COMP_WORDS": "mtl train --method mg", "COMP_CWORD": "3"}, "new": True,
        },
        "TAB: mtl train --set optim.<TAB>": {
            "args": [], "env": {**complete, "COMP_WORDS": "mtl train --set optim.", "COMP_CWORD": "3"}, "new": True,
        },
        "TAB: mtl eval results/<TAB>": {
            "args": [], "env": {**complete, "COMP_WORDS": "mtl eval results/", "COMP_CWORD": "2"}, "new": True,
        },
        "first training step (mtl train, synthetic)": {"first_step": True},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--before", type=Path, help="an older checkout to compare with, side by side")
    options = parser.parse_args()
    trees = {"now": REPO, **({"before": options.before.resolve()} if options.before else {})}
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        (cwd / "bad.yaml").write_text(BAD_RECIPE)
        (cwd / "results" / "uniform-s0-x").mkdir(parents=True)
        (cwd / "results" / "uniform-s0-x" / "recipe.yaml").write_text("{}\n")
        rows = []
        for name, case in cases(cwd).items():
            times: dict[str, list[float]] = {tree: [] for tree in trees}
            for _ in range(options.repeat):
                for tree, src in trees.items():  # alternate, so drifts of the machine hit both alike
                    if case.get("new") and tree == "before":
                        continue  # completion did not exist before
                    if case.get("first_step"):
                        times[tree].append(first_step(src=src, cwd=cwd))
                    else:
                        times[tree].append(run_once(case["args"], src=src, cwd=cwd, env=case.get("env")))
            medians = {tree: statistics.median(t) if t else None for tree, t in times.items()}
            rows.append((name, medians))
    header = f"{'case':44} {'now (s)':>8}" + (f" {'before (s)':>10} {'now/before':>10}" if options.before else "")
    print(header)
    for name, medians in rows:
        line = f"{name:44} {medians['now']:8.2f}"
        if options.before:
            before = medians.get("before")
            line += f" {before:10.2f} {medians['now'] / before:10.2f}" if before else f" {'-':>10} {'-':>10}"
        print(line)
    print(f"(medians of {options.repeat} runs; python {sys.version.split()[0]}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
