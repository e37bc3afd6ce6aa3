"""What every worker of the multi-process tests shares: its command line and its process group."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Callable, Mapping

import torch.distributed as dist

PROCESS_GROUP_TIMEOUT = datetime.timedelta(seconds=60)
"""A collective whose peer died fails within a minute (the tests' `launch` also kills the group after
its own limit). Made before the Trainer, whose Accelerate state would otherwise make the group with
the default, far longer timeout."""


def main(configs: Mapping[str, object], run: Callable[[str, str], None]) -> None:
    """`--out DIR CONFIG ...`: run each named configuration in this process's gloo group."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("configs", nargs="+", choices=sorted(configs))
    options = parser.parse_args()
    dist.init_process_group("gloo", timeout=PROCESS_GROUP_TIMEOUT)
    try:
        for name in options.configs:
            run(name, options.out)
            print(f"[rank {dist.get_rank()}] {name} done", flush=True)  # where a crash came, if one does
    finally:
        dist.destroy_process_group()
    # Every result is saved and the group is gone: leave without the interpreter's teardown, where a
    # native thread left behind can abort the process (CI once saw rank 1 of the FSDP run die with
    # "terminate called without an active exception" near the end; not reproduced here in 50 runs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
