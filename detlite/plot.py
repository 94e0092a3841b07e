"""The plots of a run, drawn from its files (matplotlib, Agg: no display needed):

plots/losses.png         total, class and box loss over steps
plots/lr.png             the learning rate over steps
plots/map.png            AP and AP50 of each evaluation
plots/pr_curves.png      precision-recall per class at IoU 0.5 and over 0.5:0.95
plots/per_class_ap.png   AP per class of the latest evaluation
plots/labels.png         instances per class, box width/height of the train split

python -m detlite.plot RUN_DIR      redraw them (and results.csv), during or after a run
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, whatever the environment says
import matplotlib.pyplot as plt

from . import results

_SIZE = (6.4, 3.6)
_DPI = 100


def plot_run(run_dir: Path) -> list[Path]:
    """Rewrite results.csv and every plot the run's files allow; returns the plots written."""
    run_dir = Path(run_dir)
    rows = results.result_rows(results.read_metrics(run_dir))
    results.write_results_csv(run_dir, rows)
    out = run_dir / results.PLOTS
    out.mkdir(exist_ok=True)
    written = [
        _curves(rows, ("loss", "cls_loss", "box_loss"), "loss", out / "losses.png"),
        _curves(rows, ("lr",), "learning rate", out / "lr.png"),
        _curves(rows, ("AP", "AP50"), "COCO AP (val)", out / "map.png", markers=True),
    ]
    curves = results.read_json(run_dir, results.PR_CURVES)
    if curves is not None:
        written += [_pr_curves(curves, out / "pr_curves.png"), _per_class(curves, out)]
    labels = results.read_json(run_dir, results.LABELS)
    if labels is not None:
        written.append(_labels(labels, out / "labels.png"))
    return [path for path in written if path is not None]


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path


def _curves(rows, keys, title: str, path: Path, markers: bool = False) -> Path | None:
    """`keys` over steps, one line each (steps without a value are left out)."""
    series = {k: [(r["step"], r[k]) for r in rows if r.get(k) is not None] for k in keys}
    if not any(series.values()):
        return None
    figure, axes = plt.subplots(figsize=_SIZE)
    for key, points in series.items():
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, marker="o" if markers else None, label=key)
    axes.set(xlabel="step", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def _pr_curves(curves: dict, path: Path) -> Path:
    figure, panels = plt.subplots(1, 2, figsize=(_SIZE[0] * 1.6, _SIZE[1] * 1.2), sharey=True)
    recall = curves["recall"]
    for axes, key, title in ((panels[0], "pr50", "IoU 0.5"), (panels[1], "pr", "IoU 0.5:0.95")):
        for row in curves["classes"]:
            points = [(r, p) for r, p in zip(recall, row[key], strict=True) if p >= 0]
            if points:
                axes.plot(*zip(*points, strict=True), label=f"{row['name']} {row['AP']:.3f}")
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
        axes.grid(alpha=0.3)
    if len(curves["classes"]) <= 20:  # a legend of 80 classes would hide the curves
        panels[1].legend(fontsize="small", title="class, AP")
    figure.suptitle(f"precision-recall per class, step {curves['step']}")
    return _save(figure, path)


def _per_class(curves: dict, out: Path) -> Path:
    rows = sorted(curves["classes"], key=lambda r: r["AP"])
    height = max(_SIZE[1], 0.22 * len(rows) + 1)
    figure, axes = plt.subplots(figsize=(_SIZE[0], height))
    axes.barh([r["name"] for r in rows], [max(r["AP"], 0.0) for r in rows], color="tab:blue")
    axes.set(xlabel="AP (IoU 0.5:0.95)", xlim=(0, 1), title=f"AP per class, step {curves['step']}")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, out / "per_class_ap.png")


def _labels(labels: dict, path: Path) -> Path:
    figure, (counts, sizes) = plt.subplots(1, 2, figsize=(_SIZE[0] * 1.6, _SIZE[1] * 1.2))
    counts.bar(range(len(labels["names"])), labels["instances"], color="tab:blue")
    if len(labels["names"]) <= 30:
        counts.set_xticks(range(len(labels["names"])), labels["names"], rotation=60, ha="right")
    counts.set(ylabel="instances", title="instances per class (train)")
    if labels["box_wh"]:
        widths, heights = zip(*labels["box_wh"], strict=True)
        sizes.hist2d(widths, heights, bins=40, cmap="Blues")
    sizes.set(xlabel="box width (px)", ylabel="box height (px)", title="box sizes (train)")
    return _save(figure, path)


def main(argv: list[str] | None = None) -> int:
    from . import errors

    def run(args: list[str]) -> None:
        if len(args) != 1 or args[0].startswith("-"):
            raise errors.ConfigError("usage: python -m detlite.plot RUN_DIR")
        run_dir = Path(args[0])
        if not (run_dir / results.METRICS).is_file():
            raise errors.PathError(f"{run_dir}: not a run directory (no {results.METRICS})")
        for path in plot_run(run_dir):
            print(path)

    return errors.command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
