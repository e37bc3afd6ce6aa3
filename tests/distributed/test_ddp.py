"""KSAMTrainer under DDP: two CPU processes (gloo), launched with torchrun, against gradients by hand.

`tests/distributed/ddp_worker.py` runs one optimizer step per configuration in each process and saves what
each process saw and the gradient it stepped with. Here the expected gradient is recomputed with
plain autograd, independently of ksam_hf: per process, each micro-batch's examples are ranked by
the model's own loss on each example alone, the top-k are kept, the weights are moved by
rho * g / ||g|| (g: that process's own ascent gradient, or with `sam_sync_ascent` the mean of the
processes' ascent gradients) and the descent gradient is taken there; a process's gradient is the
mean over the kept examples (tokens) of its micro-batches; DDP then averages the processes.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import psutil  # a dependency of accelerate
import pytest
import torch

from tests.distributed.ddp_worker import CONFIGS, LEARNING_RATE, dataset_for
from tests.testing_utils import REPO, ranked_by_own_loss, rows

pytestmark = pytest.mark.slow  # end-to-end: real processes / real data (CI runs them)

ROOT = REPO
WORLD = 2
RHO = 0.05
CONFIG_NAMES = ["ksam", "ksam_ga2", "sam_ga2", "ksam_sync", "ksam_sync_ga2", "sync_unused_params", "sam_groups_ga2"]
EXTRA_CONFIGS = ["unlabelled_rank_sam_sync", "scheduled_ga2", "step_share_ga2", "bi_lora"]  # checked by their own tests


def launch(out: Path, configs: list[str], timeout: float,
           module: str = "tests.distributed.ddp_worker") -> subprocess.CompletedProcess:
    """torchrun --standalone --nproc_per_node 2 -m `module`; torchrun and its workers (which it starts
    in sessions of their own) are killed if they outlive `timeout`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
               "-m", module, "--out", str(out), *configs]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(process.pid)
        for child in launcher.children(recursive=True) + [launcher]:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        output, _ = process.communicate(timeout=30)
        raise TimeoutError(f"torchrun did not finish in {timeout} s:\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, None)


NATIVE_ABORT = ("exitcode  : -6 ", "exitcode  : -11 ")  # torchrun's report of a worker killed by SIGABRT / SIGSEGV


def launch_to_succeed(out: Path, configs: list[str], timeout: float,
                      module: str = "tests.distributed.ddp_worker") -> subprocess.CompletedProcess:
    """`launch`, once more (into a fresh folder) if a worker died of a native abort (CI once saw one
    that 50 runs here did not repeat); a second abort, an exception or a timeout fails, and a wrong
    gradient fails the tests whichever try made it. The first try's output is in the warning."""
    result = launch(out, configs, timeout, module)
    if result.returncode != 0 and any(sign in result.stdout for sign in NATIVE_ABORT):
        warnings.warn(f"a worker aborted natively; retried once. First try:\n{result.stdout[-3000:]}")
        for leftover in out.iterdir():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        result = launch(out, configs, timeout, module)
    assert result.returncode == 0, result.stdout[-5000:]
    return result


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch_to_succeed(out, CONFIG_NAMES + EXTRA_CONFIGS, timeout=150)
    return {name: [torch.load(out / f"{name}_rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
            for name in CONFIG_NAMES + EXTRA_CONFIGS}


# ----------------------------------------------------------------------------- reference, by hand
def model_grads(model, batch: dict) -> list:
    """Gradient of the model's own loss on `batch` (None where a parameter is unused)."""
    return list(torch.autograd.grad(model(**batch).loss, list(model.parameters()), allow_unused=True))


def sam_step(grads: list) -> list:
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
    return [None if g is None else RHO * g / norm for g in grads]


def grads_at(model, batch: dict, perturbation: list) -> list:
    """Gradient of the model's own loss on `batch` at w + perturbation."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p, e in zip(moved.parameters(), perturbation):
            if e is not None:
                p.add_(e)
    return model_grads(moved, batch)


def items(case: str, batch: dict) -> float:
    """What the model's loss averages over: examples, or labelled (next) tokens."""
    labels = batch["labels"]
    if case == "causal_lm":
        return float(labels[:, 1:].ne(-100).sum())
    if case == "token":
        return float(labels.ne(-100).sum())
    if case == "two_heads":
        return float(labels.shape[0])
    return float(labels.shape[0])


def kept_rows(model, micro: dict, sam: dict) -> dict:
    if sam["sam_mode"] == "sam":
        return micro
    return rows(micro, ranked_by_own_loss(model, micro, sam["ksam_k"]))


def weighted_mean(parts: list, weights: list) -> list:
    total = sum(weights)
    return [None if all(g[i] is None for g in parts) else
            sum(w * (torch.zeros_like(next(x[i] for x in parts if x[i] is not None)) if g[i] is None else g[i])
                for g, w in zip(parts, weights)) / total
            for i in range(len(parts[0]))]


def expected_gradient(name: str, model, seen_per_rank: list) -> list:
    """The gradient every process should step with, computed from the micro-batches each one saw."""
    case, _, sam = CONFIGS[name]
    if sam.get("sam_group_size"):  # m-SAM: every group of a micro-batch is a SAM step of its own
        size = sam["sam_group_size"]
        seen_per_rank = [[rows(micro, list(range(start, min(start + size, len(micro["labels"])))))
                          for micro in seen for start in range(0, len(micro["labels"]), size)] for seen in seen_per_rank]
    kept = [[kept_rows(model, micro, sam) for micro in seen] for seen in seen_per_rank]
    per_rank = []
    for rank, batches in enumerate(kept):
        parts, weights = [], []
        for step, batch in enumerate(batches):
            if sam.get("sam_sync_ascent"):
                # The same micro-step of every process, ascent gradients averaged before the SAM step.
                ascents = [model_grads(model, kept[r][step]) for r in range(WORLD)]
                perturbation = sam_step(weighted_mean(ascents, [1.0] * WORLD))
            else:
                perturbation = sam_step(model_grads(model, batch))
            parts.append(grads_at(model, batch, perturbation))
            weights.append(items(case, batch))
        per_rank.append(weighted_mean(parts, weights))
    return weighted_mean(per_rank, [1.0] * WORLD)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_synced_gradient_is_the_mean_of_per_process_sam_gradients(name, ddp_results):
    results = ddp_results[name]
    case, _, sam = CONFIGS[name]
    accumulation = sam["gradient_accumulation_steps"]
    assert all(r["world_size"] == WORLD and r["wrapped"] == "DistributedDataParallel" for r in results)
    assert all(len(r["seen"]) == accumulation for r in results)
    # Data parallelism did shard the data: the processes saw different examples.
    assert not torch.equal(results[0]["seen"][0]["input_ids"], results[1]["seen"][0]["input_ids"])

    model, _ = dataset_for(name)
    model.eval()  # dropout is off anyway; no batch-norm
    names = [n for n, _ in model.named_parameters()]
    for n, p in model.named_parameters():
        assert torch.equal(p, results[0]["before"][n]), n
    expected = dict(zip(names, expected_gradient(name, model, [r["seen"] for r in results])))

    for rank, result in enumerate(results):
        for n in names:
            got = result["grads"][n]
            if expected[n] is None:
                assert got is None or torch.count_nonzero(got) == 0, (rank, n)
            else:
                torch.testing.assert_close(got, expected[n], rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {n}")
    for n in names:
        # After the step every process holds the same weights, bit for bit: w - lr * (synced gradient).
        assert torch.equal(results[0]["after"][n], results[1]["after"][n]), n
        step = 0 if expected[n] is None else LEARNING_RATE * expected[n]
        torch.testing.assert_close(results[0]["after"][n], results[0]["before"][n] - step, rtol=1e-5, atol=1e-6,
                                   msg=n)
    logs = [log for log in results[0]["log_history"] if "loss" in log]
    assert logs[0]["sam_skipped_perturbations"] == 0 and logs[0]["sam_ascent_grad_norm"] > 0


def test_sync_ascent_changes_the_gradient(ddp_results):
    """The shared perturbation is not each process's own (else the test above proves nothing for it)."""
    name = "ksam_sync"
    results = ddp_results[name]
    model, _ = dataset_for(name)
    _, _, sam = CONFIGS[name]
    own = []
    for result in results:
        batch = kept_rows(model, result["seen"][0], sam)
        own.append(grads_at(model, batch, sam_step(model_grads(model, batch))))
    unsynced = weighted_mean(own, [1.0, 1.0])
    differences = [float((result_grad - g).abs().max()) for g, result_grad
                   in zip(unsynced, results[0]["grads"].values()) if g is not None]
    assert max(differences) > 1e-5


def test_a_process_with_an_unlabelled_micro_batch_does_not_hang(tmp_path):
    """K-SAM, rank 1's micro-batch has no labelled token. Expected: rank 1 adds a zero gradient (and,
    with `sam_sync_ascent`, a zero ascent gradient, which leaves rank 0's direction unchanged), so
    the step's gradient is rank 0's own K-SAM gradient halved by DDP's mean."""
    names = ["unlabelled_rank", "unlabelled_rank_ksam_sync"]
    result = launch(tmp_path, names, timeout=25)
    assert result.returncode == 0, result.stdout[-5000:]
    for name in names:
        results = [torch.load(tmp_path / f"{name}_rank{rank}.pt", weights_only=False) for rank in range(WORLD)]
        assert results[1]["seen"][0]["labels"].ne(-100).sum() == 0
        model, _ = dataset_for(name)
        batch = kept_rows(model, results[0]["seen"][0], CONFIGS[name][2])
        expected = grads_at(model, batch, sam_step(model_grads(model, batch)))
        for (n, got), want in zip(results[0]["grads"].items(), expected):
            if want is not None:
                torch.testing.assert_close(got, want / WORLD, rtol=1e-5, atol=1e-6, msg=f"{name}: {n}")
        for n in results[0]["after"]:
            assert torch.equal(results[0]["after"][n], results[1]["after"][n]), n


def test_sam_sync_ascent_with_a_process_without_labels(ddp_results):
    """SAM mode, rank 1 has no labelled token: its ascent loss is 0/0 = NaN, but its ascent gradient is
    zero (the cross-entropy's ignored targets get a zero gradient), so rank 0's perturbation is not poisoned.

    Expected: rank 0 perturbs along its own ascent gradient (the mean with rank 1's zeros points the
    same way), rank 1 adds nothing, and DDP's mean halves rank 0's SAM gradient.
    """
    name = "unlabelled_rank_sam_sync"
    results = ddp_results[name]
    assert results[1]["seen"][0]["labels"].ne(-100).sum() == 0
    logs = [log for log in results[0]["log_history"] if "loss" in log]
    assert logs[0]["sam_skipped_perturbations"] == 0
    model, _ = dataset_for(name)
    batch = results[0]["seen"][0]
    expected = [None if g is None else g / WORLD for g in grads_at(model, batch, sam_step(model_grads(model, batch)))]
    for (n, got), want in zip(results[0]["grads"].items(), expected):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=n)


def test_schedules_decide_alike_on_every_process_and_micro_batch(ddp_results):
    """Every 2nd step from a quarter of 4 steps: steps 2 and 4 (counted from 1). A random share of
    half the steps: whatever the draw, both processes and both micro-batches of a step agree."""
    for name, expected in (("scheduled_ga2", [0, 1, 0, 1]), ("step_share_ga2", None)):
        shares = [[log["sam_perturbed_share"] for log in result["log_history"] if "loss" in log]
                  for result in ddp_results[name]]
        assert shares[0] == shares[1], name
        assert all(share in (0, 1) for share in shares[0]), name
        if expected is not None:
            assert shares[0] == expected
        else:
            assert len(shares[0]) == 6 and 0 < sum(shares[0]) < 6


def test_bi_lora_keeps_one_auxiliary_adapter_on_every_process(ddp_results):
    """The auxiliary adapter ascends on the gradient averaged across processes, as DDP averages the
    main adapter's: after a step on different shards both processes hold the same one, moved from 0."""
    first, second = ddp_results["bi_lora"]
    assert not torch.equal(first["seen"][0]["input_ids"], second["seen"][0]["input_ids"])
    assert first["auxiliary"] is not None
    for a, b in zip(first["auxiliary"], second["auxiliary"]):
        assert torch.equal(a, b)
    assert any(torch.count_nonzero(b) for b in first["auxiliary"][len(first["auxiliary"]) // 2:])  # the B2s moved
    for n in first["after"]:
        assert torch.equal(first["after"][n], second["after"][n]), n
