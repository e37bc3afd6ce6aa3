"""The collapse of the paper's top-k selection, in seconds on a CPU: a tiny BERT learns a task whose
labels are partly flipped, with AdamW, top-k K-SAM and loss-sampled K-SAM, at several noise levels.

    python examples/collapse_demo.py            # prints the table of docs/selection.md

The label of an example is decided by its first token (7 or 8), then flipped for a share of the
examples (the noise): the best possible eval loss is the noise's entropy. Top-k descends on the
highest losses only, which are mostly flipped examples once the noise is above k / 2: it ends at
the uniform predictor (eval loss ln 2, mean top-class probability 0.5). Also: the library's default,
top_k_ascent (the descent on the whole batch), and top-k after an epoch of AdamW (does a model that
has learnt something stay away from the uniform predictor?).
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import BertConfig, BertForSequenceClassification
from transformers.trainer_callback import PrinterCallback

from ksam_hf import KSAMConfig, KSAMTrainer


def noisy_task(size: int, seed: int, noise: float) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(size):
        ids = torch.randint(9, 50, (12,), generator=generator)
        label = i % 2
        ids[0] = 7 if label else 8
        if float(torch.rand((), generator=generator)) < noise:
            label = 1 - label
        data.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": torch.tensor(label)})
    return data


def stack(features: list[dict]) -> dict:
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


EPOCHS = 2


def train(noise: float, warm_epochs: int = 0, **sam) -> tuple[float, float]:
    """Eval loss, and the last logged mean top-class probability of the ranking pass (NaN for AdamW).
    `warm_epochs` of AdamW come first (a trainer of their own: its own learning-rate decay, and the
    method's trainer starts the data order again), the method runs the rest of the EPOCHS: does a
    model that has learnt something escape the collapse?"""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2))
    train_data, eval_data = noisy_task(1024, 1, noise), noisy_task(512, 2, noise)
    phases = ([(warm_epochs, dict(sam_mode="none"))] if warm_epochs else []) + [(EPOCHS - warm_epochs, sam)]
    for epochs, settings in phases:
        args = KSAMConfig(output_dir="runs/collapse_demo", report_to="none", use_cpu=True, disable_tqdm=True,
                          num_train_epochs=epochs, per_device_train_batch_size=32, learning_rate=3e-3,
                          logging_steps=8, save_strategy="no", seed=0, warmup_steps=0, **settings)
        trainer = KSAMTrainer(model=model, args=args, train_dataset=train_data, eval_dataset=eval_data,
                              data_collator=stack)
        trainer.remove_callback(PrinterCallback)  # the table only
        trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    return trainer.evaluate()["eval_loss"], logs[-1].get("sam_mean_max_prob", math.nan)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help says what it does
    methods = {"adamw": dict(sam_mode="none"),
               "top_k, rho 0": dict(sam_mode="ksam", ksam_selection="top_k", sam_rho=0.0),
               "top_k, rho 0.05": dict(sam_mode="ksam", ksam_selection="top_k", sam_rho=0.05),
               "loss_sampled, rho 0": dict(sam_mode="ksam", ksam_selection="loss_sampled", sam_rho=0.0),
               "loss_sampled, rho 0.05": dict(sam_mode="ksam", ksam_selection="loss_sampled", sam_rho=0.05),
               "top_k_ascent, rho 0.05": dict(sam_mode="ksam", ksam_selection="top_k_ascent", sam_rho=0.05),
               "AdamW 1 epoch, then top_k, rho 0.05": dict(sam_mode="ksam", ksam_selection="top_k", sam_rho=0.05,
                                                           warm_epochs=1)}
    print(f"tiny BERT, 1024 examples, {EPOCHS} epochs at batch 32, k = 25 %; ln 2 = {math.log(2):.4f}")
    print("| label noise | best possible eval_loss | method | eval_loss | mean top-class probability |")
    print("|---|---|---|---|---|")
    for noise in (0.0, 0.15, 0.3):
        entropy = 0.0 if noise == 0 else -(noise * math.log(noise) + (1 - noise) * math.log(1 - noise))
        for name, sam in methods.items():
            loss, confidence = train(noise, **sam)
            print(f"| {noise:.0%} | {entropy:.3f} | {name} | {loss:.4f} | "
                  f"{'—' if math.isnan(confidence) else f'{confidence:.3f}'} |", flush=True)


if __name__ == "__main__":
    main()
