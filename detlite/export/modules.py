"""The predictor and the network as `torch.nn.Module`s, the form `torch.export` traces: the flat
dict of weights becomes the module's buffers (constants of the exported program), the anchor
grid one more buffer."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import anchors as anchors_lib
from .. import steps
from ..config import ModelConfig
from ..layers import Params
from ..steps import EAGER, StepOptions


def _buffer_name(key: str) -> str:
    return key.replace(".", "__")  # buffer names cannot hold dots


class _Weights(torch.nn.Module):
    def __init__(self, params: Params, cfg: ModelConfig, options: StepOptions) -> None:
        super().__init__()
        self.cfg = cfg
        self.options = options
        self.keys = tuple(params)
        for key, value in params.items():
            self.register_buffer(_buffer_name(key), value)
        device = next(iter(params.values())).device
        self.register_buffer("anchors", anchors_lib.generate_anchors(cfg, device=device))

    def params(self) -> Params:
        return {key: getattr(self, _buffer_name(key)) for key in self.keys}


class PredictorModule(_Weights):
    """`(images uint8 [B, 3, H, W], image_scales float32 [B]) -> (detections [B, max_det, 6],
    counts [B])`: normalisation, network, decode and NMS (`detlite.steps.inference`)."""

    def forward(self, images: Tensor, image_scales: Tensor) -> tuple[Tensor, Tensor]:
        return steps.inference(
            self.params(), images, image_scales, self.anchors, self.cfg, self.options
        )


class NetworkModule(_Weights):
    """`images uint8 [B, 3, H, W] -> (scores [B, A, C], boxes [B, A, 4])`: every anchor's class
    scores and decoded boxes in input pixels, before NMS (`detlite.steps.dense_inference`)."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return steps.dense_inference(self.params(), images, self.anchors, self.cfg, self.options)


def predictor_module(params: Params, cfg: ModelConfig, options: StepOptions = EAGER):
    return PredictorModule(params, cfg, options).eval()


def network_module(params: Params, cfg: ModelConfig, options: StepOptions = EAGER):
    return NetworkModule(params, cfg, options).eval()
