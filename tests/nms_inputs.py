"""Random NMS candidates shared by the CPU and CUDA op tests."""

import torch


def random_candidates(batch=3, num=400, classes=5, *, seed=0, size=200.0, max_wh=60.0):
    """(boxes [B, N, 4] xyxy, scores [B, N], classes [B, N]) with many overlaps."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num, 2, generator=g) * size
    wh = torch.rand(batch, num, 2, generator=g) * max_wh + 0.5
    boxes = torch.cat([xy, xy + wh], dim=-1)
    scores = torch.rand(batch, num, generator=g)
    labels = torch.randint(0, classes, (batch, num), generator=g)
    return boxes, scores, labels
