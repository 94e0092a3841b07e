"""Run an AOTInductor package from `python -m detlite.export` with torch alone (no detlite).

    python examples/run_package.py det.pt2 photo.jpg other.png \
        --library /path/to/site-packages/detlite/ops/libdetlite_ops.so

The package calls the `detlite::batched_nms` operator, so the one thing it needs besides torch is
the detlite op library: `torch.ops.load_library(path)` registers it (`python -m detlite.ops`
prints where an install put it). Images are fitted into the model input as detlite does
(resized keeping their aspect with antialiased bilinear, pasted top-left on the canvas colour
the package's metadata gives); boxes come back in each image's pixels.
"""

from __future__ import annotations

import argparse
import json

import torch
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resize  # the resize detlite itself uses


def fitted(image: torch.Tensor, size: list[int], fill: list[int]) -> tuple[torch.Tensor, float]:
    """(canvas uint8 [3, H, W], original pixels per model pixel)."""
    height, width = image.shape[-2:]
    scale = min(size[0] / height, size[1] / width)
    new = (min(size[0], max(1, round(height * scale))), min(size[1], max(1, round(width * scale))))
    canvas = torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1).expand(3, *size).clone()
    if (height, width) != new:
        image = resize(image, list(new), interpolation=InterpolationMode.BILINEAR, antialias=True)
    canvas[:, : new[0], : new[1]] = image
    return canvas, 1.0 / scale


def main() -> None:
    parser = argparse.ArgumentParser(description="Detect objects with an exported package.")
    parser.add_argument("package", help="the .pt2 file `python -m detlite.export` wrote")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--library", required=True, help="path to libdetlite_ops.so")
    parser.add_argument("--min-score", type=float, default=0.3)
    args = parser.parse_args()

    torch.ops.load_library(args.library)
    runner = torch._inductor.aoti_load_package(args.package)
    meta = json.loads(runner.get_metadata()["detlite"])
    pictures = [decode_image(read_file(p), mode=ImageReadMode.RGB) for p in args.images]
    inputs = [fitted(p, meta["image_size"], meta["fill"]) for p in pictures]
    canvases, scales = [c for c, _ in inputs], [s for _, s in inputs]
    device = torch.device(meta["device"])
    with torch.no_grad():
        dets, counts = runner(torch.stack(canvases).to(device), torch.tensor(scales).to(device))
    for path, picture, rows, count in zip(
        args.images, pictures, dets.cpu(), counts.tolist(), strict=True
    ):
        height, width = picture.shape[-2:]
        for x1, y1, x2, y2, score, label in rows[:count].tolist():
            if score < args.min_score:
                break  # rows are sorted by score
            limits = (width, height, width, height)
            box = [min(max(v, 0.0), m) for v, m in zip((x1, y1, x2, y2), limits, strict=True)]
            name = meta["category_names"][int(label)]
            print(f"{path}\t{name}\t{score:.4f}\t" + "\t".join(f"{v:.2f}" for v in box))


if __name__ == "__main__":
    main()
