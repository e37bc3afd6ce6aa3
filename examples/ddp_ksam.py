"""K-SAM with data-parallel training: a minimal user script.

`KSAMTrainer` is a `transformers.Trainer`, so multi-process training needs nothing K-SAM-specific:
launch the script with torchrun or accelerate and the Trainer wraps the model in DDP. Each process
ranks its own share of the batch, keeps its top-k examples, perturbs its weights along its own
ascent gradient (or, with `--sync-ascent`, along the processes' mean ascent gradient), and DDP
averages the descent gradients, so all processes take the same optimizer step.

On CPU (gloo), with a tiny randomly initialised BERT and a synthetic task (no download):

    torchrun --nproc_per_node 2 examples/ddp_ksam.py
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 examples/ddp_ksam.py

(the script asks for the CPU itself, `use_cpu=True`, so accelerate's `--multi_gpu` launcher, i.e.
torchrun, gives two gloo processes; `accelerate launch --num_processes 2 --cpu` instead runs ONE
process unless MPI is set up with `--mpirun_hostfile`: check the `[rank i/N]` lines). Both print
the same weights checksum on every rank. On GPUs pass `--gpu` and swap in a real model and dataset.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from transformers import BertConfig, BertForSequenceClassification

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # ksam_hf from a checkout

from ksam_hf import KSAMConfig, KSAMTrainer  # noqa: E402


def synthetic_dataset(size: int, seed: int = 0) -> list[dict]:
    """Label = whether the first token is 7 (1) or 8 (0): learnable in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for i in range(size):
        ids = torch.randint(9, 100, (16,), generator=generator)
        ids[0] = 7 if i % 2 else 8
        examples.append({"input_ids": ids, "attention_mask": torch.ones(16, dtype=torch.long),
                         "labels": torch.tensor(i % 2)})
    return examples


def collate(features: list[dict]) -> dict:
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="outputs/ddp_ksam")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--sync-ascent", action="store_true", help="one shared perturbation for all processes")
    parser.add_argument("--gpu", action="store_true", help="use the GPUs (default: CPU, gloo)")
    options = parser.parse_args()

    torch.manual_seed(0)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=2))
    args = KSAMConfig(
        output_dir=options.output_dir,
        use_cpu=not options.gpu,
        sam_mode="ksam", ksam_k=0.25, sam_rho=0.05, sam_sync_ascent=options.sync_ascent,
        per_device_train_batch_size=16,  # per process; K-SAM keeps 4 of each process's 16
        num_train_epochs=options.epochs, learning_rate=3e-3, logging_steps=4,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )
    trainer = KSAMTrainer(model=model, args=args, train_dataset=synthetic_dataset(256), data_collator=collate)
    result = trainer.train()

    # Every process must end with the same weights: print a checksum per process.
    checksum = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    print(f"[rank {args.process_index}/{args.world_size}] {trainer.accelerator.distributed_type}, "
          f"{type(trainer.model_wrapped).__name__}, weights checksum {checksum:.10f}", flush=True)
    if trainer.is_world_process_zero():
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        print(f"steps {trainer.state.global_step}, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
              f"train_loss {result.training_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
