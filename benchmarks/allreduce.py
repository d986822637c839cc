"""What data-parallel MGDA-UB adds per step: the all-reduces of the T x T Gram matrix and the T losses,
next to the gradient all-reduce every data-parallel method pays, side by side in one job.

Run: torchrun --standalone --nproc-per-node 2 benchmarks/allreduce.py [--tasks 40] [--params 11168832]
(gloo on the CPU, NCCL on GPUs). Rank 0 prints the median time of each collective over --repeat calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist


def median_ms(tensor: torch.Tensor, repeat: int, sync: bool) -> float:
    times = []
    for _ in range(repeat):
        if sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--params", type=int, default=11_168_832, help="gradient numbers (ResNet-18 encoder: 11,168,832)")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{dist.get_rank() % max(torch.cuda.device_count(), 1)}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    t = args.tasks
    cases = {
        f"Gram matrix {t}x{t} + {t} losses (MGDA-UB's extra)": torch.ones(t * t + t, device=device),
        f"gradients, {args.params:,} numbers (every method)": torch.ones(args.params, device=device),
    }
    for tensor in cases.values():  # warm-up: connections and buffers
        median_ms(tensor, 3, cuda)
    results = {name: median_ms(tensor, args.repeat, cuda) for name, tensor in cases.items()}
    if dist.get_rank() == 0:
        backend = dist.get_backend()
        print(f"{dist.get_world_size()} processes, {backend}, median of {args.repeat} all-reduces:")
        for name, ms in results.items():
            print(f"  {name}: {ms:.3f} ms")
        gram, grads = results.values()
        print(f"  ratio Gram / gradients: {gram / grads:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
