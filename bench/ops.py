"""Benchmark of the detlite ops against plain PyTorch: prints a table.

    python bench/ops.py                      # CUDA if available, else CPU (smaller focal batch)
    python bench/ops.py --device cpu --focal-batch 2 --repeats 3
    python bench/ops.py --device cuda --dtype float16

Focal loss: forward + backward of the summed, normalised class loss at EfficientDet-D0 sizes
(A = 49,104 anchors, C = 90 classes) for the fused operator `detlite::sigmoid_focal_loss` (on
the CPU with the C++ kernels loaded: those, and its reference torch kernels), for detlite's plain
PyTorch expression compiled with torch.compile, and for the same expression eager. NMS:
`detlite::batched_nms` over the whole batch (the same two kernels) against a Python loop of
torchvision's `batched_nms` per image (B = 32, K = 5,000 candidates, 90 classes, IoU 0.5, 100 kept).

Times are medians over `--repeats` runs after warm-up (compilation excluded). Peak memory is the
peak allocation above what was allocated before the call (CUDA: torch's allocator statistics;
CPU: the process's resident set, sampled every millisecond, so approximate).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import torch
import torchvision

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # tests/ holds the reference implementations

from kernel_choice import reference_cpu_kernels  # noqa: E402
from oracles import plain_focal_loss  # noqa: E402

from detlite import ops  # noqa: E402
from detlite.config import LossConfig  # noqa: E402

D0_ANCHORS = 49104


class _RssSampler:
    """Peak resident set size (bytes) above the level at start, sampled in a thread."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> Self:
        self._base = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self._base)
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss() - self._base)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int):
    """(median seconds, peak bytes above the starting allocation) of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1000.0)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with _RssSampler() as sampler:
            for _ in range(repeats):
                begin = time.perf_counter()
                fn()
                times.append(time.perf_counter() - begin)
        peak = sampler.peak
    return statistics.median(times), peak


def on_reference(fn: Callable[[], object]) -> Callable[[], object]:
    """fn with the CPU tensors of the detlite ops on their Python reference kernels."""

    def run():
        with reference_cpu_kernels():
            return fn()

    return run


def focal_cases(args, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    shape = (args.focal_batch, args.anchors, args.classes)
    dtype = getattr(torch, args.dtype)
    # A detector's logits are mostly confident negatives; about 0.1 % positive anchors.
    logits = (torch.randn(shape, generator=g) - 4.0).to(device=device, dtype=dtype)
    labels = torch.full(shape[:2], -1, dtype=torch.long)
    pick = torch.rand(shape[:2], generator=g)
    labels[pick < 0.001] = torch.randint(0, args.classes, (int((pick < 0.001).sum()),), generator=g)
    labels[(pick > 0.001) & (pick < 0.01)] = -2
    labels = labels.to(device)
    normaliser = (labels >= 0).sum().float() + 1.0
    cfg = LossConfig()

    def fused(x):
        return ops.sigmoid_focal_loss(x, labels, cfg.alpha, cfg.gamma, cfg.label_smoothing).sum()

    def plain(x):
        return plain_focal_loss(x, labels, cfg)

    compiled_plain = torch.compile(plain, fullgraph=True)

    def step(loss_fn):
        def run():
            x = logits.detach().requires_grad_()
            (loss_fn(x) / normaliser).backward()
            return x.grad

        return run

    cases = [("fused op detlite::sigmoid_focal_loss", step(fused))]
    if device.type == "cpu" and ops.cpu_kernels_loaded():
        cases.append(("  the same op on its reference torch kernels", on_reference(step(fused))))
    if not args.no_compile:
        cases.append(("plain PyTorch, torch.compile", step(compiled_plain)))
    cases.append(("plain PyTorch, eager", step(plain)))
    # The three agree (a sanity check, not part of the timing).
    grads = [fn() for _, fn in cases]
    for (name, _), grad in zip(cases[1:], grads[1:], strict=True):
        torch.testing.assert_close(grad.float(), grads[0].float(), rtol=1e-3, atol=1e-6, msg=name)
    return cases


def nms_cases(args, device: torch.device):
    g = torch.Generator().manual_seed(1)
    batch, num = args.nms_batch, args.nms_candidates
    xy = torch.rand(batch, num, 2, generator=g) * 512
    wh = torch.rand(batch, num, 2, generator=g) * 150 + 2
    boxes = torch.cat([xy, xy + wh], dim=-1).clamp(max=512).to(device)
    scores = torch.rand(batch, num, generator=g).to(device)
    classes = torch.randint(0, args.classes, (batch, num), generator=g).to(device)

    def op():
        return ops.batched_nms(boxes, scores, classes, 0.5, 100)

    def loop():
        return [
            torchvision.ops.batched_nms(boxes[b], scores[b], classes[b], 0.5)[:100]
            for b in range(batch)
        ]

    keep, count = op()
    for b, ref in enumerate(loop()):
        assert torch.equal(keep[b, : int(count[b])], ref), "NMS results differ"
    cases = [("detlite::batched_nms (whole batch)", op)]
    if device.type == "cpu" and ops.cpu_kernels_loaded():
        cases.append(("  the same op on its reference torch kernel", on_reference(op)))
    return [*cases, ("loop of torchvision batched_nms", loop)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--focal-batch", type=int, default=None, help="default 32 (CUDA), 2 (CPU)")
    parser.add_argument("--anchors", type=int, default=D0_ANCHORS)
    parser.add_argument("--classes", type=int, default=90)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--nms-batch", type=int, default=32)
    parser.add_argument("--nms-candidates", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=None, help="default 20 (CUDA), 3 (CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile case")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if args.focal_batch is None:
        args.focal_batch = 32 if on_cuda else 2
    repeats = args.repeats or (20 if on_cuda else 3)

    if on_cuda:
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = (
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    print(f"# detlite ops benchmark, {datetime.date.today().isoformat()}")
    print(
        f"device: {device} ({hardware}); torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}; {ops.status()}"
    )
    print(f"command: python {' '.join(sys.argv)}\n")

    sections = [
        (
            (
                f"focal loss forward+backward, B={args.focal_batch}, A={args.anchors:,}, "
                f"C={args.classes}, logits {args.dtype}"
            ),
            focal_cases(args, device),
        ),
        (
            (
                f"NMS, B={args.nms_batch}, K={args.nms_candidates:,}, {args.classes} classes, "
                "IoU 0.5, max_det 100"
            ),
            nms_cases(args, device),
        ),
    ]
    for title, cases in sections:
        print(f"{title}\n")
        print("| implementation | time (ms) | peak memory (MiB) |")
        print("|---|---:|---:|")
        for name, fn in cases:
            seconds, peak = measure(fn, device, warmup=2, repeats=repeats)
            print(f"| {name} | {seconds * 1e3:,.1f} | {peak / 2**20:,.0f} |", flush=True)
        print()


if __name__ == "__main__":
    main()
