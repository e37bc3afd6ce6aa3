"""The steps whose host synchronisations `benchmarks.syncs` counts: every rule, one Trainer step each
(`training_step`, clip, the optimizer's step, zero the gradients) on a tiny BERT classifier."""

from __future__ import annotations

import tempfile
from typing import Callable

import torch

RULES = {
    "adamw": dict(sam_mode="none"),
    "sam": dict(sam_mode="sam"),
    "momentum": dict(sam_mode="momentum"),
    "random_direction": dict(sam_mode="random_direction"),
    "ksam random_ascent": dict(sam_mode="ksam", ksam_selection="random_ascent"),
    "ksam top_k": dict(sam_mode="ksam", ksam_selection="top_k"),
    "ksam top_k_ascent": dict(sam_mode="ksam", ksam_selection="top_k_ascent"),
    "ksam loss_sampled": dict(sam_mode="ksam", ksam_selection="loss_sampled"),
}


def rule_step(rule: str, batch_size: int = 8, seed: int = 0) -> Callable[[], None]:
    """One optimizer step of `rule` as the Trainer's loop runs it, as a function of no arguments."""
    from transformers import BertConfig, BertForSequenceClassification

    from ksam_hf import KSAMConfig, KSAMTrainer

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2,
                                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (batch_size, 12), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.randint(0, 2, (batch_size,), generator=generator)}
    args = KSAMConfig(output_dir=tempfile.mkdtemp(prefix="ksam_syncs_"), use_cpu=True, report_to="none",
                      max_grad_norm=1.0, sam_rho=0.05, ksam_k=0.25, **RULES[rule])
    trainer = KSAMTrainer(model=model, args=args)
    trainer.create_optimizer()

    def step() -> None:
        trainer.training_step(model, dict(batch))
        trainer.accelerator.clip_grad_norm_(model.parameters(), 1.0)
        trainer.optimizer.step()
        model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    return step
