"""SAM and K-SAM on FSDP2-sharded models: two gloo CPU processes (`fsdp_worker.py`) against the step
computed by hand on the unsharded model.

Under full sharding every rank perturbs the same gathered weights, so the ascent is synced: the
ascent gradient g is the mean over the processes of each one's gradient on its own kept rows (the
reduce-scatter's mean), e = rho g / ||g|| with the global norm, and the step's gradient is the mean
over the processes of each one's descent gradient at w + e. K-SAM ranks and keeps per process.
"""

from __future__ import annotations

import copy
import time
import warnings

import pytest
import torch

from tests.distributed.fsdp_worker import RHO, ROWS_PER_PROCESS, SEED
from tests.distributed.test_ddp import launch, launch_to_succeed
from tests.testing_utils import make_case, model_loss, ranked_by_own_loss, rows

pytestmark = pytest.mark.slow  # real processes (CI runs them)

WORLD = 2
CONFIGS = ["sam", "top_k_ascent", "top_k", "top_k_ascent_activation_checkpointing"]
BF16 = "top_k_ascent_bf16_params"


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    launch_to_succeed(out, CONFIGS + [BF16], timeout=150, module="tests.distributed.fsdp_worker")
    return {name: [torch.load(out / f"{name}_rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
            for name in CONFIGS + [BF16]}


def mean_gradient(models_and_batches) -> dict:
    """The mean over processes of the gradient of each one's own loss, by parameter name."""
    total = {}
    for model, batch in models_and_batches:
        model.zero_grad(set_to_none=True)
        model_loss(model, batch).backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                total[name] = total.get(name, 0) + p.grad / WORLD
    return total


def by_hand(config: str) -> tuple[dict, list[list[int]]]:
    model, batch = make_case("seqcls_single", batch_size=WORLD * ROWS_PER_PROCESS, seed=SEED)
    shards = [rows(batch, list(range(r * ROWS_PER_PROCESS, (r + 1) * ROWS_PER_PROCESS))) for r in range(WORLD)]
    kept = [list(range(ROWS_PER_PROCESS)) if config == "sam" else ranked_by_own_loss(model, shard, 2)
            for shard in shards]
    ascent = mean_gradient([(model, rows(shard, k)) for shard, k in zip(shards, kept)])
    norm = torch.sqrt(sum((g ** 2).sum() for g in ascent.values()))
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if name in ascent:
                p.add_(RHO * ascent[name] / norm)
    descent = [rows(shard, k) for shard, k in zip(shards, kept)] if config == "top_k" else shards
    return mean_gradient([(moved, rows_) for rows_ in descent]), kept


@pytest.mark.parametrize("config", CONFIGS)
def test_the_sharded_step_is_the_synced_sam_step_by_hand(fsdp_results, config):
    expected, kept = by_hand(config.replace("_activation_checkpointing", ""))
    for rank, result in enumerate(fsdp_results[config]):
        assert result["world_size"] == WORLD and result["sharded"] == "DTensor"
        assert result["restored"], f"rank {rank}: a shard was not restored bit for bit"
        if config != "sam":
            assert result["kept"] == kept[rank]  # ranked and kept per process
        for name, value in result["grads"].items():
            torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=f"rank {rank} {name}")


def test_a_failing_rank_fails_the_run_within_its_limit(tmp_path):
    started = time.monotonic()
    result = launch(tmp_path, ["rank1_fails"], timeout=120, module="tests.distributed.fsdp_worker")
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stdout
    assert time.monotonic() - started < 120


def test_a_native_abort_is_run_again_once_and_an_exception_never(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.warns(UserWarning, match="aborted natively; retried once"):
        launch_to_succeed(tmp_path / "run", ["rank1_aborts_once"], timeout=120, module="tests.distributed.fsdp_worker")
    assert (tmp_path / "aborted_once").exists()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [f"rank1_aborts_once_rank{r}.pt" for r in range(WORLD)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a retry would warn, and the warning would end the test
        with pytest.raises(AssertionError, match="exitcode  : 1 "):
            launch_to_succeed(tmp_path / "run", ["rank1_fails"], timeout=120, module="tests.distributed.fsdp_worker")


def test_a_checkpoint_of_a_sharded_run_holds_w_and_resumes_exactly(tmp_path):
    launch_to_succeed(tmp_path, ["checkpoint"], timeout=150, module="tests.distributed.fsdp_worker")
    for rank in range(WORLD):
        saved = torch.load(tmp_path / f"checkpoint_rank{rank}.pt", weights_only=False)
        assert saved == {"checkpoint_is_the_first_step": True, "resumed_is_straight": True, "moved": True}, rank


def test_bf16_parameters_with_fp32_reduction_give_the_step_to_bf16_precision(fsdp_results):
    """FSDP2's MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): the forward and backward run
    in bf16 from the fp32 shards, e moves the fp32 shards, which come back bit for bit; the gradient
    is fp32 and agrees with the fp32 step by hand to bf16's precision."""
    expected, kept = by_hand("top_k_ascent")
    reference = torch.cat([expected[name].flatten() for name in sorted(expected)])
    for rank, result in enumerate(fsdp_results[BF16]):
        assert result["restored"] and result["kept"] == kept[rank]
        grads = torch.cat([result["grads"][name].flatten() for name in sorted(expected)])
        assert grads.dtype == torch.float32
        assert float((grads - reference).norm() / reference.norm()) < 2e-2
