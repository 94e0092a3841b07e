"""`--log.tensorboard`: the run's records as TensorBoard event files in RUN/tensorboard (rank 0).

Scalars: train/{loss,cls_loss,box_loss,lr,img_per_s,data_wait} at each logged step,
val/<metric> for the 12 COCO metrics and val_ap/<class> at each evaluation. Precision-recall
curves per class at IoU 0.5 (pr_iou50/<class>) and over 0.5:0.95 (pr_iou50-95/<class>), from
COCOeval's interpolated precision at its 101 recall points: the points up to the highest recall
reached, with the true/false positive counts that recall and precision imply for the class's
instances.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .rundir import TENSORBOARD

_TRAIN_SCALARS = ("loss", "cls_loss", "box_loss", "lr", "img_per_s", "data_wait")
_CURVES = (("pr50", "pr_iou50"), ("pr", "pr_iou50-95"))


def check_available() -> None:
    """Refuse `--log.tensorboard` before the run starts when the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "--log.tensorboard needs the tensorboard package, which is not installed "
            "— pip install tensorboard, or drop --log.tensorboard"
        )


class TensorBoardLog:
    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run replaces what the previous attempt logged after its checkpoint.
        self._writer = SummaryWriter(
            str(Path(run_dir) / TENSORBOARD), purge_step=start_step or None
        )

    def step(self, step: int, record: dict) -> None:
        for name in _TRAIN_SCALARS:
            self._writer.add_scalar(f"train/{name}", record[name], step)

    def evaluation(self, step: int, metrics: dict, per_class: list[dict]) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(f"val/{name}", value, step)
        for row in per_class:
            if row["AP"] >= 0:  # -1: no ground truth of the class in the split
                self._writer.add_scalar(f"val_ap/{row['name']}", row["AP"], step)
            for key, tag in _CURVES:
                curve = pr_curve_counts(np.asarray(row[key]), row["instances"])
                if curve is not None:
                    self._writer.add_pr_curve_raw(f"{tag}/{row['name']}", **curve, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def pr_curve_counts(precision: np.ndarray, instances: int) -> dict | None:
    """TensorBoard's raw PR-curve arrays from precision at the recall points 0, 0.01, …, 1.

    The points kept are those COCOeval reached (precision > 0), ordered as TensorBoard wants
    them (increasing threshold, so decreasing recall). At recall r and precision p of n
    instances: TP = r·n, FP = TP·(1−p)/p, FN = n − TP; detection has no true negatives."""
    recall = np.linspace(0, 1, precision.size)
    reached = precision > 0
    if instances <= 0 or reached.sum() < 2:
        return None
    recall, precision = recall[reached][::-1], precision[reached][::-1]
    tp = recall * instances
    fp = tp * (1 - precision) / precision
    return {
        "true_positive_counts": tp,
        "false_positive_counts": fp,
        "true_negative_counts": np.zeros_like(tp),
        "false_negative_counts": instances - tp,
        "precision": precision,
        "recall": recall,
        "num_thresholds": int(tp.size),
    }
