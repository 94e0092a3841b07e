"""What folding BatchNorm into the convolutions could gain in prediction, at most: prints a table.

    python bench/batchnorm_bound.py
    python bench/batchnorm_bound.py --models lite0@320 --repeats 5

Folding rewrites each conv + BatchNorm pair as one conv with a bias, so the best it can do is
remove the BatchNorm's cost. This benchmark removes it outright: the BatchNorm of the backbone
and of the BiFPN (whose convs could be folded; the heads share one conv over several levels,
each with its own BatchNorm, so theirs stay) becomes the identity. The detections are then
wrong; only the time means anything. Predictor eager and compiled, with and without, timed in
interleaved rounds (medians after 2 warm-up calls; compilation excluded). Random weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from presets import PRESETS  # noqa: E402
from timing import interleaved_medians  # noqa: E402

from detlite import backbone, bifpn, config, layers, model  # noqa: E402
from detlite.steps import Predictor, StepOptions  # noqa: E402

FOLDABLE = (backbone, bifpn)  # modules whose `batch_norm` follows a conv of its own


def _identity_in_inference(params, prefix, x, *, mode, momentum, eps):
    if mode.training:
        return layers.batch_norm(params, prefix, x, mode=mode, momentum=momentum, eps=eps)
    return x


def _use(batch_norm) -> None:
    for module in FOLDABLE:
        module.batch_norm = batch_norm


def runner(predictor: Predictor, params, images, batch_norm):
    """A call of `predictor` with `batch_norm` in place (compiled graphs keep what they traced)."""

    def call():
        _use(batch_norm)
        return predictor(params, images)

    call()  # compiles here, with this BatchNorm
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="lite0@320,d0@512", help="model@size, ...")
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1, fp32\n")
    print("| model | predictor | with BatchNorm (ms) | BatchNorm removed (ms) | gain at most |")
    print("|---|---|---:|---:|---:|")
    for spec in args.models.split(","):
        name, size = spec.split("@")
        torch._dynamo.reset()
        cfg = config.preset(PRESETS.get(name, name), num_classes=90, image_size=int(size))
        params = model.init(cfg)
        images = torch.randint(0, 256, (1, 3, int(size), int(size)), dtype=torch.uint8)
        runners = {}
        for mode in ("off", "default"):
            for removed, bn in ((False, layers.batch_norm), (True, _identity_in_inference)):
                predictor = Predictor(cfg, StepOptions(compile=mode))
                runners[(mode, removed)] = runner(predictor, params, images, bn)
        medians = interleaved_medians(runners, 2, args.repeats)
        _use(layers.batch_norm)
        for mode in ("off", "default"):
            kept, removed = medians[(mode, False)], medians[(mode, True)]
            label = "eager" if mode == "off" else "compiled"
            print(f"| {spec} | {label} | {kept * 1e3:.1f} | {removed * 1e3:.1f} | "
                  f"{kept / removed:.2f}× |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
