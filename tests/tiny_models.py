"""Tiny randomly initialised models of every supported head, padded batches for them, and the
helpers that watch them train (recorded micro-batches, gradients at the optimizer step).

Dropout is off everywhere, so that a gradient computed twice is the same gradient.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers import (BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM,
                          BertForMultipleChoice, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, GPT2Config, GPT2LMHeadModel)

VOCAB = 50
PAD = 0


def bert_config(**kwargs) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pad_token_id=PAD, **kwargs)


def lengths_for(batch_size: int, max_len: int, generator: torch.Generator) -> torch.Tensor:
    """Varied lengths, with the longest row shorter than `max_len` so padding columns exist."""
    return torch.randint(3, max_len - 1, (batch_size,), generator=generator)


def token_batch(batch_size: int, max_len: int, seed: int, **extra) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`/`attention_mask` of varied lengths."""
    generator = torch.Generator().manual_seed(seed)
    lengths = lengths_for(batch_size, max_len, generator)
    ids = torch.randint(1, VOCAB, (batch_size, max_len), generator=generator)
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, **extra}


def make_case(name: str, batch_size: int = 6, seed: int = 0):
    """(model, batch) for head `name`; the batch has labels and right padding."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    max_len = 10
    if name.startswith("seqcls"):
        kind = name.split("_", 1)[1]
        num_labels = {"single": 3, "multi": 4, "regression": 1}[kind]
        model = BertForSequenceClassification(bert_config(num_labels=num_labels))
        batch = token_batch(batch_size, max_len, seed)
        if kind == "single":
            batch["labels"] = torch.randint(0, 3, (batch_size,), generator=generator)
        elif kind == "multi":
            batch["labels"] = torch.randint(0, 2, (batch_size, 4), generator=generator).float()
        else:
            batch["labels"] = torch.randn(batch_size, generator=generator)
        return model, batch
    if name == "token":
        model = BertForTokenClassification(bert_config(num_labels=5))
        batch = token_batch(batch_size, max_len, seed)
        labels = torch.randint(0, 5, (batch_size, max_len), generator=generator)
        labels[batch["attention_mask"] == 0] = -100
        labels[:, 0] = -100  # e.g. [CLS]
        batch["labels"] = labels
        return model, batch
    if name == "masked_lm":
        model = BertForMaskedLM(bert_config())
        batch = token_batch(batch_size, max_len, seed)
        labels = batch["input_ids"].clone()
        chosen = (torch.rand(labels.shape, generator=generator) < 0.4) & (batch["attention_mask"] == 1)
        chosen[:, 1] = True  # every row has at least one masked token
        labels[~chosen] = -100
        batch["labels"] = labels
        return model, batch
    if name == "causal_lm":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        batch = token_batch(batch_size, max_len, seed)
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return model, batch
    if name == "seq2seq":
        model = BartForConditionalGeneration(BartConfig(
            vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None))
        batch = token_batch(batch_size, max_len, seed)
        target = token_batch(batch_size, 8, seed + 7)
        labels = target["input_ids"].clone()
        labels[target["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return model, batch
    if name == "multiple_choice":
        model = BertForMultipleChoice(bert_config())
        choices = 3
        flat = token_batch(batch_size * choices, max_len, seed)
        batch = {k: v.view(batch_size, choices, max_len) for k, v in flat.items()}
        batch["labels"] = torch.randint(0, choices, (batch_size,), generator=generator)
        return model, batch
    if name == "qa":
        model = BertForQuestionAnswering(bert_config())
        batch = token_batch(batch_size, max_len, seed)
        lengths = batch["attention_mask"].sum(1)
        batch["start_positions"] = (torch.rand(batch_size, generator=generator) * lengths).long()
        batch["end_positions"] = torch.minimum(batch["start_positions"] + 1, lengths - 1)
        return model, batch
    raise KeyError(name)


CASES = ["seqcls_single", "seqcls_multi", "seqcls_regression", "token", "masked_lm", "causal_lm",
         "seq2seq", "multiple_choice", "qa"]


def as_dataset(batch: dict) -> list[dict]:
    """A batch as a list of examples (a map-style dataset for the Trainer)."""
    size = next(iter(batch.values())).shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(size)]


def stack(features: list[dict]) -> dict:
    """Collate equally shaped examples."""
    return {k: torch.stack([f[k] for f in features]) for k in features[0]}


class GradientAtStep(TrainerCallback):
    """Keeps p.grad as the optimizer is about to step (after accumulation and DDP's all-reduce)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def recording(trainer_class: type) -> type:
    """A subclass of `trainer_class` that records the micro-batches the training loop hands to the step."""

    class Recording(trainer_class):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.seen = getattr(self, "seen", []) + [{k: v.detach().clone() for k, v in inputs.items()}]
            return super().training_step(model, inputs, num_items_in_batch)

    return Recording
