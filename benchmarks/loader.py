"""How fast the streamed loader (`data.placement: stream`) feeds a step, on this machine's CPU.

Run: python benchmarks/loader.py [--dataset celeba] [--size 64] [--batch 256] [--samples 4096] [--steps 3]
A random stand-in of the dataset (its shapes and target kinds) is written as a prepared dataset in a temporary
directory and read back memory-mapped, as `mtl train` reads one. Measured: the images per second the streamed
split's feed hands over (one epoch: read ahead by its thread, normalised; the files are in the page cache, just
written), the same for the on-demand gather of the in-memory path (`data.placement: device` on the CPU), and
the images per second a uniform step consumes (`mtl ablate`'s median ms/step of uniform on the same recipe,
synthetic data, this CPU). The ratio loader / step says how many times faster than the step the loader is.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import yaml

from mtlcli.ablation import MethodSpec, run_ablation
from mtlcli.data.device import DeviceSplit, EpochPlan
from mtlcli.data.store import write_prepared
from mtlcli.data.synthetic import synthetic_dataset
from mtlcli.recipe import validate
from mtlcli.training.build import device_splits, load_dataset, training_steps

REPO = Path(__file__).resolve().parent.parent


def images_per_second(split: DeviceSplit, batch: int) -> float:
    """One epoch of `split.feed` in a random order, consumed as fast as it comes."""
    n = len(split)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    seen = 0
    with split.feed(EpochPlan(perm, batch, training_steps(n, batch))) as feed:
        for x, _y in feed:
            seen += len(x)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="celeba", help="a shipped recipe (recipes/NAME.yaml)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4096, help="training samples of the stand-in")
    parser.add_argument("--steps", type=int, default=3, help="timed uniform steps (after one warm-up step)")
    args = parser.parse_args()

    raw = yaml.safe_load((REPO / "recipes" / f"{args.dataset}.yaml").read_text())
    raw["data"]["size"] = args.size
    raw["train"].update(batch_size=args.batch, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        counts = {"train": args.samples, "val": 4, "test": 4}
        data = synthetic_dataset(args.dataset, size=args.size, seed=0, counts=counts)
        splits = {split: {"images": data.images[split], **data.targets[split]} for split in counts}
        write_prepared(Path(tmp), args.dataset, splits, {k: v for k, v in data.meta.items() if k != "synthetic"})
        rates = {}
        for placement in ("stream", "device"):
            r = validate({**copy.deepcopy(raw), "data": {**raw["data"], "dir": tmp, "placement": placement}})
            train = device_splits(r, load_dataset(r), torch.device("cpu"))["train"]
            images_per_second(train, args.batch)  # the page cache and the allocator warmed alike
            rates[placement] = images_per_second(train, args.batch)
    synthetic = validate({**copy.deepcopy(raw), "data": {**raw["data"], "synthetic": True}})
    step_ms = run_ablation(synthetic, [MethodSpec("uniform")], steps=args.steps, warmup=1)["methods"][0]["median_ms"]
    consumed = args.batch / (step_ms / 1000.0)
    print(f"{args.dataset} {args.size}px, batch {args.batch}, {args.samples} samples, {torch.get_num_threads()} threads")
    print(f"streamed loader: {rates['stream']:,.0f} images/s; in-memory gather: {rates['device']:,.0f} images/s")
    print(f"uniform step: {step_ms:.0f} ms/step = {consumed:,.0f} images/s consumed")
    print(f"loader / step: {rates['stream'] / consumed:.1f}x")


if __name__ == "__main__":
    main()
