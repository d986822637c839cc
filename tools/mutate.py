"""Mutation testing of one module: `make mutate MODULE=mtlcli/dense.py` (README: Development > Mutation testing).

mutmut mutates MODULE only (one small edit per mutant) and runs against each mutant the test files that exercise the
module, listed in `TESTS` below (mutmut then keeps, per function, only the tests that call it). It works in a snapshot
of the repository under .mutmut/<module>/ (git-ignored), taken afresh at each run: the working tree is never touched,
and edits made while it runs do not leak in. At the end it prints every mutant that no test killed, as a diff, and the
counts. A module missing from the table can still be run with its tests named: TESTS="tests/unit/test_x.py ...".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".mutmut"

# module -> the fast unit tests that exercise it (keep each list to tests of seconds, not end-to-end runs)
METHODS = "tests/unit/methods"
TESTS: dict[str, list[str]] = {
    "mtlcli/methods/min_norm.py": [
        f"{METHODS}/test_min_norm_reference.py",
        f"{METHODS}/test_min_norm_definition.py",
        f"{METHODS}/test_mgda_family.py",
    ],
    "mtlcli/dense.py": ["tests/unit/test_dense.py", "tests/unit/test_dense_edges.py"],
    "mtlcli/metrics.py": ["tests/unit/test_metrics.py", "tests/unit/test_dense.py"],
    "mtlcli/methods/mgda_ub.py": [f"{METHODS}/test_mgda_ub_options.py", f"{METHODS}/test_mgda_ub_step.py"],
    "mtlcli/methods/_representation.py": [
        f"{METHODS}/test_representation.py",
        f"{METHODS}/test_levels.py",
        f"{METHODS}/test_mgda_ub_step.py",
        f"{METHODS}/test_steps.py",
    ],
    "mtlcli/methods/_levels.py": [f"{METHODS}/test_levels.py", f"{METHODS}/test_steps.py"],
    "mtlcli/methods/_shared_params.py": [f"{METHODS}/test_levels.py", f"{METHODS}/test_steps.py"],
    "mtlcli/distributed.py": ["tests/unit/test_distributed.py"],
}


DETECTED = ("killed", "timeout")  # a mutant that makes the tests hang is caught too (mutmut stops them at a time limit)
SHOW = "import sys\nfrom mutmut.__main__ import show\nfor name in sys.argv[1:]:\n    show.callback(name)\n"


def run(*args: str, cwd: Path, capture: bool = False) -> str:
    done = subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=cwd, text=True, capture_output=capture, check=False)
    if done.returncode != 0:
        sys.exit(f"mutmut {' '.join(args)} failed (exit {done.returncode}){': ' + done.stdout + done.stderr if capture else ''}")
    return done.stdout if capture else ""


def snapshot(module: str, tests: list[str]) -> Path:
    """A fresh copy of the package, the tests and pyproject.toml, whose [tool.mutmut] names MODULE and its tests."""
    scratch = SCRATCH / module.removesuffix(".py").replace("/", ".")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "mtlcli", scratch / "mtlcli", ignore=skip)
    shutil.copytree(ROOT / "tests", scratch / "tests", ignore=skip)
    config = (ROOT / "pyproject.toml").read_text()
    header = "[tool.mutmut]\n"
    if header not in config:
        sys.exit("pyproject.toml has no [tool.mutmut] section")
    chosen = f"only_mutate = {json.dumps([module])}\npytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
    (scratch / "pyproject.toml").write_text(config.replace(header, header + chosen, 1))
    return scratch


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].endswith(".py"):
        sys.exit("usage: python tools/mutate.py mtlcli/<module>.py   (or: make mutate MODULE=mtlcli/<module>.py)")
    module = argv[1]
    tests = os.environ.get("TESTS", "").split() or TESTS.get(module)
    if not (ROOT / module).is_file():
        sys.exit(f"no such module: {module}")
    if not tests:
        sys.exit(f"no tests listed for {module} in tools/mutate.py; name them: TESTS='tests/unit/...' make mutate ...")
    missing = [t for t in tests if not (ROOT / t).is_file()]
    if missing:
        sys.exit(f"test files not found: {', '.join(missing)}")
    scratch = snapshot(module, tests)
    jobs = os.environ.get("JOBS") or str(os.cpu_count() or 1)
    print(f"mutating {module} against {' '.join(tests)} in {scratch.relative_to(ROOT)} ({jobs} workers)", flush=True)
    run("run", "--max-children", jobs, cwd=scratch)

    status = dict(re.findall(r"^\s*(\S+): (.+?)\s*$", run("results", "--all", "true", cwd=scratch, capture=True), re.M))
    survivors = sorted(name for name, s in status.items() if s not in DETECTED)
    if survivors:  # one process for all the diffs (`mutmut show` one at a time costs a second each)
        subprocess.run([sys.executable, "-c", SHOW, *survivors], cwd=scratch, check=True)
    counts = Counter(status.values())
    detected, total = sum(counts[s] for s in DETECTED), sum(counts.values())
    print(f"\n{module}: {detected}/{total} mutants killed ({100 * detected / max(total, 1):.1f}%; a timeout counts as killed)")
    print("  " + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())))
    print("surviving mutants:" if survivors else "no surviving mutant", *survivors, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
