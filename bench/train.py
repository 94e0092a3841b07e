"""Training-step and inference timings: detlite (eager and compiled) against effdet, same run.

    python bench/train.py                      # D0 at 512, train batch 2, inference batch 1, CPU
    python bench/train.py --device cuda --train-batch 32 --precision bf16

A training step is what the trainer runs: target assignment, forward, loss, backward, gradient
clipping, SGD, EMA. effdet's step is DetBenchTrain (its anchor labeler + model + loss) with
backward and SGD. Synthetic images and boxes; timings are medians after warm-up. Prints a
markdown table with ratios against effdet.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from detlite import config, model
from detlite.optim import OptimConfig, ema_update, make_sgd, trainable_names
from detlite.steps import Predictor, StepOptions, TrainingLoss


def synthetic_batch(batch: int, size: int, num_classes: int, gen: torch.Generator):
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    m = 20
    xy = torch.rand(batch, m, 2, generator=gen) * size * 0.7
    wh = torch.rand(batch, m, 2, generator=gen) * size * 0.3 + 8
    boxes = torch.cat([xy, xy + wh], dim=-1)
    labels = torch.randint(0, num_classes, (batch, m), generator=gen)
    labels[:, 12:] = -1  # 12 real boxes per image, the rest padding
    return images, boxes, labels


def timed(fn, warmup: int, repeats: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def detlite_train_step(preset: str, size: int, batch: int, compile_mode: str, dtype: str, device):
    options = StepOptions(compile=compile_mode, dtype=dtype)
    mcfg = config.preset(preset, num_classes=90, image_size=size)
    params = {k: v.to(device) for k, v in model.init(mcfg).items()}
    names = trainable_names(params)
    for k in names:
        params[k].requires_grad_(True)
    opt = make_sgd(params, names, OptimConfig(), lr=0.01)
    ema = {k: v.detach().clone() for k, v in params.items()}
    train_loss = TrainingLoss(mcfg, options, device)
    images, boxes, labels = (
        t.to(device) for t in synthetic_batch(batch, size, 90, torch.Generator().manual_seed(0))
    )
    trainable = [params[k] for k in names]

    def step():
        total, _, _ = train_loss(params, images, boxes, labels)
        total.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 10.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, params, 0.9998)

    return step


def detlite_predict(preset: str, size: int, batch: int, compile_mode: str, device):
    """The product's inference step: uint8 images in, normalisation, network, decode, NMS."""
    mcfg = config.preset(preset, num_classes=90, image_size=size)
    params = {k: v.to(device) for k, v in model.init(mcfg).items()}
    predictor = Predictor(mcfg, StepOptions(compile=compile_mode), device)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    return lambda: predictor(params, images)


def effdet_train_step(preset: str, size: int, batch: int, device):
    import effdet

    net = effdet.create_model(
        preset, bench_task="train", bench_labeler=True, pretrained=False, pretrained_backbone=False,
        num_classes=90, image_size=(size, size),
    ).to(device).train()  # fmt: skip
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    images, boxes, labels = synthetic_batch(batch, size, 90, torch.Generator().manual_seed(0))
    x = images.float().to(device) / 255.0
    target = {
        # effdet wants y-first boxes and 1-based classes; padding rows are -1.
        "bbox": boxes[..., [1, 0, 3, 2]].to(device),
        "cls": torch.where(labels >= 0, labels + 1, -1).float().to(device),
    }

    def step():
        loss = net(x, target)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def effdet_predict(preset: str, size: int, batch: int, device):
    import effdet

    net = effdet.create_model(
        preset, bench_task="predict", pretrained=False, pretrained_backbone=False,
        num_classes=90, image_size=(size, size),
    ).to(device).eval()  # fmt: skip
    images = torch.randn(batch, 3, size, size, device=device)

    def run():
        with torch.no_grad():
            net(images)

    return run


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", default="tf_efficientdet_d0")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--predict-batch", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warm, rep = 2, args.repeats

    rows = []
    ref_train = timed(
        effdet_train_step(args.preset, args.size, args.train_batch, device), warm, rep, device
    )
    rows.append(("train step", "effdet 0.4.1 (eager)", ref_train, ref_train))
    for mode in ("off", "default"):
        t = timed(
            detlite_train_step(
                args.preset, args.size, args.train_batch, mode, args.precision, device
            ),
            warm,
            rep,
            device,
        )
        rows.append(
            ("train step", f"detlite ({'eager' if mode == 'off' else 'compiled'})", t, ref_train)
        )
    ref_pred = timed(
        effdet_predict(args.preset, args.size, args.predict_batch, device), warm, rep, device
    )
    rows.append(("predict", "effdet 0.4.1 (eager)", ref_pred, ref_pred))
    for mode in ("off", "default"):
        t = timed(
            detlite_predict(args.preset, args.size, args.predict_batch, mode, device),
            warm,
            rep,
            device,
        )
        rows.append(
            ("predict", f"detlite ({'eager' if mode == 'off' else 'compiled'})", t, ref_pred)
        )

    print(
        f"\n{args.preset} at {args.size}px, train batch {args.train_batch}, predict batch "
        f"{args.predict_batch}, {device}, {args.precision}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| what | implementation | median time | vs effdet |")
    print("|---|---|---:|---:|")
    for what, impl, t, ref in rows:
        print(f"| {what} | {impl} | {t * 1000:.0f} ms | {ref / t:.2f}x |")


if __name__ == "__main__":
    main()
