"""Bi-LoRA and Flat-LoRA (`sam_mode="bi_lora"` / `"flat_lora"`) against references computed here: the
auxiliary adapter's ascent and global clip by formula, Flat-LoRA's noise added to the weights by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from ksam_hf import KSAMConfig, KSAMTrainer
from ksam_hf.lora_sam import CHECKPOINT_FILE, FlatLoRA, _row_noise, _seed
from tests.testing_utils import (GradientAtStep, bert_config, cpu_config, learnable_dataset, make_case, stack,
                                 step_logs, tiny_llama)
from transformers import BertForSequenceClassification


def lora_classifier(seed: int = 0):
    torch.manual_seed(seed)
    model = BertForSequenceClassification(bert_config(num_labels=2))
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]))


def batch_of(seed: int = 56) -> dict:
    _, batch = make_case("seqcls_single", batch_size=8, seed=seed)
    batch["labels"] = batch["labels"] % 2
    return batch


def lora_layers_of(model) -> list:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


# ----------------------------------------------------------------------------- Bi-LoRA
def test_bi_lora_step_descends_the_main_adapter_ascends_the_auxiliary_and_clips_it(tmp_path):
    model = lora_classifier()
    batch = batch_of()
    grads = GradientAtStep()
    trainer = KSAMTrainer(model=model, args=cpu_config(tmp_path, sam_mode="bi_lora", sam_rho=1e-3, bi_lora_rank=2,
                                                       max_steps=1, per_device_train_batch_size=8, learning_rate=1e-2,
                                                       lr_scheduler_type="constant", max_grad_norm=0.0, optim="sgd",
                                                       weight_decay=0.0),
                          train_dataset=[{k: v[i] for k, v in batch.items()} for i in range(8)], data_collator=stack,
                          callbacks=[grads])
    aux = trainer.lora_sam
    with torch.no_grad():  # a nonzero auxiliary adapter, so that its term matters in the step
        for b in aux.b:
            b.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    a0, b0 = [a.detach().clone() for a in aux.a], [b.detach().clone() for b in aux.b]

    # By hand: the model with the auxiliary term B2 A2 x added to each LoRA layer's output.
    reference = copy.deepcopy(model)
    ra = [a.clone().requires_grad_() for a in a0]
    rb = [b.clone().requires_grad_() for b in b0]
    for i, layer in enumerate(lora_layers_of(reference)):
        layer.register_forward_hook(lambda m, args, out, i=i: out + F.linear(F.linear(args[0], ra[i]), rb[i]))
    reference.train()
    reference(**batch).loss.backward()
    trainer.train()

    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if p.requires_grad:  # the main adapter's gradient was taken at w + (the auxiliary term)
            torch.testing.assert_close(grads.grads[name], q.grad, rtol=1e-5, atol=1e-7, msg=name)
    # Adam's first step (maximize): each weight moves by lr * g / (|g| + eps), then the global clip.
    lr, eps = 1e-2, 1e-8
    stepped_a = [a + lr * g.grad / (g.grad.abs() + eps) for a, g in zip(a0, ra)]
    stepped_b = [b + lr * g.grad / (g.grad.abs() + eps) for b, g in zip(b0, rb)]
    c = math.sqrt(sum(float((b @ a).norm() ** 2) for a, b in zip(stepped_a, stepped_b)))
    assert c > 1e-3  # the clip acts
    scale = math.sqrt(1e-3 / c)
    for got, want in zip(aux.a + aux.b, stepped_a + stepped_b):
        torch.testing.assert_close(got.detach(), want * scale, rtol=1e-5, atol=1e-8)
    clipped = math.sqrt(sum(float((b @ a).norm() ** 2) for a, b in zip(aux.a, aux.b)))
    assert clipped == pytest.approx(1e-3, rel=1e-5)  # jointly over all layers: sum_j ||B2_j A2_j||^2 = rho^2
    before = [float((b @ a).norm()) for a, b in zip(stepped_a, stepped_b)]
    per_layer = [float((b @ a).norm()) for a, b in zip(aux.a, aux.b)]
    assert min(before) > 1e-3 and max(per_layer) < 0.9e-3  # a per-layer clip would leave every layer at rho
    assert step_logs(trainer)[0]["bi_lora_auxiliary_norm"] == pytest.approx(1e-3, rel=1e-4)


def test_the_auxiliary_adapter_is_absent_from_evaluation_and_what_is_saved(tmp_path):
    model = lora_classifier()
    batch = batch_of()
    trainer = KSAMTrainer(model=model, args=cpu_config(tmp_path, sam_mode="bi_lora", sam_rho=0.05))
    with torch.no_grad():
        for b in trainer.lora_sam.b:
            b.fill_(0.3)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad(), trainer.lora_sam.active():
        evaluated = model(**inputs).logits
    model.train()
    with torch.no_grad(), trainer.lora_sam.active():
        trained = model(**inputs).logits  # train mode (dropout is off in these tiny models): the term is there
    trainer.lora_sam.remove()
    model.eval()
    with torch.no_grad():
        plain = model(**inputs).logits
    assert torch.equal(evaluated, plain) and not torch.allclose(trained, plain)
    model.save_pretrained(tmp_path / "saved")
    reference = lora_classifier()
    reference.save_pretrained(tmp_path / "reference")
    from safetensors.torch import load_file

    saved, expected = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("saved", "reference"))
    assert set(saved) == set(expected) and all(saved[k].shape == expected[k].shape for k in saved)


def bi_lora_trainer(output_dir, **overrides) -> KSAMTrainer:
    settings = dict(sam_mode="bi_lora", sam_rho=0.05, max_steps=6, per_device_train_batch_size=8, learning_rate=1e-2,
                    save_strategy="steps", save_steps=3, gradient_accumulation_steps=2)
    settings.update(overrides)
    return KSAMTrainer(model=lora_classifier(seed=1), args=cpu_config(output_dir, **settings),
                       train_dataset=learnable_dataset(96, 4), data_collator=stack)


def test_bi_lora_resumes_exactly_and_its_checkpoint_holds_the_auxiliary_adapter(tmp_path):
    straight = bi_lora_trainer(tmp_path / "straight")
    straight.train()
    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert (checkpoint / CHECKPOINT_FILE).is_file() and (checkpoint / "adapter_model.safetensors").is_file()
    resumed = bi_lora_trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert [log["loss"] for log in step_logs(resumed)][-3:] == pytest.approx(
        [log["loss"] for log in step_logs(straight)][-3:], abs=1e-6)
    for p, q in zip(resumed.lora_sam.parameters(), straight.lora_sam.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8)
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_bi_lora_with_gradient_checkpointing_gives_the_same_gradient(tmp_path):
    from peft import get_peft_model as wrap

    grads = {}
    for checkpointing in (False, True):
        model = wrap(tiny_llama(3), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]))
        _, batch = make_case("causal_lm", seed=57)
        trainer = KSAMTrainer(model=model, args=cpu_config(tmp_path / str(checkpointing), sam_mode="bi_lora",
                                                           sam_rho=0.05, activation_checkpointing=checkpointing))
        with torch.no_grad():
            for b in trainer.lora_sam.b:
                b.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        trainer.training_step(model, dict(batch))
        grads[checkpointing] = [p.grad.clone() for p in trainer.lora_sam.parameters()] + \
            [p.grad.clone() for p in model.parameters() if p.requires_grad]
    for got, want in zip(grads[True], grads[False]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- Flat-LoRA
def test_flat_lora_noise_per_row_std_ramp_and_seed():
    std = torch.tensor([0.01, 0.1, 1.0])
    noise = _row_noise(std, seed=7, in_features=40_000, dtype=torch.float32)
    torch.testing.assert_close(noise.std(dim=1), std, rtol=0.02, atol=0)
    assert torch.equal(noise, _row_noise(std, seed=7, in_features=40_000, dtype=torch.float32))  # any process
    assert not torch.equal(noise, _row_noise(std, seed=8, in_features=40_000, dtype=torch.float32))
    model = lora_classifier()
    flat = FlatLoRA(lora_layers_of(model), sigma=0.05, seed=0)
    sigmas = []
    for step in (0, 25, 50, 100):
        flat.begin(step, max_steps=100)
        sigmas.append(flat.sigma_t)
    assert sigmas == pytest.approx([0.0, 0.05 * (1 - math.cos(math.pi / 4)) / 2, 0.025, 0.05])
    layer = flat.layers[0]
    merged = layer.get_base_layer().weight + layer.get_delta_weight("default")
    torch.testing.assert_close(flat.std[0], 0.05 * merged.norm(dim=1) / math.sqrt(layer.in_features))


def test_flat_lora_step_is_the_gradient_at_the_noised_weights(tmp_path):
    model = lora_classifier()
    batch = batch_of()
    # sigma 2 (not the papers' 0.05): noise large enough that a wrong draw in the backward shows
    trainer = KSAMTrainer(model=model, args=cpu_config(tmp_path, sam_mode="flat_lora", sam_rho=2.0))
    trainer.state.global_step, trainer.state.max_steps = 5, 10
    with torch.no_grad():  # a trained-looking main adapter, so that W' differs from W0
        for layer in lora_layers_of(model):
            layer.lora_B["default"].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    reference = copy.deepcopy(model)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer.training_step(model, dict(batch))
    sigma = 2.0 * (1 - math.cos(math.pi * 5 / 10)) / 2
    with torch.no_grad():  # by hand: each base weight plus its row noise, drawn from the same seed
        for index, layer in enumerate(lora_layers_of(reference)):
            base = layer.get_base_layer().weight
            merged = base + layer.get_delta_weight("default")
            std = sigma * merged.norm(dim=1) / math.sqrt(layer.in_features)
            base.add_(_row_noise(std, _seed(0, 5, index, 0xF1A7), layer.in_features, base.dtype))
    reference.train()
    reference(**batch).loss.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)
        else:
            assert torch.equal(p, base_before[name]), name  # the base weights were never touched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flat_lora_training_leaves_the_base_weights_bit_for_bit(dtype, tmp_path):
    model = lora_classifier().to(dtype)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = KSAMTrainer(model=model, args=cpu_config(tmp_path, sam_mode="flat_lora", sam_rho=0.05, max_steps=4,
                                                       per_device_train_batch_size=8, learning_rate=1e-2),
                          train_dataset=learnable_dataset(32, 2), data_collator=stack)
    trainer.train()
    assert step_logs(trainer)[-1]["flat_lora_sigma"] > 0
    for name, p in trainer.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base[name]), name


# ----------------------------------------------------------------------------- refusals and the wrapper
def test_refusals_are_one_line_each(tmp_path):
    plain = BertForSequenceClassification(bert_config(num_labels=2))
    for mode in ("bi_lora", "flat_lora"):
        with pytest.raises(ValueError, match="needs a model with LoRA adapters.*peft.get_peft_model"):
            KSAMTrainer(model=plain, args=cpu_config(tmp_path, sam_mode=mode))
        with pytest.raises(ValueError, match="sam_rho.*must be > 0"):
            KSAMConfig(output_dir=str(tmp_path), sam_mode=mode, sam_rho=0.0)
    with pytest.raises(ValueError, match="bi_lora_rank.*>= 1"):
        KSAMConfig(output_dir=str(tmp_path), sam_mode="bi_lora", bi_lora_rank=0)
    model = lora_classifier()
    layer = lora_layers_of(model)[0]
    layer.get_base_layer().weight = torch.nn.Parameter(torch.zeros_like(layer.get_base_layer().weight,
                                                                        dtype=torch.uint8), requires_grad=False)
    with pytest.raises(ValueError, match="flat_lora.*quantized base weights"):
        KSAMTrainer(model=model, args=cpu_config(tmp_path, sam_mode="flat_lora"))


def test_a_lora_model_without_task_type_is_trained_by_every_sam_mode(tmp_path):
    """A plain PeftModel around a LlamaForCausalLM (no task_type), as the stock Trainer trains it: the
    head is found through the wrapper, and SAM's step is SAM's by hand."""
    from tests.testing_utils import reference_sam_gradient

    model = get_peft_model(tiny_llama(4), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert type(model).__name__ == "PeftModel"
    _, batch = make_case("causal_lm", seed=58)
    expected = reference_sam_gradient(model, batch, rho=0.05)
    trainer = KSAMTrainer(model=model, args=cpu_config(tmp_path, sam_mode="sam", sam_rho=0.05))
    trainer.training_step(model, dict(batch))
    for (name, p) in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_the_sft_example_runs_bi_lora_offline_and_saves_the_main_adapter_only(tmp_path):
    import subprocess
    import sys

    from tests.testing_utils import REPO, SHARED

    if not (SHARED / "models" / "all-MiniLM-L6-v2" / "tokenizer.json").is_file():
        pytest.skip("needs the MiniLM tokenizer in ../shared")
    out = tmp_path / "bi"
    done = subprocess.run([sys.executable, "examples/sft_lora_ksam.py", "--output_dir", str(out), "--max_steps", "3",
                           "--examples", "48", "--per_device_train_batch_size", "8", "--sam_mode", "bi_lora",
                           "--sam_rho", "0.05", "--use_cpu", "True", "--report_to", "none", "--bf16", "False",
                           "--logging_steps", "1", "--save_strategy", "no",
                           "--tokenizer_name", str(SHARED / "models" / "all-MiniLM-L6-v2")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    assert all(t.shape[0] == 16 or t.shape[1] == 16 for t in saved.values())  # rank 16: the main adapter only
