"""What the tests share: tiny randomly initialised models of every supported head with padded
batches, the hand-computed references (SAM by plain autograd, examples ranked by the model's own
loss on each alone, importance weights), and the helpers that watch a Trainer train.

Dropout is off everywhere, so that a gradient computed twice is the same gradient. The references
never use ksam_hf's code.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_pt_utils import LabelSmoother
from transformers import (BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM,
                          BertForMultipleChoice, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, GPT2Config, GPT2LMHeadModel)

VOCAB = 50
PAD = 0


def bert_config(**kwargs) -> BertConfig:
    return BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pad_token_id=PAD, **kwargs)


class TwoHeadClassifier(BertForSequenceClassification):
    """A classifier with a second head that only rows with `use_second=1` use: a process whose rows
    all have 0 leaves that head without a gradient (as a mixture of experts or a routed adapter does)."""

    def __init__(self, config):
        super().__init__(config)
        self.second = torch.nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids=None, attention_mask=None, use_second=None, labels=None, **kwargs):
        outputs = super().forward(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                                  **kwargs)
        if use_second is not None and bool(use_second.any()):
            pooled = outputs.hidden_states[-1][:, 0]
            outputs.logits = outputs.logits + use_second.view(-1, 1) * self.second(pooled)
        if labels is not None:
            outputs.loss = torch.nn.functional.cross_entropy(outputs.logits, labels)
        return outputs


def tiny_llama(seed: int = 0):
    """A 2-layer Llama (separates the sequences of a packed row by their `position_ids`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=PAD))


def packed_and_padded(lengths: list[int], seed: int) -> tuple[dict, dict]:
    """The same sequences as one padding-free row (as TRL's collator packs them: each sequence's
    first label masked) and as a right-padded batch with an attention mask."""
    generator = torch.Generator().manual_seed(seed)
    sequences = [torch.randint(1, VOCAB, (n,), generator=generator) for n in lengths]
    longest = max(lengths)
    ids = torch.full((len(lengths), longest), PAD)
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    padded = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    labels = torch.cat([torch.cat([torch.tensor([-100]), s[1:]]) for s in sequences])
    positions = torch.cat([torch.arange(n) for n in lengths])
    bounds = torch.cumsum(torch.tensor([0] + lengths), 0).to(torch.int32)
    packed = {"input_ids": torch.cat(sequences)[None], "labels": labels[None], "position_ids": positions[None],
              "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest,
              "seq_idx": torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                                 torch.tensor(lengths))[None]}
    return packed, padded


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
            self.seen = getattr(self, "seen", []) + [{k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                                                      for k, v in inputs.items()}]
            return super().training_step(model, inputs, num_items_in_batch)

    return Recording


# ----------------------------------------------------------------------------- references by hand
LABEL_KEYS = ("labels", "start_positions", "end_positions")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
"""Real data and models next to the repository (`../shared/glue`, `../shared/models`), where present."""


def rows(batch: dict, indices) -> dict:
    index = torch.as_tensor(indices)
    return {k: v.index_select(0, index) for k, v in batch.items()}


def batch_size_of(batch: dict) -> int:
    return next(iter(batch.values())).shape[0]


def model_loss(model, batch: dict, label_smoothing: float = 0.0, shift: bool = False) -> torch.Tensor:
    """The model's own loss, or the Trainer's LabelSmoother over the model's logits."""
    if not label_smoothing:
        return model(**batch).loss
    outputs = model(**{k: v for k, v in batch.items() if k not in LABEL_KEYS})
    return LabelSmoother(epsilon=label_smoothing)(outputs, batch["labels"], shift_labels=shift)


def own_losses(model, batch: dict) -> list[float]:
    """Each example's loss, from the model's own loss on that example alone."""
    with torch.no_grad():
        return [float(model(**rows(batch, [i])).loss) for i in range(batch_size_of(batch))]


def ranked_by_own_loss(model, batch: dict, k: int) -> list[int]:
    """The k examples with the highest loss, each evaluated alone by the model."""
    losses = own_losses(model, batch)
    return sorted(sorted(range(len(losses)), key=lambda i: -losses[i])[:k])


def perturbed_copy(model, batch: dict, rho: float, adaptive: bool = False, **loss_kwargs):
    """SAM's first step by hand: a copy of `model` at w + e, e = rho g/||g|| (ASAM: rho w^2 g/||w g||),
    g the gradient of the model's own loss on `batch`."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model_loss(model, batch, **loss_kwargs), params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if adaptive:
        norm = torch.sqrt(sum(((p * g) ** 2).sum() for p, g in pairs))
        steps = [rho * p * p * g / norm for p, g in pairs]
    else:
        norm = torch.sqrt(sum((g ** 2).sum() for _, g in pairs))
        steps = [rho * g / norm for _, g in pairs]
    with torch.no_grad():
        for (p, _), step in zip(pairs, steps):
            p.add_(step)
    model.zero_grad(set_to_none=True)
    return model


def reference_sam_gradient(model, batch: dict, rho: float, adaptive: bool = False, **loss_kwargs):
    """SAM by hand: g = grad L(w); e as in `perturbed_copy`; return grad L(w + e)."""
    moved = perturbed_copy(model, batch, rho, adaptive, **loss_kwargs)
    model_loss(moved, batch, **loss_kwargs).backward()
    return {name: p.grad for name, p in moved.named_parameters()}


def assert_gradients_equal(model, expected: dict) -> None:
    for name, p in model.named_parameters():
        if expected[name] is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
        else:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_weights_equal(model, expected: dict) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p, expected[name]), name


def plain_gradient(model, batch: dict) -> dict:
    reference = copy.deepcopy(model)
    reference.zero_grad(set_to_none=True)
    reference(**batch).loss.backward()
    return {n: p.grad for n, p in reference.named_parameters()}


# ----------------------------------------------------------------------------- training helpers
TEST_SAM_SETTINGS = {"sam_rho": 0.05, "ksam_selection": "loss_sampled"}
"""rho and selection of the test trainers unless the test sets them (the references use rho 0.05)."""


def cpu_config(output_dir, config_class=None, **overrides):
    """A `KSAMConfig` (or `config_class`) for CPU tests in `output_dir`: no reports, no saves, a log
    every step, and the SAM settings the hand-computed references assume (`TEST_SAM_SETTINGS`, so
    that a change of the library's defaults does not move them; a config class with a selection
    default of its own keeps it); `overrides` on top."""
    from ksam_hf import KSAMConfig

    config_class = config_class or KSAMConfig
    pinned = {name: value for name, value in TEST_SAM_SETTINGS.items()
              if config_class.__dataclass_fields__[name].default == KSAMConfig.__dataclass_fields__[name].default}
    settings = dict(output_dir=str(output_dir), report_to="none", use_cpu=True, disable_tqdm=True,
                    save_strategy="no", seed=0, logging_steps=1, **pinned)
    settings.update(overrides)
    return config_class(**settings)


def step_logs(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def learnable_dataset(size: int, seed: int, label_noise: float = 0.0) -> list[dict]:
    """Label = whether the first token is 7 or 8, flipped for a `label_noise` share of the examples:
    learnable by a tiny BERT in a few dozen steps, up to the noise."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(size):
        ids = torch.randint(9, 50, (12,), generator=generator) if label_noise else \
            torch.randint(8, 50, (12,), generator=generator)
        label = i % 2
        ids[0] = 7 if label else 8
        if label_noise and float(torch.rand((), generator=generator)) < label_noise:
            label = 1 - label
        data.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long),
                     "labels": torch.tensor(label)})
    return data
