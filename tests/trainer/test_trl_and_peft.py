"""Where hub models are fine-tuned today: TRL's SFT (`KSAMSFTTrainer`, packed or not, completion- and
assistant-only loss, truncation) and PEFT adapters (LoRA) under K-SAM, against hand references."""

from __future__ import annotations

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from ksam_hf import KSAMSFTConfig, KSAMSFTTrainer, KSAMTrainer
from tests.testing_utils import (SHARED, GradientAtStep, assert_gradients_equal, bert_config,
                                 cpu_config, learnable_dataset, make_case, ranked_by_own_loss, recording,
                                 reference_sam_gradient, rows, stack, step_logs)

TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}{% generation %}"
                 "{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}")


@pytest.fixture(scope="module")
def tokenizer():
    if not (TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {TOKENIZER}")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.eos_token = tokenizer.sep_token
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def small_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id))


def sums_dataset(size: int = 48) -> datasets.Dataset:
    """A prompt-completion dataset generated here (no Hub at test time)."""
    return datasets.Dataset.from_dict({"prompt": [f"add {i} and {i % 7 + 1}" for i in range(size)],
                                       "completion": [f" {i + i % 7 + 1}" for i in range(size)]})


def sft_config(tmp_path, **overrides) -> KSAMSFTConfig:
    settings = dict(max_steps=1, per_device_train_batch_size=6, max_length=64, ksam_k=2, ksam_selection="top_k",
                    max_grad_norm=0.0, train_sampling_strategy="sequential", bf16=False)  # SFTConfig's default: bf16
    settings.update(overrides)
    return cpu_config(tmp_path, KSAMSFTConfig, **settings)


# ----------------------------------------------------------------------------- TRL SFT
def test_sft_step_is_the_same_packed_and_padded_and_the_hand_computed_one(tokenizer, tmp_path):
    """One optimizer step of KSAMSFTTrainer with `padding_free=True` (one row of six sequences) and
    without (a padded batch of six rows): the same two sequences are kept, and the gradient is SAM's
    on them by hand, with the completion-only labels TRL built."""
    grads, seen, kept = {}, {}, {}
    for padding_free in (True, False):
        model = small_llama(tokenizer)
        callback = GradientAtStep()
        trainer = recording(KSAMSFTTrainer)(model=model, args=sft_config(tmp_path / str(padding_free),
                                                                         padding_free=padding_free, max_length=None),
                                            train_dataset=sums_dataset(), processing_class=tokenizer,
                                            callbacks=[callback])
        trainer.train()
        grads[padding_free], seen[padding_free] = callback.grads, trainer.seen[0]
        kept[padding_free] = trainer.sam_statistics.last_selected.ascent.tolist()
    assert "attention_mask" not in seen[True] and seen[True]["input_ids"].shape[0] == 1
    assert kept[True] == kept[False]
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-6, msg=name)
    padded = seen[False]
    assert padded["labels"].ne(-100).sum(1).max() < padded["attention_mask"].sum(1).min()  # completion only
    model = small_llama(tokenizer)
    assert kept[False] == ranked_by_own_loss(model, padded, 2)
    expected = reference_sam_gradient(model, rows(padded, kept[False]), rho=0.05)
    for name, grad in expected.items():
        if grad is not None:
            # (the reference runs the padded rows untrimmed: float32 sums in another order)
            torch.testing.assert_close(grads[False][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_sft_with_packing_ranks_sequences_not_rows(tokenizer, tmp_path):
    """`packing=True`: a packed row holds many sequences; K-SAM keeps `ksam_k` of them."""
    trainer = KSAMSFTTrainer(model=small_llama(tokenizer), args=sft_config(tmp_path, packing=True, max_steps=3,
                                                                          per_device_train_batch_size=2, ksam_k=3,
                                                                          train_sampling_strategy="random"),
                             train_dataset=sums_dataset(), processing_class=tokenizer)
    trainer.train()
    assert [log["sam_kept"] for log in step_logs(trainer)] == [3, 3, 3]


def test_sft_assistant_only_loss_and_truncation(tokenizer, tmp_path):
    """A conversational dataset with a chat template: only the assistant's tokens are labelled (TRL
    builds the labels), rows are cut at `max_length`, and the K-SAM step ranks on those labels."""
    conversations = [[{"role": "user", "content": f"what is {i} plus one?"},
                      {"role": "assistant", "content": f"it is {i + 1}"}] for i in range(24)]
    trainer = recording(KSAMSFTTrainer)(
        model=small_llama(tokenizer), args=sft_config(tmp_path, assistant_only_loss=True, max_length=12, max_steps=2),
        train_dataset=datasets.Dataset.from_dict({"messages": conversations}), processing_class=tokenizer)
    trainer.train()
    batch = trainer.seen[0]
    assert batch["input_ids"].shape[1] <= 12
    assert 0 < int(batch["labels"].ne(-100).sum()) < int(batch["attention_mask"].sum())
    assert [log["sam_kept"] for log in step_logs(trainer)] == [2, 2]


def test_a_plain_sft_config_is_converted_and_dft_is_refused(tokenizer, tmp_path):
    from trl import SFTConfig

    plain = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_length=32)
    trainer = KSAMSFTTrainer(model=small_llama(tokenizer), args=plain, train_dataset=sums_dataset(8),
                             processing_class=tokenizer)
    assert isinstance(trainer.args, KSAMSFTConfig) and trainer.args.max_length == 32
    with pytest.raises(ValueError, match="loss_type.*nll"):
        KSAMSFTTrainer(model=small_llama(tokenizer), args=sft_config(tmp_path, loss_type="dft"),
                       train_dataset=sums_dataset(8), processing_class=tokenizer)


# ----------------------------------------------------------------------------- PEFT
def lora_classifier(seed: int = 0):
    torch.manual_seed(seed)
    model = BertForSequenceClassification(bert_config(num_labels=2))
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]))


def lora_llama(seed: int = 0):
    from tests.testing_utils import tiny_llama

    return get_peft_model(tiny_llama(seed), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                                       target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("build, case", [(lora_classifier, "seqcls_single"), (lora_llama, "causal_lm")])
def test_lora_step_perturbs_only_the_adapter_and_matches_sam_by_hand(build, case, make_config):
    model = build()
    _, batch = make_case(case, seed=56)
    if case == "seqcls_single":
        batch["labels"] = batch["labels"] % 2
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < sum(p.numel() for p in model.parameters()) / 2
    expected = reference_sam_gradient(model, rows(batch, ranked_by_own_loss(model, batch, 2)), rho=0.05)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = KSAMTrainer(model=model, args=make_config(ksam_k=2, ksam_selection="top_k"))
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)
    assert trainer.sam_statistics.perturbed_elements == trainable  # e holds the trainable weights only
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen[name]), name


def lora_trainer(output_dir, **overrides):
    model = lora_classifier(seed=1)
    settings = dict(max_steps=6, per_device_train_batch_size=8, learning_rate=1e-2, save_strategy="steps",
                    save_steps=3, ksam_k=0.5)
    settings.update(overrides)
    return KSAMTrainer(model=model, args=cpu_config(output_dir, **settings), train_dataset=learnable_dataset(48, 4),
                       data_collator=stack)


def test_lora_training_moves_only_the_adapter_and_resumes_exactly(tmp_path):
    straight = lora_trainer(tmp_path / "straight")
    base = {n: p.detach().clone() for n, p in straight.model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in straight.model.named_parameters() if p.requires_grad}
    straight.train()
    for name, p in straight.model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, start[name]), name
        else:
            assert torch.equal(p, base[name]), name
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    resumed = lora_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert [log["loss"] for log in step_logs(resumed)][-3:] == pytest.approx(
        [log["loss"] for log in step_logs(straight)][-3:], abs=1e-6)
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("reentrant", [True, False])
def test_lora_with_gradient_checkpointing(reentrant, make_config):
    model = lora_llama(seed=3)
    _, batch = make_case("causal_lm", seed=57)
    expected = reference_sam_gradient(model, rows(batch, ranked_by_own_loss(model, batch, 2)), rho=0.05)
    trainer = KSAMTrainer(model=model, args=make_config(ksam_k=2, ksam_selection="top_k", activation_checkpointing=True,
                                                        activation_checkpointing_kwargs={"use_reentrant": reentrant}))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.enable_input_require_grads()
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)


@pytest.mark.slow
def test_torch_compile_trains(make_config):
    """`torch_compile=True` (the Trainer compiles the model) runs the K-SAM step and learns. The
    `aot_eager` backend traces forward and backward as inductor does but skips its code generation,
    which would take minutes on 2 CPU cores."""
    model = BertForSequenceClassification(bert_config(num_labels=2))
    trainer = KSAMTrainer(model=model, args=make_config(torch_compile=True, torch_compile_backend="aot_eager",
                                                        max_steps=8, per_device_train_batch_size=16,
                                                        learning_rate=3e-3, logging_steps=4),
                          train_dataset=learnable_dataset(128, 1), data_collator=stack)
    trainer.train()
    losses = [log["loss"] for log in step_logs(trainer)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
