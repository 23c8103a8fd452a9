"""A run across hosts in its smallest form: every node joins one torch.distributed group
(gloo, CPU) through the coordinator sheetrunner names, sums a tiny tensor across the
nodes, then works for a few steps; rank 0 reports the sum (and the steps) to the row.

sheetrunner starts this same command on every node of the row (`nodes` in the sheet)
with SHEETRUNNER_NODE_RANK, MASTER_ADDR, MASTER_PORT and WORLD_SIZE set (docs/pool.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the job library, run from a checkout

import torch
import torch.distributed as dist

from sheetrunner import job


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds per step")
    args, _ = parser.parse_known_args()
    rank, nodes = int(os.environ["SHEETRUNNER_NODE_RANK"]), int(os.environ["WORLD_SIZE"])
    coordinator = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    dist.init_process_group(
        "gloo", init_method=coordinator, rank=rank, world_size=nodes, timeout=timedelta(seconds=60)
    )
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)  # 1 + 2 + ... + nodes, on every node
    print(f"node {rank} of {nodes}: all-reduce sum {total.item():g}", flush=True)
    for step in range(1, args.steps + 1):
        time.sleep(args.sleep)
        if rank == 0:
            job.report(step, allreduce_sum=total.item(), nodes=nodes)
        else:
            job.heartbeat()
    dist.barrier()  # every node finishes its steps before any leaves the group
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
