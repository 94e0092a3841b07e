"""detlite against NVIDIA's own EfficientDet code: import its checkpoint, compare the outputs.

    python bench/nvidia_parity.py --nvidia-repo DeepLearningExamples/PyTorch/Detection/Efficientdet

NVIDIA's model code is not installable and stays out of this project: point --nvidia-repo at a
checkout of DeepLearningExamples' `PyTorch/Detection/Efficientdet`. For each config, a child
process builds NVIDIA's `EfficientDet` (with `fused_focal_loss`, so its class head is padded to 96
classes), gives it random weights and BatchNorm statistics, saves it as NVIDIA's trainer does
(`model.` prefix, `anchors.boxes`, `args`, `state_dict_ema`) and runs it on random images. This
process imports the file (its EMA weights) with `weights.load(source="nvidia")` into the matching
`nvidia_*` preset and prints the largest differences of the class and box outputs over every
level (padding classes left out). Both sides compute in float64 from the float32 weights in the
file, so what is left is the order of the arithmetic. The control column loads the same file into
the same config with timm's backbone BatchNorm eps instead, to show the size of a real difference.
omegaconf, which NVIDIA's config needs, is replaced by a small stand-in if missing, and its
compiled NMS extension (not needed for the network's outputs) by an empty module.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detlite import config, model, weights  # noqa: E402

# Runs in the child, with NVIDIA's directory first on sys.path (its package is also "effdet").
NVIDIA_SIDE = r"""
import argparse, sys, types
import torch
try:
    import omegaconf  # noqa: F401
except ImportError:  # attribute access over a dict is all NVIDIA's config asks of it
    class Conf(dict):
        __getattr__ = dict.get
        def __setattr__(self, key, value): self[key] = value
    sys.modules["omegaconf"] = types.SimpleNamespace(OmegaConf=types.SimpleNamespace(create=Conf))
# Its compiled NMS extension is imported at start-up but only used after the network.
sys.modules["effdet_ext"] = types.ModuleType("effdet_ext")
sys.modules["effdet_ext._C"] = types.ModuleType("effdet_ext._C")
from effdet.config import get_efficientdet_config
from effdet.model import EfficientDet

name, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = get_efficientdet_config(name)
cfg.image_size, cfg.fused_focal_loss = size, True
torch.manual_seed(0)
net = EfficientDet(cfg)
gen = torch.Generator().manual_seed(1)
# Weights that make every output depend on the input (NVIDIA's own head init leaves the logits at
# the class prior), then BatchNorm statistics measured on a batch and moved a little, so that the
# activations stay of order 1 even in the deep variants.
for m in net.modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in**0.5)
    if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 1.0
net.train()
with torch.no_grad():
    net(torch.randn(4, 3, size, size, generator=gen))
for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_var.mul_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
        m.weight.data.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.75)
        m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
net.eval()
weights = {"model." + k: v.clone() for k, v in net.state_dict().items()}
# Outputs in float64 (of the float32 weights saved): what is left is the arithmetic's order.
images = torch.randn(2, 3, size, size, generator=gen, dtype=torch.float64)
with torch.no_grad():
    classes, boxes = net.double()(images)
weights["anchors.boxes"] = torch.zeros(10, 4)
torch.save({"epoch": 0, "arch": name, "version": 2, "state_dict": weights,
            "state_dict_ema": weights, "args": argparse.Namespace(model=name), "metric": 0.0},
           out + "/checkpoint.pth.tar")
torch.save({"images": images, "classes": classes, "boxes": boxes}, out + "/outputs.pt")
"""


def largest_differences(
    classes: list[torch.Tensor], boxes: list[torch.Tensor], ref: dict, cfg: config.ModelConfig
) -> tuple[float, float]:
    """Largest class-logit and box-output differences over every level, padding classes aside."""
    class_diff = box_diff = 0.0
    for ours, theirs in zip(classes, ref["classes"], strict=True):
        b, _, h, w = theirs.shape
        theirs = theirs.reshape(b, cfg.num_anchors, -1, h, w)[:, :, : cfg.num_classes]
        ours = ours.reshape(b, cfg.num_anchors, cfg.num_classes, h, w)
        class_diff = max(class_diff, (ours - theirs).abs().max().item())
    for ours, theirs in zip(boxes, ref["boxes"], strict=True):
        box_diff = max(box_diff, (ours - theirs).abs().max().item())
    return class_diff, box_diff


def compare(nvidia_repo: Path, name: str, size: int, work: Path) -> list[str]:
    """Table cells: the differences for the nvidia_* preset, and for a control config."""
    child = [sys.executable, "-c", NVIDIA_SIDE, name, str(size), str(work)]
    done = subprocess.run(child, cwd=nvidia_repo, capture_output=True, text=True)
    if done.returncode != 0:
        return ["-", "-", "-", "NVIDIA's code fails: " + done.stderr.strip().splitlines()[-1]]
    ref = torch.load(work / "outputs.pt", weights_only=True)
    cfg = config.preset("nvidia_" + name, image_size=size)
    # The control: the same weights with timm's backbone BatchNorm eps, which shows that the
    # comparison sees a difference of that size.
    control = replace(cfg, backbone=replace(cfg.backbone, bn_eps=1e-5))
    cells = []
    for model_cfg in (cfg, control):
        params = weights.load(work / "checkpoint.pth.tar", model_cfg, source="nvidia", ema=True)
        with torch.no_grad():
            double = {k: v.double() for k, v in params.items()}
            outputs = model.forward(double, ref["images"], model_cfg)
        cells.append(largest_differences(*outputs, ref, model_cfg))
    spread = torch.cat([x.flatten() for x in ref["classes"] + ref["boxes"]]).std().item()
    (class_diff, box_diff), (control_class, control_box) = cells
    return [
        f"{class_diff:.2g}",
        f"{box_diff:.2g}",
        f"{spread:.3g}",
        f"{control_class:.3g} / {control_box:.3g}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nvidia-repo", type=Path, required=True, help="its Efficientdet folder")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[f"efficientdet_d{i}" for i in range(5)] + ["tf_efficientdet_d0"],
    )
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    if not (args.nvidia_repo / "effdet" / "model.py").is_file():
        raise SystemExit(f"--nvidia-repo {args.nvidia_repo}: no effdet/model.py there")
    print(
        "| NVIDIA config | image | class-logit diff | box diff | output std | "
        "control (backbone eps 1e-5): class / box diff |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            cells = compare(args.nvidia_repo, name, args.image_size, Path(tmp))
        print("| " + " | ".join([name, str(args.image_size), *cells]) + " |")


if __name__ == "__main__":
    main()
