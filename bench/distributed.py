"""Data-parallel step time: DDP (detlite's training step) against the after-backward all-reduce
of detlite 0.1.0, in the same run, on 2 CPU processes (gloo) by default.

    python bench/distributed.py                       # Lite0 256 and D0 512, batch 2 per process
    python bench/distributed.py --configs lite0:256 --batch 4 --steps 6
    python bench/distributed.py --compile             # also DDP compiled (DDPOptimizer) and
                                                      # compiled autograd (minutes of compiling)

A step is what the trainer runs: target assignment, forward, loss, backward, gradient
synchronisation, clipping, SGD. "DDP" buckets the gradients and all-reduces each bucket while
backward still runs; "after backward" waits for the whole backward, then all-reduces one
flattened buffer (the 0.1.0 code, kept here as the reference). Synthetic images and boxes; one
thread per process; times are medians over --steps after 2 warm-up steps, in seconds, as rank 0
measures them. Prints a markdown table with ratios against the after-backward all-reduce
(eager rows against the eager one, compiled rows against the compiled one).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detlite import config, model
from detlite.optim import OptimConfig, make_sgd, trainable_names
from detlite.parallel import LossOverRanks
from detlite.steps import StepOptions, TrainingLoss


def all_reduce_after_backward(grads: list[torch.Tensor]) -> None:
    """The 0.1.0 synchronisation: one flattened all-reduce of every gradient after backward."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def synthetic_batch(batch: int, size: int, rank: int):
    g = torch.Generator().manual_seed(rank)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    xy = torch.rand(batch, 8, 2, generator=g) * size * 0.7
    boxes = torch.cat([xy, xy + torch.rand(batch, 8, 2, generator=g) * size * 0.3 + 8], -1)
    return images, boxes, torch.randint(0, 90, (batch, 8), generator=g)


def make_step(method: str, preset: str, size: int, batch: int, world: int):
    cfg = config.preset(preset, num_classes=90, image_size=size)
    params = model.init(cfg)
    names = trainable_names(params)
    for name in names:
        params[name] = torch.nn.Parameter(params[name])
    compile_mode = "off" if method in ("after", "ddp") else "default"
    if method == "compiled-autograd":
        torch._dynamo.config.compiled_autograd = True
    loss = TrainingLoss(cfg, StepOptions(compile=compile_mode))
    after = method.startswith("after")
    net = None if after else LossOverRanks(loss, params, world, torch.device("cpu"))
    optimizer = make_sgd(params, names, OptimConfig(), lr=0.01)
    images, boxes, labels = synthetic_batch(batch, size, dist.get_rank())
    tensors = [params[k] for k in names]

    def step() -> None:
        targets = loss.assign(boxes, labels)
        total = targets.positives.sum().clone()
        dist.all_reduce(total)
        if net is None:
            losses = loss.with_targets(params, images, targets, total)
            (losses[0] * world).backward()
            all_reduce_after_backward([p.grad for p in tensors])
            for p in tensors:
                p.grad /= world
        else:
            losses = net(images, targets, total)
            (losses[0] * net.gradient_scale).backward()
        torch.nn.utils.clip_grad_norm_(tensors, 10.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def worker(rank: int, world: int, port: int, job: tuple, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    method, preset, size, batch, steps = job
    step = make_step(method, preset, size, batch, world)
    times = []
    for i in range(steps + 2):
        dist.barrier()
        start = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    if rank == 0:
        results.put(statistics.median(times))
    dist.destroy_process_group()


def measure(job: tuple, world: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(worker, args=(world, port, job, results), nprocs=world)
    return results.get()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["tf_efficientdet_lite0:256", "d0:512"])
    parser.add_argument("--batch", type=int, default=2, help="images per process")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    compiled = ["after-compiled", "ddp-compiled", "compiled-autograd"]
    methods = ["after", "ddp"] + (compiled if args.compile else [])
    label = {
        "after": "after-backward all-reduce (0.1.0)",
        "ddp": "DDP, eager",
        "after-compiled": "after-backward all-reduce, torch.compile",
        "ddp-compiled": "DDP, torch.compile (DDPOptimizer)",
        "compiled-autograd": "DDP, torch.compile + compiled autograd",
    }
    print(f"\n{args.world} processes × batch {args.batch}, gloo, 1 thread each, torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs\n")  # fmt: skip
    print("| model | synchronisation | median step | vs after-backward |")
    print("|---|---|---:|---:|")
    for entry in args.configs:
        preset, size = entry.split(":")
        times = {
            m: measure((m, preset, int(size), args.batch, args.steps), args.world) for m in methods
        }
        for m in methods:
            base = times["after-compiled" if m in compiled else "after"]
            ratio = base / times[m]
            print(f"| {preset} {size} | {label[m]} | {times[m]:.3f} s | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
