"""Checkpoints, all in safetensors with the model config in the metadata.

checkpoint.save(path, params, cfg)               weights-only file (files.py)
params, cfg = checkpoint.load(path)              weights of any detlite checkpoint
checkpoint.category_map(path, num_classes)       the label → category id map it was trained with
checkpoint.save_training / load_training         full training state (training.py)
checkpoint.Checkpointer                          a run's interval, retention, best and resume
"""

from .checkpointer import Checkpointer, find_resume, restore, step_path
from .files import (
    FORMAT,
    TRAIN_FORMAT,
    CheckpointError,
    atomic_write,
    category_map,
    check_params,
    load,
    prediction_category_map,
    read_metadata,
    read_tensors,
    save,
)
from .training import Restored, TrainingState, TrainingTensors
from .training import load as load_training
from .training import save as save_training

__all__ = [
    "FORMAT",
    "TRAIN_FORMAT",
    "CheckpointError",
    "Checkpointer",
    "Restored",
    "TrainingState",
    "TrainingTensors",
    "atomic_write",
    "category_map",
    "check_params",
    "find_resume",
    "load",
    "load_training",
    "prediction_category_map",
    "read_metadata",
    "read_tensors",
    "restore",
    "save",
    "save_training",
    "step_path",
]
