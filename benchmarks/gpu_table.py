"""The one markdown table of `benchmarks/gpu.sh`: what each of its parts measured, read from what they wrote.

Run: python benchmarks/gpu_table.py OUT [--cap-train S] [--dry]   (gpu.sh calls it last; it writes OUT/gpu.md)
OUT holds logs/NAME.{log,rc} of every part, ablate/DATASET-PRECISION/ablation-*.json (`mtl ablate`) and
train/RUN/ (`mtl train`). Every number comes from those files; a part that failed or reached its time cap
is a row that says so.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
from pathlib import Path

TIMED_OUT = (124, 137)  # timeout(1): the cap reached (TERM), or killed after it
HEADER = ["part", "setting", "method", "precision", "ms/step", "× uniform", "peak MiB", "result"]


def status(logs: Path, name: str) -> tuple[int | None, str]:
    """A part's exit status and the line that says what went wrong (its `Error:` line, else its last line)."""
    rc_file, log_file = logs / f"{name}.rc", logs / f"{name}.log"
    rc = int(rc_file.read_text().strip()) if rc_file.is_file() else None
    lines = [line.strip() for line in (log_file.read_text(errors="replace").splitlines() if log_file.is_file() else [])]
    lines = [line for line in lines if line]
    error = next((line for line in lines if line.startswith("Error")), lines[-1] if lines else "no output")
    return rc, error


def outcome(rc: int | None, error: str, cap: str) -> str:
    if rc is None:
        return "not run"
    if rc == -1:
        return "not run: the time budget was spent"
    if rc in TIMED_OUT:
        return f"timed out ({cap})"
    return "ok" if rc == 0 else f"failed (exit {rc}): {error[:120]}"


def number(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def tests_row(logs: Path, cap: str) -> list[str]:
    rc, error = status(logs, "tests")
    text = (logs / "tests.log").read_text(errors="replace") if (logs / "tests.log").is_file() else ""
    counts = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|deselected|error).*?) in [\d.]+s", text, re.MULTILINE)
    if rc == 5:  # pytest: nothing collected
        result = "no test selected"
    elif counts:
        result = ("ok: " if rc == 0 else f"FAILED (exit {rc}): ") + counts[-1]
    else:
        result = outcome(rc, error, cap)
    return ["CUDA-only tests", "pytest", "", "", "", "", "", result]


def ablation_rows(out: Path, logs: Path, cap: str) -> tuple[list[list[str]], set[str]]:
    """One row per method of each `ablate-DATASET-PRECISION` part (or one row saying why it has none)."""
    rows, devices = [], set()
    for rc_file in sorted(logs.glob("ablate-*.rc")):
        name = rc_file.stem
        _, dataset, precision = name.split("-", 2)
        found = sorted((out / "ablate" / f"{dataset}-{precision}").glob("ablation-*.json"))
        payloads = [json.loads(p.read_text()) for p in found]
        rc, error = status(logs, name)
        if rc != 0 or not payloads:
            rows.append(["step cost", dataset, "", precision, "", "", "", outcome(rc, error, cap)])
            continue
        payload = payloads[0]
        devices.add(f"{payload['device']} ({payload['device_name']}), torch {payload['versions']['torch']}")
        applied = payload.get("precision", "fp32")  # what the ablation says it ran (absent: before train.precision)
        note = "ok" if applied == precision else f"not {precision}: the ablation ran {applied}"
        setting = f"{dataset} {_shape(logs, name)}, batch {payload['batch_size']}, T = {len(payload['tasks'])}"
        rows.extend(
            ["step cost", setting, m["label"], precision, number(m["median_ms"]), number(m["ratio"], 2),
             number(m["peak_mib"], 0), note]
            for m in payload["methods"]
        )
    return rows, devices


def _shape(logs: Path, name: str) -> str:
    """The image size gpu.sh noted for a part (logs/NAME.size)."""
    path = logs / f"{name}.size"
    return path.read_text().strip() if path.is_file() else ""


def training_row(out: Path, logs: Path, cap_train: int) -> list[str]:
    """The MultiFashion training stopped at its cap (timeout's 124: it sent SIGTERM, the trainer saved and exited)
    or finished: epochs, step time, accuracy."""
    rc, error = status(logs, "train")
    prepare_rc, prepare_error = status(logs, "prepare")
    runs = sorted(p for p in (out / "train").glob("*") if (p / "metrics.jsonl").is_file()) if (out / "train").is_dir() else []
    setting = f"MultiFashion (real data), {cap_train} s cap"
    if prepare_rc not in (None, 0):
        return ["training", setting, "", "", "", "", "", "not run: prepare " + outcome(prepare_rc, prepare_error, "120 s")]
    if rc not in (0, 124, 130) or not runs:
        return ["training", setting, "", "", "", "", "", outcome(rc, error, f"{cap_train} s")]
    run = runs[-1]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
    method = _method(run / "recipe.yaml") or ""
    if not records:
        return ["training", setting, method, "fp32", "", "", "", "stopped before its first epoch ended"]
    steps = [r["step_seconds_median"] * 1000 for r in records if r.get("step_seconds_median") is not None]
    last = records[-1]
    accuracy = ", ".join(f"{task} {values['accuracy']:.2f}" for task, values in last["test"].items() if "accuracy" in values)
    how = "finished" if rc == 0 else "stopped at the cap"
    result = f"{how}: {len(records)} epochs, test accuracy at epoch {last['epoch']}: {accuracy}"
    return ["training", setting, method, "fp32", number(statistics.median(steps) if steps else None), "", "", result]


def _method(recipe: Path) -> str | None:
    """The method name of a run's recipe.yaml (read as YAML when PyYAML is there)."""
    try:
        import yaml

        return str(yaml.safe_load(recipe.read_text())["method"]["name"])
    except Exception:  # a table must still be written
        return None


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cap-train", type=int, default=120)
    parser.add_argument("--dry", action="store_true", help="the CPU dry run of gpu.sh (tiny sizes): say so in the title")
    args = parser.parse_args()
    logs = args.out / "logs"
    ablations, devices = ablation_rows(args.out, logs, "cap")
    rows = [tests_row(logs, "cap"), *ablations, training_row(args.out, logs, args.cap_train)]
    skipped = logs / "bf16-skipped.txt"
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    title = "benchmarks/gpu.sh --dry (CPU, tiny sizes: checks the script, measures nothing)" if args.dry else "benchmarks/gpu.sh"
    notes = [f"{title}, {date}; " + ("; ".join(sorted(devices)) or "no ablation ran")]
    if skipped.is_file():
        notes.append(skipped.read_text().strip())
    text = "\n".join(f"<!-- {n} -->" for n in notes) + "\n\n" + markdown(rows)
    (args.out / "gpu.md").write_text(text)
    print(args.out / "gpu.md")


if __name__ == "__main__":
    main()
