"""KSAMTrainer inside the real training loop: accumulation, precision, errors, learning, checkpoints."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from ksam_hf import KSAMConfig, KSAMSeq2SeqConfig, KSAMSeq2SeqTrainer, KSAMTrainer
from tests.test_ksam_step import (assert_gradients_equal, ranked_by_own_loss, reference_sam_gradient,
                                  rows)
from tests.tiny_models import GradientAtStep, as_dataset, bert_config, make_case, recording, stack


RecordingTrainer = recording(KSAMTrainer)


def one_accumulated_step(model, batch, tmp_path, **sam):
    callback = GradientAtStep()
    args = KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1,
                      per_device_train_batch_size=3, gradient_accumulation_steps=2, max_grad_norm=0.0,
                      learning_rate=1e-3, save_strategy="no", **sam)
    trainer = RecordingTrainer(model=model, args=args, train_dataset=as_dataset(batch), data_collator=stack,
                               callbacks=[callback])
    reference = copy.deepcopy(model)
    trainer.train()
    assert len(trainer.seen) == 2
    return reference, trainer.seen, callback.grads


def test_accumulation_ksam_is_the_mean_over_kept_examples(tmp_path):
    model, batch = make_case("seqcls_single", seed=11)
    reference, seen, grads = one_accumulated_step(model, batch, tmp_path, sam_mode="ksam", ksam_k=2)
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
    _, _, grads = one_accumulated_step(model, batch, tmp_path, sam_mode=mode, sam_rho=0.0, ksam_k=1.0)
    for name, p in big.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_exception_in_descent_leaves_weights_restored(tmp_path):
    model, batch = make_case("seqcls_single", seed=14)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True))
    forward, calls = model.forward, []

    def failing_forward(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        if len(calls) == 3:  # rank (no grad), ascent, descent at w + e
            raise torch.OutOfMemoryError("simulated out of memory in the descent")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    with pytest.raises(torch.OutOfMemoryError):
        trainer.training_step(model, dict(batch))
    assert calls == [False, True, True]
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


def learnable_dataset(size: int, seed: int) -> list[dict]:
    """Label = whether the first token is 7 or 8: learnable by a tiny BERT in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(size):
        ids = torch.randint(8, 50, (12,), generator=generator)
        label = i % 2
        ids[0] = 7 if label else 8
        data.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long),
                     "labels": torch.tensor(label)})
    return data


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
    original = KSAMTrainer._per_example_losses

    def recording(self, model, inputs):
        handle = self.accelerator.unwrap_model(model).classifier.register_forward_hook(
            lambda module, args, output: dtypes.append(output.dtype))
        try:
            return original(self, model, inputs)
        finally:
            handle.remove()

    KSAMTrainer._per_example_losses = recording
    try:
        trainer = train_learnable(tmp_path, sam_mode="ksam", bf16=True, num_train_epochs=2)
    finally:
        KSAMTrainer._per_example_losses = original
    assert dtypes and set(dtypes) == {torch.bfloat16}
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


class StopAt(TrainerCallback):
    """Stops training after `step` optimizer steps, as a preemption would (after the save at that step)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path):
    from transformers import BertForSequenceClassification

    def trainer_for(output_dir, callbacks=()):
        torch.manual_seed(0)
        model = BertForSequenceClassification(bert_config(num_labels=2))
        args = KSAMConfig(output_dir=str(output_dir), report_to="none", use_cpu=True, num_train_epochs=2,
                          per_device_train_batch_size=16, learning_rate=3e-3, logging_steps=1,
                          save_strategy="steps", save_steps=8, seed=0, sam_mode="ksam")
        return KSAMTrainer(model=model, args=args, train_dataset=learnable_dataset(128, 1), data_collator=stack,
                           callbacks=list(callbacks))

    straight = trainer_for(tmp_path / "straight")
    straight.train()
    interrupted = trainer_for(tmp_path / "interrupted", [StopAt(8)])
    interrupted.train()
    assert interrupted.state.global_step == 8
    checkpoint = tmp_path / "interrupted" / "checkpoint-8"
    resumed = trainer_for(tmp_path / "interrupted")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == straight.state.global_step == 16

    def losses(trainer):
        return [log["loss"] for log in trainer.state.log_history if "loss" in log]

    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-5)
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("field,value,match", [
    ("sam_rho", -0.1, "sam_rho"), ("ksam_k", 0, "ksam_k"), ("ksam_k", 1.5, "ksam_k"), ("ksam_k", "abc", "ksam_k"),
    ("ksam_k", -2, "ksam_k"), ("sam_mode", "adam", "sam_mode"), ("sam_rho", float("nan"), "sam_rho"),
])
def test_bad_sam_arguments_are_refused(field, value, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        KSAMConfig(output_dir=str(tmp_path), **{field: value})


def test_ksam_k_integers_and_fractions(tmp_path):
    assert KSAMConfig(output_dir=str(tmp_path), ksam_k=8).ksam_k == 8
    assert KSAMConfig(output_dir=str(tmp_path), ksam_k=0.25).ksam_k == 0.25
    parser = HfArgumentParser(KSAMConfig)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--ksam_k", "8",
                                                   "--sam_mode", "sam", "--sam_rho", "0.1"])
    assert args.ksam_k == 8 and isinstance(args.ksam_k, int) and args.sam_mode == "sam" and args.sam_rho == 0.1
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path), "ksam_k": 0.1, "sam_adaptive": True}))
    (args,) = parser.parse_json_file(str(config))
    assert args.ksam_k == 0.1 and args.sam_adaptive


def test_plain_training_arguments_run_ksam_defaults(tmp_path):
    model, batch = make_case("seqcls_single", seed=15)
    trainer = KSAMTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                              use_cpu=True))
    assert (trainer.sam.mode, trainer.sam.rho, trainer.sam.k) == ("ksam", 0.05, 0.25)
    kept = ranked_by_own_loss(model, batch, 2)  # ceil(0.25 * 6)
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)


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
                                                       ksam_k=3), per_example_loss_func=own_loss)
    trainer.training_step(model, dict(batch))
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_seq2seq_trainer_counterpart(tmp_path):
    model, batch = make_case("seq2seq", seed=17)
    kept = ranked_by_own_loss(model, batch, 3)
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    args = KSAMSeq2SeqConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, ksam_k=0.5,
                             predict_with_generate=True)
    trainer = KSAMSeq2SeqTrainer(model=model, args=args)
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)
    assert isinstance(trainer, Trainer)


# ------------------------------------------------------------------------------- previous-loss selection
def test_previous_loss_selection_ranks_by_remembered_losses(tmp_path):
    model, batch = make_case("token", seed=18)
    batch["idx"] = torch.arange(10, 16)
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       ksam_k=2, ksam_selection="previous_loss"))
    forward, grad_modes = model.forward, []

    def counting_forward(*args, **kwargs):
        assert "idx" not in kwargs
        grad_modes.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    model.forward = counting_forward
    trainer.training_step(model, dict(batch))  # unseen examples: ranked by a forward pass
    assert grad_modes == [False, True, True]
    own = {}
    with torch.no_grad():
        for i in range(6):
            own[10 + i] = float(forward(**rows({k: v for k, v in batch.items() if k != "idx"}, [i])).loss)
    # Remembered: each example's loss relative to the batch's mean per-example loss.
    mean_own = sum(own.values()) / 6
    remembered = trainer._loss_memory.lookup(torch.arange(10, 16))
    torch.testing.assert_close(remembered, torch.tensor([own[i] / mean_own for i in range(10, 16)]),
                               rtol=1e-5, atol=1e-6)

    # Now pretend rows 1 and 4 had the highest scores last time: the next step must keep them,
    # without a ranking forward pass.
    trainer._loss_memory.update(torch.arange(10, 16), torch.tensor([0.1, 9.0, 0.2, 0.3, 8.0, 0.4]))
    grad_modes.clear()
    model.zero_grad(set_to_none=True)
    loss = trainer.training_step(model, dict(batch))
    assert grad_modes == [True, True]
    plain = {k: v for k, v in batch.items() if k != "idx"}
    model.forward = forward
    expected = reference_sam_gradient(model, rows(plain, [1, 4]), rho=0.05)
    assert_gradients_equal(model, expected)
    # Their scores are refreshed in proportion to their current losses, keeping their mean (8.5);
    # the logged loss estimates the batch's: their mean loss over their mean score.
    kept_mean = (own[11] + own[14]) / 2
    refreshed = trainer._loss_memory.lookup(torch.tensor([11, 14]))
    torch.testing.assert_close(refreshed, torch.tensor([8.5 * own[11] / kept_mean, 8.5 * own[14] / kept_mean]),
                               rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(kept_mean / 8.5, rel=1e-5)
    untouched = trainer._loss_memory.lookup(torch.tensor([10, 12, 13, 15]))
    torch.testing.assert_close(untouched, torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_remembered_scores_are_relative_to_the_batch_they_were_measured_in():
    """Two batches measured at different loss levels (early: all high; late: all low) compare fairly."""
    from ksam_hf.loss_memory import estimated_batch_loss, refreshed_scores, relative_losses

    early = relative_losses(torch.tensor([3.0, 1.0, 2.0, 7.0]), torch.tensor([True, True, True, False]))
    late = relative_losses(torch.tensor([0.2, 0.6]), torch.tensor([True, True]))
    torch.testing.assert_close(early[:3], torch.tensor([1.5, 0.5, 1.0]))
    assert torch.isnan(early[3])  # unlabelled: never ranked from memory
    torch.testing.assert_close(late, torch.tensor([0.5, 1.5]))  # the late hard example outranks the early easy one
    torch.testing.assert_close(relative_losses(torch.zeros(3), torch.ones(3, dtype=torch.bool)), torch.zeros(3))
    torch.testing.assert_close(refreshed_scores(torch.tensor([1.5, 1.0]), torch.tensor([0.1, 0.4])),
                               torch.tensor([0.5, 2.0]))
    assert float(estimated_batch_loss(torch.tensor([0.1, 0.4]), torch.tensor([1.5, 1.0]))) == pytest.approx(0.2)


def test_previous_loss_selection_keeps_the_id_column_and_trains(tmp_path):
    import datasets

    data = learnable_dataset(64, 2)
    table = datasets.Dataset.from_dict({"input_ids": [d["input_ids"].tolist() for d in data],
                                        "attention_mask": [d["attention_mask"].tolist() for d in data],
                                        "labels": [int(d["labels"]) for d in data], "idx": list(range(64)),
                                        "sentence": ["unused"] * 64})
    trainer = train_learnable(tmp_path, sam_mode="ksam", ksam_selection="previous_loss", num_train_epochs=3,
                              dataset=table)
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert logs[-1]["sam_ranked_from_memory"] == 8  # epochs 2 and 3: 4 batches of 16 each


def test_previous_loss_selection_without_ids_is_a_clear_error(tmp_path):
    model, batch = make_case("seqcls_single")
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       ksam_selection="previous_loss"))
    with pytest.raises(ValueError, match="ksam_id_column"):
        trainer.training_step(model, dict(batch))
