"""Evaluate a checkpoint on a COCO-format split, or predict on a folder of images.

    python eval.py runs/builtin/best.safetensors                 # built-in val split
    python eval.py runs/coco/checkpoints/step-00100000.safetensors --data.root /data/coco
    python eval.py CKPT --predict photos/ --draw 8                # unannotated images, drawn boxes

Each evaluation writes into a new folder beside the checkpoint (eval-<name>, or --output):
metrics.json (the 12 COCO numbers), per_class_ap.csv, detections.json (COCO results format:
original category ids, original-image pixels), and with --draw N, N images drawn (drawn/).
Errors print one line (--debug: with the traceback).
"""

from __future__ import annotations

import tyro

from detlite import errors, evaluate, host_memory


def main(argv: list[str] | None = None, *, as_program: bool = False) -> int:
    def run(args: list[str]) -> None:
        if as_program:  # a process-wide choice: the program's, not a library call's
            host_memory.keep_freed_memory()
        evaluate.run(tyro.cli(evaluate.EvalConfig, args=args, description=__doc__))

    return errors.command(run, argv)


if __name__ == "__main__":
    raise SystemExit(main(as_program=True))
