"""COCO's category ids and names, for detectors trained on COCO with 90 classes.

TF's EfficientDet checkpoints and the effdet / NVIDIA models trained on COCO predict 90 classes:
label `i` is COCO category id `i + 1`. COCO 2014/2017 uses 80 of those ids; the other 10 were
dropped from the dataset before its release and have no name.
"""

from __future__ import annotations

from .coco import CategoryMap

COCO_NAMES: dict[int, str] = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
    8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign",
    14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep",
    21: "cow", 22: "elephant", 23: "bear", 24: "zebra", 25: "giraffe", 27: "backpack",
    28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase", 34: "frisbee", 35: "skis",
    36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat", 40: "baseball glove",
    41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle", 46: "wine glass",
    47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza",
    60: "donut", 61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed",
    67: "dining table", 70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote",
    76: "keyboard", 77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors", 88: "teddy bear",
    89: "hair drier", 90: "toothbrush",
}  # fmt: skip

COCO_NUM_CLASSES = 90
"""The class count of a COCO detector that predicts every category id 1..90."""


def coco90_category_map() -> CategoryMap:
    """Labels 0..89 as COCO ids 1..90, named as COCO names them (`unused_<id>` for the ten ids
    without a category)."""
    ids = tuple(range(1, COCO_NUM_CLASSES + 1))
    return CategoryMap(ids=ids, names=tuple(COCO_NAMES.get(i, f"unused_{i}") for i in ids))
