"""A training run (train.py's arguments) that also writes this rank's final tensors to
`<output>/rank<R>.safetensors` (parameters, EMA, BatchNorm statistics), so that tests can
compare the ranks of one run with each other and with a single-process run."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from safetensors.torch import save_file

import train
from detlite import distributed
from detlite.run import build
from detlite.stopping import StopRequest
from detlite.trainer import loop


def main() -> None:
    cfg = train.parse(sys.argv[1:])
    world = distributed.setup(cfg.device, cfg.dist.timeout_s)
    try:
        with StopRequest() as stop:
            run = build(cfg, world, stop)
            try:
                loop(run)
            finally:
                run.close()
        tensors = {f"params/{k}": v.detach().contiguous() for k, v in run.params.items()}
        tensors |= {f"ema/{k}": v.contiguous() for k, v in (run.ema or {}).items()}
        save_file(tensors, str(Path(cfg.output) / f"rank{world.rank}.safetensors"))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
