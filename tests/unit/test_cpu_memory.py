"""`keep_freed_memory`: a block freed and allocated again is not faulted in again, page by page."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.testing_utils import REPO

STEPS = 20
PAGES = 16 * 2**20 * 4 // 4096  # a 64 MiB block of float32
PROGRAM = f"""
import resource, sys
import torch
from ksam_hf.cpu_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():  # what a training step does with a gradient: allocate it, fill it, let it go
    block = torch.ones(16 * 2**20)
    del block
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({STEPS}):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    """The minor page faults of STEPS allocations of one block, in a process of its own (mallopt is for
    the whole process: the test's own stays as it was)."""
    done = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, cwd=REPO, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_not_faulted_in_again():
    plain, kept = minor_faults("plain"), minor_faults("keep")
    assert plain >= 0.9 * STEPS * PAGES  # every step faults its block in again, page by page
    assert kept < plain / 4  # kept: a bounded count, whatever the steps
