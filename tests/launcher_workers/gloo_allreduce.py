"""init_process_group("gloo") from the launcher's env:// variables, then one all_reduce."""

import os
import sys

import torch
import torch.distributed as dist

if len(sys.argv) > 1:  # a directory for pid files, so tests can check nothing is left behind
    with open(os.path.join(sys.argv[1], f"{os.environ['RANK']}.pid"), "w") as f:
        f.write(str(os.getpid()))
dist.init_process_group("gloo")
if os.environ.get("FAIL_RANK") == os.environ["RANK"]:
    # Die while everybody else is inside a collective: without the launcher they would wait for
    # this rank (with NCCL, for a long time).
    print(f"rank {dist.get_rank()} exiting with 7", flush=True)
    os._exit(7)
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(
    f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item():g} "
    f"port={os.environ['MASTER_PORT']} restart={os.environ['TORCHELASTIC_RESTART_COUNT']}",
    flush=True,
)
dist.barrier()
dist.destroy_process_group()
