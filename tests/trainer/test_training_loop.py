"""KSAMTrainer inside the real training loop: accumulation, precision, learning (and the collapse of
the paper's top-k rule), refused setups, the Trainer counterparts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from ksam_hf import KSAMConfig, KSAMSeq2SeqConfig, KSAMSeq2SeqTrainer, KSAMTrainer
from tests.testing_utils import (TEST_SAM_SETTINGS, GradientAtStep, as_dataset, assert_gradients_equal, bert_config,
                                 learnable_dataset, make_case, ranked_by_own_loss, recording, reference_sam_gradient,
                                 rows, stack, step_logs)


RecordingTrainer = recording(KSAMTrainer)


def one_accumulated_step(model, batch, tmp_path, **sam):
    callback = GradientAtStep()
    args = KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1,
                      per_device_train_batch_size=3, gradient_accumulation_steps=2, max_grad_norm=0.0,
                      learning_rate=1e-3, save_strategy="no", **{**TEST_SAM_SETTINGS, **sam})
    trainer = RecordingTrainer(model=model, args=args, train_dataset=as_dataset(batch), data_collator=stack,
                               callbacks=[callback])
    reference = copy.deepcopy(model)
    trainer.train()
    assert len(trainer.seen) == 2
    return reference, trainer.seen, callback.grads


def test_accumulation_ksam_is_the_mean_over_kept_examples(tmp_path):
    model, batch = make_case("seqcls_single", seed=11)
    reference, seen, grads = one_accumulated_step(model, batch, tmp_path, sam_mode="ksam", ksam_k=2,
                                                  ksam_selection="top_k")
    parts = []
    for micro in seen:
        parts.append(reference_sam_gradient(reference, rows(micro, ranked_by_own_loss(reference, micro, 2)),
                                            rho=0.05))
    expected = {n: None if parts[0][n] is None else (parts[0][n] + parts[1][n]) / 2 for n in parts[0]}
    model.zero_grad()
    for name, p in model.named_parameters():
        p.grad = grads[name]
    assert_gradients_equal(model, expected)


def test_accumulation_sam_weights_micro_batches_by_tokens(tmp_path):
    model, batch = make_case("causal_lm", seed=12)
    reference, seen, grads = one_accumulated_step(model, batch, tmp_path, sam_mode="sam")
    tokens = [float(m["labels"][:, 1:].ne(-100).sum()) for m in seen]
    parts = [reference_sam_gradient(reference, micro, rho=0.05) for micro in seen]
    expected = {n: None if parts[0][n] is None else
                (tokens[0] * parts[0][n] + tokens[1] * parts[1][n]) / sum(tokens) for n in parts[0]}
    for name, p in model.named_parameters():
        p.grad = grads[name]
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("mode", ["none", "ksam"])
def test_accumulation_with_rho_zero_equals_one_big_batch(mode, tmp_path):
    """Accumulating 2 x 3 examples gives the gradient of one batch of 6 (the baseline too)."""
    model, batch = make_case("seqcls_single", seed=13)
    big = copy.deepcopy(model)
    big(**batch).loss.backward()
    _, _, grads = one_accumulated_step(model, batch, tmp_path, sam_mode=mode, sam_rho=0.0, ksam_k=3)
    for name, p in big.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


def train_learnable(tmp_path, dataset=None, **overrides):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2))
    settings = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, num_train_epochs=12,
                    per_device_train_batch_size=16, learning_rate=3e-3, logging_steps=4, save_strategy="no",
                    seed=0, warmup_steps=0)
    settings.update(overrides)
    if dataset is None:
        dataset = learnable_dataset(128, 1)
    else:
        dataset = dataset.with_format("torch")
    trainer = KSAMTrainer(model=model, args=KSAMConfig(**settings), train_dataset=dataset, data_collator=stack)
    trainer.train()
    return trainer


@pytest.mark.parametrize("mode", ["none", "sam", "ksam"])
def test_training_lowers_the_loss(mode, tmp_path):
    trainer = train_learnable(tmp_path, sam_mode=mode)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < 0.5 * losses[0], losses
    if mode != "none":
        logs = [log for log in trainer.state.log_history if "loss" in log]
        assert all(log["sam_kept"] == (4 if mode == "ksam" else 16) for log in logs)
        assert all(log["sam_ascent_grad_norm"] > 0 for log in logs)


def test_bf16_on_cpu_trains(tmp_path):
    """bf16 autocast is really on in the SAM passes (the classifier computes in bf16), and training works."""
    dtypes = []
    original = KSAMTrainer._forward

    def recording(self, model, inputs):
        handle = self.accelerator.unwrap_model(model).classifier.register_forward_hook(
            lambda module, args, output: dtypes.append(output.dtype))
        try:
            return original(self, model, inputs)
        finally:
            handle.remove()

    KSAMTrainer._forward = recording
    try:
        trainer = train_learnable(tmp_path, sam_mode="ksam", bf16=True, num_train_epochs=2)
    finally:
        KSAMTrainer._forward = original
    assert dtypes and set(dtypes) == {torch.bfloat16}
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


# ------------------------------------------------------------------------------- refused setups
def test_compute_loss_func_with_sam_is_refused(tmp_path):
    model, _ = make_case("seqcls_single")
    with pytest.raises(ValueError, match="compute_loss_func.*per_example_loss_func"):
        KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True),
                    compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum())


def test_unknown_head_needs_a_per_example_loss(tmp_path):
    from transformers import BertForPreTraining

    model = BertForPreTraining(bert_config())
    with pytest.raises(ValueError, match="per_example_loss_func"):
        KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True))


def test_mismatched_label_names_are_refused(tmp_path):
    model, _ = make_case("seqcls_single")
    with pytest.raises(ValueError, match="label_names"):
        KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                 label_names=["target"]))


def test_custom_per_example_loss(tmp_path):
    """A user's own per-example loss (here: squared logit of class 0) drives ranking, ascent and descent."""
    model, batch = make_case("seqcls_single", seed=16)

    def own_loss(outputs, inputs):
        return outputs.logits[:, 0] ** 2, torch.ones(outputs.logits.shape[0])

    with torch.no_grad():
        scores = model(**batch).logits[:, 0] ** 2
    kept = sorted(scores.topk(3).indices.tolist())
    reference = copy.deepcopy(model)
    params = list(reference.parameters())
    grads = torch.autograd.grad((reference(**rows(batch, kept)).logits[:, 0] ** 2).mean(), params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(0.05 * g / norm)
    (reference(**rows(batch, kept)).logits[:, 0] ** 2).mean().backward()
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       ksam_k=3, ksam_selection="top_k", sam_rho=0.05),
                          per_example_loss_func=own_loss)
    trainer.training_step(model, dict(batch))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_seq2seq_trainer_counterpart(tmp_path):
    model, batch = make_case("seq2seq", seed=17)
    kept = ranked_by_own_loss(model, batch, 3)
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    args = KSAMSeq2SeqConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, ksam_k=0.5,
                             ksam_selection="top_k", sam_rho=0.05, predict_with_generate=True)
    trainer = KSAMSeq2SeqTrainer(model=model, args=args)
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)
    assert isinstance(trainer, Trainer)


def test_plain_training_arguments_are_converted_once(tmp_path):
    """A plain `TrainingArguments` becomes a `KSAMConfig` with its own fields and the SAM defaults."""
    model, _ = make_case("seqcls_single", seed=15)
    plain = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, learning_rate=1.5e-4,
                              per_device_train_batch_size=5)
    trainer = KSAMTrainer(model=model, args=plain)
    defaults = KSAMConfig(output_dir=str(tmp_path))
    assert isinstance(trainer.args, KSAMConfig)
    assert trainer.args.learning_rate == 1.5e-4 and trainer.args.per_device_train_batch_size == 5
    for name in KSAMConfig.sam_field_names():
        assert getattr(trainer.args, name) == getattr(defaults, name), name


# ------------------------------------------------------------------------------- the collapse of top-k
def train_noisy(tmp_path, **sam):
    """A tiny BERT on a task with 30 % label noise (the best accuracy is 70 %), 2 epochs of 32 steps."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2))
    args = KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, num_train_epochs=2,
                      per_device_train_batch_size=32, learning_rate=3e-3, logging_steps=8, save_strategy="no",
                      seed=0, warmup_steps=0, **sam)
    trainer = KSAMTrainer(model=model, args=args, train_dataset=learnable_dataset(1024, 1, label_noise=0.3),
                          eval_dataset=learnable_dataset(512, 2, label_noise=0.3), data_collator=stack)
    trainer.train()
    return trainer.evaluate()["eval_loss"], step_logs(trainer)[-1]


def test_top_k_collapses_to_the_uniform_predictor_and_loss_sampled_learns(tmp_path):
    """The regression test of the collapse. With 30 % of labels wrong, the k = 25 % highest losses of
    a batch are mostly wrongly labelled examples; their mean loss is lowest when every prediction is
    50/50 (ln 2 each), so the paper's rule ends there even without a perturbation (rho = 0). The
    plain step and `loss_sampled` learn the signal: their eval loss falls towards the noise's own
    entropy (0.611), well below ln 2."""
    baseline, _ = train_noisy(tmp_path / "adamw", sam_mode="none")
    ln2 = math.log(2)
    assert baseline < ln2 - 0.04
    for rho in (0.0, 0.05):
        loss, log = train_noisy(tmp_path / f"top_k{rho}", sam_mode="ksam", ksam_selection="top_k", sam_rho=rho)
        assert abs(loss - ln2) < 2e-3, (rho, loss)
        assert log["sam_mean_max_prob"] < 0.51  # the health signal shows the collapse
        loss, log = train_noisy(tmp_path / f"sampled{rho}", sam_mode="ksam", ksam_selection="loss_sampled", sam_rho=rho)
        assert loss < ln2 - 0.04 and abs(loss - baseline) < 0.02, (rho, loss, baseline)
        assert log["sam_mean_max_prob"] > 0.55


def test_the_default_selection_does_not_collapse(tmp_path):
    """The library's default (`top_k_ascent`: the ascent on the top k, the descent on the whole
    batch) on the task where top-k collapses: it ends near the plain step, far below ln 2."""
    from ksam_hf import KSAMConfig

    assert KSAMConfig.__dataclass_fields__["ksam_selection"].default == "top_k_ascent"
    baseline, _ = train_noisy(tmp_path / "adamw", sam_mode="none")
    loss, log = train_noisy(tmp_path / "default", sam_mode="ksam")
    assert loss < math.log(2) - 0.04 and abs(loss - baseline) < 0.02, (loss, baseline)
    assert log["sam_mean_max_prob"] > 0.55


def test_adaptive_k_is_logged_and_learns(tmp_path):
    """`ksam_loss_share`: k follows the batch's losses (logged as the mean kept per step) and trains."""
    loss, log = train_noisy(tmp_path, sam_mode="ksam", ksam_loss_share=0.5, ksam_k=2)
    assert loss < math.log(2) - 0.02
    assert 2 <= log["sam_kept"] < 32
