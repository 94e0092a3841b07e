"""Training-step benchmark, detlite against effdet 0.4.1 in the same run: prints Markdown tables.

    python bench/train.py                  # the goal table: D0@512 batch 2, Lite0@256 batch 8
    python bench/train.py --configs lite0@256:8 --no-rss
    python bench/train.py --scaling        # img/s by batch (1, 2, 4, 8) and size (256, 512, 768)
    python bench/train.py --device cuda --configs d0@512:32 --precision bf16 --no-rss

A training step is what the trainer runs: target assignment, forward, loss, backward, gradient
clipping, SGD and the EMA update. effdet's step is DetBenchTrain (its anchor labeler, model and
loss) with backward, clipping and SGD. Synthetic images with 12 boxes each, random weights.

The goal table times, per config, effdet (eager), detlite eager on the Python reference kernels of
its ops (the unoptimised path; the override is for CPU tensors, so on CUDA that row runs the CUDA
kernels like the next), detlite eager (C++ CPU kernels where loaded) and detlite compiled, and
the last two again in channels_last (--implementations picks rows).
The first 5 steps of every detlite row start from the same weights, batch and seed; their losses
are compared with the unoptimised path's (relative difference at step 1 and the largest of the 5).
Times are medians over --repeats steps after those 5, taken in rounds that call every
implementation once in turn (this host's speed drifts); compilation is excluded. Peak RSS: each
implementation alone in a fresh process (its VmHWM after 3 steps, compilation included), unless
--no-rss. Every row, and every RSS child, runs with freed host memory kept for reuse
(detlite.host_memory, as train.py runs); --release-freed-memory times all under glibc's default.

The scaling table times effdet and detlite eager, NCHW or (--scaling-implementation "detlite eager,
channels_last") NHWC; one compile per shape would cost more minutes than the table, and the goal
table shows what compiling adds. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]  # effdet helpers, timing
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from effdet_ref import effdet_config, swap_xy  # noqa: E402
from kernel_choice import reference_cpu_kernels  # noqa: E402
from presets import PRESETS  # noqa: E402
from timing import add_host_memory_flag, apply_host_memory_flag, interleaved_medians  # noqa: E402

from detlite import config, model, ops  # noqa: E402
from detlite.optim import OptimConfig, ema_update, make_sgd, trainable_names  # noqa: E402
from detlite.steps import StepOptions, TrainingLoss  # noqa: E402

IMPLEMENTATIONS = (
    "effdet",
    "detlite reference kernels",
    "detlite eager",
    "detlite compiled",
    "detlite eager, channels_last",
    "detlite compiled, channels_last",
)
CHECKED_STEPS = 5


def synthetic_batch(batch: int, size: int, num_classes: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    xy = torch.rand(batch, 20, 2, generator=gen) * size * 0.7
    wh = torch.rand(batch, 20, 2, generator=gen) * size * 0.3 + 8
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.randint(0, num_classes, (batch, 20), generator=gen)
    labels[:, 12:] = -1  # 12 real boxes per image, the rest padding
    return images.to(device), boxes.to(device), labels.to(device)


def detlite_step(cfg, batch: int, options: StepOptions, device) -> Callable[[], float]:
    """One trainer step on a fixed batch; returns the step's total loss."""
    params = {k: v.to(device) for k, v in model.init(cfg, seed=0).items()}
    names = trainable_names(params)
    for k in names:
        params[k].requires_grad_(True)
    trainable = [params[k] for k in names]
    opt = make_sgd(params, names, OptimConfig(), lr=0.01)
    ema = {k: v.detach().clone() for k, v in params.items()}
    train_loss = TrainingLoss(cfg, options, str(device))
    images, boxes, labels = synthetic_batch(batch, cfg.image_size[0], cfg.num_classes, device)

    def step() -> float:
        total, _, _ = train_loss(params, images, boxes, labels)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 10.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, params, 0.9998)
        return total.item()

    return step


def on_reference_kernels(step: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        with reference_cpu_kernels():
            return step()

    return run


def effdet_step(cfg, batch: int, device) -> Callable[[], float]:
    from effdet import DetBenchTrain, EfficientDet

    net = EfficientDet(effdet_config(cfg), pretrained_backbone=False)
    bench = DetBenchTrain(net, create_labeler=True).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    images, boxes, labels = synthetic_batch(batch, cfg.image_size[0], cfg.num_classes, device)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255
    x = (images.float() - mean) / std  # effdet's loader hands the model normalised floats
    # effdet wants y-first boxes and 1-based classes; padding rows are -1.
    target = {"bbox": swap_xy(boxes), "cls": torch.where(labels >= 0, labels + 1, -1).float()}

    def step() -> float:
        loss = bench(x, target)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def make_step(impl: str, preset: str, size: int, batch: int, args) -> Callable[[], float]:
    cfg = config.preset(preset, num_classes=90, image_size=size)
    device = torch.device(args.device)
    if impl == "effdet":
        return effdet_step(cfg, batch, device)
    options = StepOptions(
        compile="default" if impl.startswith("detlite compiled") else "off",
        dtype=args.precision,
        channels_last=impl.endswith("channels_last"),
    )
    step = detlite_step(cfg, batch, options, device)
    return on_reference_kernels(step) if impl == "detlite reference kernels" else step


def peak_rss_mb(impl: str, preset: str, size: int, batch: int, args) -> float:
    """Peak RSS of a fresh process that builds `impl` and runs 3 steps (compilation included)."""
    child = [sys.executable, __file__, "--rss-child", impl, "--device", args.device]
    child += ["--configs", f"{preset}@{size}:{batch}", "--precision", args.precision]
    child += ["--release-freed-memory"] if args.release_freed_memory else []
    out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def rss_child(args) -> None:
    preset, size, batch = parse_configs(args.configs)[0]
    step = make_step(args.rss_child, preset, size, batch, args)
    for _ in range(3):
        step()
    # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss over exec.
    status = Path("/proc/self/status").read_text()
    print(int(status.split("VmHWM:")[1].split()[0]) / 1024)  # kB


def checked_losses(step: Callable[[], float]) -> list[float]:
    """The first steps' losses, from one seed (D0 draws stochastic depth: the same in every row)."""
    torch.manual_seed(0)
    return [step() for _ in range(CHECKED_STEPS)]


def loss_check(losses: list[float], reference: list[float]) -> str:
    """Relative difference at step 1, and the largest over the checked steps."""
    diffs = [abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True)]
    return f"{diffs[0]:.0e} / {max(diffs):.0e}"


def goal_rows(preset: str, size: int, batch: int, args):
    """(implementation, median s, effdet's median s, loss check, peak RSS MB) per implementation."""
    torch._dynamo.reset()  # each config compiles afresh, for static shapes
    steps = {impl: make_step(impl, preset, size, batch, args) for impl in args.implementations}
    losses = {impl: checked_losses(step) for impl, step in steps.items()}
    reference = losses["detlite reference kernels"]
    print(f"{preset}@{size} batch {batch}, first losses: {losses}", file=sys.stderr)
    medians = interleaved_medians(steps, 0, args.repeats)
    for impl, seconds in medians.items():
        check = "—" if impl == "effdet" else loss_check(losses[impl], reference)
        rss = peak_rss_mb(impl, preset, size, batch, args) if args.rss else float("nan")
        yield impl, seconds, medians["effdet"], check, rss


def print_goal_table(args) -> None:
    print("| config | implementation | median step | img/s | × effdet | loss vs reference kernels: "
          "rel. diff step 1 / max of 5 | peak RSS (MB) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset, size, batch in parse_configs(args.configs):
        short = f"{preset.removeprefix('tf_efficientdet_')}@{size} b{batch}"
        for impl, seconds, base, check, rss in goal_rows(preset, size, batch, args):
            rss_cell = f"{rss:,.0f}" if args.rss else "—"
            print(
                f"| {short} | {impl} | {seconds * 1e3:,.0f} ms | {batch / seconds:.2f} | "
                f"{base / seconds:.2f} | {check} | {rss_cell} |",
                flush=True,
            )


def print_scaling_table(args) -> None:
    preset = PRESETS.get(args.scaling_model, args.scaling_model)
    ours_impl = args.scaling_implementation
    print(f"{preset}, training step, {ours_impl}\n")
    print("| size | batch | effdet img/s | detlite img/s | × effdet |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for batch in args.batches:
            impls = ("effdet", ours_impl)
            steps = {impl: make_step(impl, preset, size, batch, args) for impl in impls}
            medians = interleaved_medians(steps, 2, args.repeats)
            effdet, ours = medians["effdet"], medians[ours_impl]
            print(
                f"| {size} | {batch} | {batch / effdet:.2f} | {batch / ours:.2f} | "
                f"{effdet / ours:.2f} |",
                flush=True,
            )


def parse_configs(text: str) -> list[tuple[str, int, int]]:
    """ "d0@512:2,lite0@256:8" → [(preset, size, batch), ...]."""
    out = []
    for spec in text.split(","):
        name, rest = spec.split("@")
        size, batch = rest.split(":")
        out.append((PRESETS.get(name, name), int(size), int(batch)))
    return out


def _implementations(text: str) -> list[str]:
    chosen = {name.strip() for name in text.split(";")}
    unknown = chosen - set(IMPLEMENTATIONS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {sorted(unknown)}; choose from {IMPLEMENTATIONS}"
        )
    # The ratio's base and the loss check's reference are always timed.
    chosen |= {"effdet", "detlite reference kernels"}
    return [name for name in IMPLEMENTATIONS if name in chosen]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="d0@512:2,lite0@256:8", help="model@size:batch, ...")
    p.add_argument("--scaling", action="store_true", help="print the scaling table instead")
    p.add_argument("--scaling-model", default="d0")
    p.add_argument(
        "--scaling-implementation",
        default="detlite eager",
        choices=[impl for impl in IMPLEMENTATIONS if impl.startswith("detlite eager")],
        help="the detlite row of the scaling table",
    )
    p.add_argument("--sizes", default="256,512,768", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--batches", default="1,2,4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-RSS runs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument(
        "--implementations",
        default=";".join(IMPLEMENTATIONS),
        type=_implementations,
        help="rows of the goal table, separated by ; (effdet and the reference kernels always)",
    )
    add_host_memory_flag(p)
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    memory = apply_host_memory_flag(args)
    if args.rss_child:
        return rss_child(args)
    print(f"# detlite training-step benchmark, {datetime.date.today().isoformat()}")
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {args.device}, "
        f"{args.precision}; {ops.status()}; {memory}"
    )
    print(f"command: python {' '.join(sys.argv)}\n")
    print_scaling_table(args) if args.scaling else print_goal_table(args)


if __name__ == "__main__":
    main()
