"""The Trainer's FSDP2 path: `benchmarks/fsdp_check.py` on CUDA devices (Accelerate enables FSDP only on
accelerators: skipped on this project's CPU machines, where tests/distributed/test_fsdp.py checks the
sharded step itself). On one GPU nothing is sharded, but the Trainer's FSDP2 code path runs."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="needs 2 CUDA devices: Accelerate enables FSDP only on accelerators")
@pytest.mark.parametrize("sam_mode", ["sam", "ksam"])
def test_the_trainers_fsdp2_run_equals_ddp_with_a_synced_ascent(sam_mode, tmp_path):
    from benchmarks import fsdp_check

    assert fsdp_check.main(["--sam_mode", sam_mode, "--output", str(tmp_path)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: Accelerate enables FSDP only there")
@pytest.mark.parametrize("sam_mode", ["sam", "ksam"])
def test_the_trainers_fsdp2_path_on_one_gpu_equals_ddp(sam_mode, tmp_path):
    from benchmarks import fsdp_check

    assert fsdp_check.main(["--sam_mode", sam_mode, "--nproc", "1", "--output", str(tmp_path)])
