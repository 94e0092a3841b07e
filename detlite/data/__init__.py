"""Data: COCO-format datasets, augmentation, deterministic sharded loaders, the built-in dataset.

See docs/data.md for how to train on your own COCO-format data.
"""

from detlite.data.builtin import BuiltinPaths, default_cache_dir, ensure_builtin
from detlite.data.coco import (
    CategoryMap,
    CocoDetection,
    CocoStats,
    Sample,
    UnreadableImageError,
    load_coco,
    read_image,
)
from detlite.data.config import (
    DataConfig,
    EvalDataConfig,
    SplitPaths,
    train_split,
    uses_builtin,
    val_split,
)
from detlite.data.eval_loader import (
    EvalBatch,
    ImageFolder,
    collate_eval,
    eval_batches,
    eval_loader,
)
from detlite.data.loader import (
    EpochBatchSampler,
    TrainBatch,
    TrainLoader,
    collate_train,
    epoch_permutation,
    pad_ground_truth,
    sample_seed,
)
from detlite.data.prefetch import DevicePrefetcher
from detlite.data.transforms import Augment, eval_transform, fit_scale, hflip_boxes, train_transform

__all__ = [
    "Augment",
    "BuiltinPaths",
    "CategoryMap",
    "CocoDetection",
    "CocoStats",
    "DataConfig",
    "DevicePrefetcher",
    "EpochBatchSampler",
    "EvalBatch",
    "EvalDataConfig",
    "ImageFolder",
    "Sample",
    "SplitPaths",
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
    "train_split",
    "train_transform",
    "uses_builtin",
    "val_split",
]
