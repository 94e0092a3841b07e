"""Data: COCO-format datasets, augmentation, deterministic sharded loaders, the built-in dataset.

See docs/data.md for how to train on your own COCO-format data.
"""

from detlite.data.builtin import BuiltinPaths, default_cache_dir, ensure_builtin
from detlite.data.coco import (
    CROWD,
    PADDING,
    CategoryMap,
    CocoDetection,
    CocoStats,
    Sample,
    UnreadableImageError,
    load_coco,
    read_image,
)
from detlite.data.loader import (
    DevicePrefetcher,
    EpochBatchSampler,
    EvalBatch,
    ImageFolder,
    TrainBatch,
    TrainLoader,
    collate_eval,
    collate_train,
    epoch_permutation,
    eval_batches,
    eval_loader,
    pad_ground_truth,
    sample_seed,
)
from detlite.data.transforms import Augment, eval_transform, fit_scale, hflip_boxes, train_transform

__all__ = [
    "CROWD",
    "PADDING",
    "Augment",
    "BuiltinPaths",
    "CategoryMap",
    "CocoDetection",
    "CocoStats",
    "DevicePrefetcher",
    "EpochBatchSampler",
    "EvalBatch",
    "ImageFolder",
    "Sample",
    "TrainBatch",
    "TrainLoader",
    "UnreadableImageError",
    "collate_eval",
    "collate_train",
    "default_cache_dir",
    "ensure_builtin",
    "epoch_permutation",
    "eval_batches",
    "eval_loader",
    "eval_transform",
    "fit_scale",
    "hflip_boxes",
    "load_coco",
    "pad_ground_truth",
    "read_image",
    "sample_seed",
    "train_transform",
]
