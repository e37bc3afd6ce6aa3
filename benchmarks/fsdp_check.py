"""The Trainer's FSDP2 path on 2 GPUs (`--nproc 1`: on one GPU, nothing sharded), in one go:
`KSAMTrainer.train()` with `--fsdp full_shard` and FSDP version 2 against the same run under DDP with
`sam_sync_ascent=True` (under full sharding the ascent is synced, so the two are the same
algorithm). Prints PASS / FAIL and exits 1 on FAIL.

Accelerate enables FSDP only on accelerators, so this cannot run on the CPU; the sharded step itself
is tested on CPU processes in tests/distributed/test_fsdp.py. Run with `--nproc 1` on one H200 (PASS,
bit for bit: docs/performance/fsdp_check_h200_1gpu.txt); not yet on 2 GPUs.

    python -m benchmarks.fsdp_check [--sam_mode sam|ksam] [--nproc 2] [--output runs/benchmarks/fsdp_check]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STEPS, BATCH, EXAMPLES = 4, 8, 64


def dataset() -> list[dict]:
    """64 examples of 16 tokens, the label the parity of the first token: learnable in a few steps."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (EXAMPLES, 16), generator=generator)
    return [{"input_ids": row, "attention_mask": torch.ones(16, dtype=torch.long), "labels": row[0] % 2} for row in ids]


def worker(out: Path, sharding: str, sam_mode: str) -> None:
    """One process of a run (under torchrun): train, then rank 0 saves the full weights."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    from transformers import BertConfig, BertForSequenceClassification

    from ksam_hf import KSAMConfig, KSAMTrainer

    cuda = torch.cuda.is_available()  # the DDP half also runs on CPU processes (gloo), as a smoke test
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(config)
    sharded = dict(fsdp="full_shard", fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"],
                                                    "reshard_after_forward": True}) if sharding == "fsdp2" else {}
    args = KSAMConfig(output_dir=str(out / f"trainer_{sharding}"), report_to="none", save_strategy="no", seed=0,
                      max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=1e-3, logging_steps=1,
                      sam_mode=sam_mode, sam_rho=0.05, ksam_k=0.5, sam_sync_ascent=True, disable_tqdm=True,
                      use_cpu=not cuda, **sharded)
    trainer = KSAMTrainer(model=model, args=args, train_dataset=dataset(),
                          data_collator=lambda rows: {k: torch.stack([r[k] for r in rows]) for k in rows[0]})
    trainer.train()
    weights = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().float().cpu()
               for n, p in trainer.model.named_parameters()}
    if dist.get_rank() == 0:
        torch.save({"weights": weights, "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log]},
                   out / f"{sharding}.pt")
    dist.destroy_process_group()


def launch(out: Path, sharding: str, sam_mode: str, nproc: int, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
               "benchmarks.fsdp_check", "--worker", sharding, "--sam_mode", sam_mode, "--output", str(out)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam_mode", choices=["sam", "ksam"], default="sam")
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "benchmarks" / "fsdp_check")
    parser.add_argument("--nproc", type=int, default=2, help="processes, one GPU each (1: one unsharded shard)")
    parser.add_argument("--worker", choices=["fsdp2", "ddp"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.output, args.worker, args.sam_mode)
        return True
    if torch.cuda.device_count() < args.nproc:
        print(f"FAIL: needs {args.nproc} CUDA devices, found {torch.cuda.device_count()}")
        return False
    runs = {}
    for sharding in ("ddp", "fsdp2"):
        done = launch(args.output, sharding, args.sam_mode, args.nproc, timeout=600)
        if done.returncode != 0:
            print(f"FAIL: the {sharding} run failed:\n{(done.stdout + done.stderr)[-4000:]}")
            return False
        runs[sharding] = torch.load(args.output / f"{sharding}.pt")
    worst = max(float((runs["fsdp2"]["weights"][n] - w).abs().max()) for n, w in runs["ddp"]["weights"].items())
    same = worst < 1e-4 and len(runs["fsdp2"]["losses"]) == STEPS
    print(f"{'PASS' if same else 'FAIL'}: {args.sam_mode} under FSDP2 vs DDP with a synced ascent, {args.nproc} "
          f"process(es), {STEPS} steps: "
          f"largest weight difference {worst:.2e}; losses {runs['fsdp2']['losses']} vs {runs['ddp']['losses']}")
    return same


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
