"""Benchmark of target assignment on this machine: prints a Markdown table.

    python bench/targets.py
    python bench/targets.py --repeats 5

Per shape — the built-in recipe's (Lite0 256, batch 8, 16 ground-truth rows) and COCO's (D0
512, 100 rows, batch 2 and 8) — `detlite.targets.overlaps` (IoU and intersection, vectorised
along the anchors) against torchvision's `box_iou` computing the same, and the whole
`detlite.targets.assign` against itself run through the previous IoU and crowd coverage
(tests/oracles.py). Random boxes, 12 real and 2 crowd rows per image, the rest padding; the
outputs are checked equal (bit for bit) before timing. Medians over --repeats calls taken in
interleaved rounds; the ratio is the previous time over detlite's. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from oracles import torchvision_overlaps, with_torchvision_overlaps  # noqa: E402
from timing import add_host_memory_flag, apply_host_memory_flag, interleaved_medians  # noqa: E402

from detlite import config, targets  # noqa: E402
from detlite.anchors import generate_anchors  # noqa: E402

SHAPES = (("lite0", 256, 8, 16), ("d0", 512, 2, 100), ("d0", 512, 8, 100))


def ground_truth(batch: int, rows: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, rows, 2, generator=gen) * size * 0.7
    wh = torch.rand(batch, rows, 2, generator=gen) * size * 0.3 + 8
    labels = torch.randint(0, 90, (batch, rows), generator=gen)
    labels[:, 12:14] = -2  # crowd regions
    labels[:, 14:] = -1  # padding
    return torch.cat([xy, xy + wh], dim=-1), labels


def previous_assign(anchors, boxes, labels, cfg):
    with with_torchvision_overlaps():
        return targets.assign(anchors, boxes, labels, cfg)


def shape_rows(name: str, size: int, batch: int, rows: int, repeats: int):
    cfg = config.preset(name, num_classes=90, image_size=size)
    anchors = generate_anchors(cfg)
    boxes, labels = ground_truth(batch, rows, size)
    pairs = {
        "IoU + intersection": (
            lambda: targets.overlaps(boxes, anchors),
            lambda: torchvision_overlaps(boxes, anchors),
        ),
        "whole assignment": (
            lambda: targets.assign(anchors, boxes, labels, cfg),
            lambda: previous_assign(anchors, boxes, labels, cfg),
        ),
    }
    for what, (ours, previous) in pairs.items():
        same = all(torch.equal(a, b) for a, b in zip(ours(), previous(), strict=True))
        if not same:
            raise SystemExit(f"{name}@{size} batch {batch}: {what} differs from the previous path")
        medians = interleaved_medians({"detlite": ours, "previous": previous}, 2, repeats)
        yield what, medians["previous"], medians["detlite"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=15)
    add_host_memory_flag(p)
    args = p.parse_args()
    memory = apply_host_memory_flag(args)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{when}; {platform.machine()}, {torch.get_num_threads()} torch threads; {memory}\n")
    print("| shape | anchors | part | previous (ms) | detlite (ms) | × previous |")
    print("|---|---:|---|---:|---:|---:|")
    for name, size, batch, rows in SHAPES:
        anchors = len(generate_anchors(config.preset(name, num_classes=90, image_size=size)))
        for what, before, now in shape_rows(name, size, batch, rows, args.repeats):
            shape = f"{name}@{size} b{batch} M{rows}"
            print(
                f"| {shape} | {anchors:,} | {what} | {before * 1e3:.1f} | {now * 1e3:.1f} "
                f"| {before / now:.2f} |"
            )


if __name__ == "__main__":
    main()
