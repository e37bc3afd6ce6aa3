"""KSAMTrainer when things go wrong: checkpoints and resumption, faults inside the step, non-finite
ascent gradients, and malformed batches (no label at all, one example, one-token examples)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification, TrainerCallback

from ksam_hf import KSAMConfig, KSAMTrainer
from tests.testing_utils import (GradientAtStep, as_dataset, assert_gradients_equal, assert_weights_equal, bert_config,
                                 cpu_config,
                                 learnable_dataset, make_case, plain_gradient, ranked_by_own_loss,
                                 reference_sam_gradient, rows, stack, step_logs, weights)


def args_for(output_dir, **overrides) -> KSAMConfig:
    """The paper's top-k rule unless told otherwise: the hand references below rank by loss."""
    return cpu_config(output_dir, **{"ksam_selection": "top_k", **overrides})


# ------------------------------------------------------------------------------- checkpoints
class WeightsAtStepEnd(TrainerCallback):
    """The weights after each optimizer step (what a checkpoint of that step must hold)."""

    def __init__(self, stop_at: int = 0):
        self.weights, self.stop_at = {}, stop_at

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = weights(model)
        if state.global_step == self.stop_at:
            control.should_training_stop = True  # a preemption right after the save of this step


class CheckedSaves(KSAMTrainer):
    """Fails if the Trainer saves a checkpoint whose weights are not those after the optimizer step
    (`at_step_end`: a `WeightsAtStepEnd` callback of this trainer)."""

    at_step_end: WeightsAtStepEnd = None
    saves = 0

    def _save_checkpoint(self, model, trial):
        assert_weights_equal(model, self.at_step_end.weights[self.state.global_step])
        self.saves += 1
        super()._save_checkpoint(model, trial)


N = 3  # optimizer steps before the interruption; the run has 2N


def checkpoint_trainer(output_dir, callbacks=(), **overrides):
    torch.manual_seed(0)
    config = bert_config(num_labels=2)
    config.hidden_dropout_prob = 0.1  # dropout on: resuming must restore the RNG as well
    model = BertForSequenceClassification(config)
    settings = dict(max_steps=2 * N, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                    learning_rate=3e-3, save_strategy="steps", save_steps=N, sam_mode="ksam", ksam_k=0.5)
    settings.update(overrides)
    at_step_end = next((c for c in callbacks if isinstance(c, WeightsAtStepEnd)), None) or WeightsAtStepEnd()
    trainer = CheckedSaves(model=model, args=args_for(output_dir, **settings), train_dataset=learnable_dataset(40, 3),
                           data_collator=stack, callbacks=list(callbacks) + [at_step_end] * (at_step_end not in callbacks))
    trainer.at_step_end = at_step_end
    return trainer


@pytest.mark.parametrize("mode,selection", [("ksam", "top_k"), ("ksam", "loss_sampled"), ("sam", "top_k")])
def test_resume_matches_an_uninterrupted_run_and_checkpoints_hold_unperturbed_weights(mode, selection, tmp_path):
    """2N steps straight == N steps, checkpoint, resume to 2N (the data crosses an epoch boundary:
    40 examples, 16 per step). The checkpoint of step N holds, bit for bit, the weights the
    uninterrupted run had after its optimizer step N (every save is checked so). `loss_sampled`
    draws from the random state that the checkpoint restores."""
    straight_weights = WeightsAtStepEnd()
    straight = checkpoint_trainer(tmp_path / "straight", [straight_weights], sam_mode=mode, ksam_selection=selection)
    straight.train()
    assert straight.state.global_step == 2 * N and straight.saves == 2

    stop = WeightsAtStepEnd(stop_at=N)
    interrupted = checkpoint_trainer(tmp_path / "interrupted", [stop], sam_mode=mode, ksam_selection=selection)
    interrupted.train()
    assert interrupted.state.global_step == N
    checkpoint = tmp_path / "interrupted" / f"checkpoint-{N}"
    saved = load_file(str(checkpoint / "model.safetensors"))
    for name, value in straight_weights.weights[N].items():
        assert torch.equal(saved[name], value), name

    resumed = checkpoint_trainer(tmp_path / "interrupted", sam_mode=mode, ksam_selection=selection)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 2 * N
    straight_logs, resumed_logs = step_logs(straight), step_logs(resumed)
    assert len(straight_logs) == len(resumed_logs) == 2 * N
    for ours, theirs in zip(resumed_logs, straight_logs):
        for key in ("loss", "sam_kept", "sam_kept_loss", "sam_ascent_grad_norm"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_a_save_after_an_interrupted_step_holds_the_restored_weights(tmp_path):
    """A KeyboardInterrupt (Ctrl-C, or a preemption handler raising) in the descent at w + e, then an
    emergency `save_model`: the saved weights are those before the step, not the perturbed ones."""
    at_end = WeightsAtStepEnd()
    trainer = checkpoint_trainer(tmp_path, [at_end], save_strategy="no")
    model = trainer.model
    forward, calls = model.forward, []

    @functools.wraps(forward)  # the Trainer keeps the columns named in forward's signature
    def interrupted_forward(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        if len(calls) == 2 * 3 * 2 + 3:  # step 3, first micro-batch: rank, ascent, descent <- here
            assert any(not torch.equal(p, at_end.weights[2][n]) for n, p in model.named_parameters())  # at w + e
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    model.forward = interrupted_forward
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert_weights_equal(model, at_end.weights[2])
    trainer.save_model(str(tmp_path / "emergency"))
    saved = load_file(str(tmp_path / "emergency" / "model.safetensors"))
    for name, value in at_end.weights[2].items():
        assert torch.equal(saved[name], value), name


# ------------------------------------------------------------------------------- faults
class StateAtStepEnd(TrainerCallback):
    def __init__(self):
        self.weights, self.optimizer = None, None

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.weights = weights(model)
        self.optimizer = copy.deepcopy(optimizer.state_dict())


def assert_optimizer_state_equal(actual: dict, expected: dict) -> None:
    assert actual["state"].keys() == expected["state"].keys()
    for index, state in expected["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(actual["state"][index][key]), torch.as_tensor(value)), (index, key)


def oom(*_):
    raise torch.OutOfMemoryError("simulated out of memory")


@pytest.mark.parametrize("where", ["rank_forward", "ascent_forward", "ascent_backward", "descent_forward",
                                   "descent_backward"])
def test_fault_inside_the_step_restores_weights_and_leaves_the_optimizer_alone(where, tmp_path):
    """An out-of-memory error in step 2 of a training run: the weights are bit for bit those after
    step 1, and the optimizer state (AdamW moments, step count) is that after step 1."""
    model, batch = make_case("seqcls_single", batch_size=16, seed=30)
    state = StateAtStepEnd()
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, max_steps=3, per_device_train_batch_size=8,
                                                     learning_rate=1e-2, ksam_k=3),
                          train_dataset=as_dataset(batch), data_collator=stack, callbacks=[state])
    forward, calls = model.forward, []
    call, backward = {"rank_forward": (4, False), "ascent_forward": (5, False), "ascent_backward": (5, True),
                      "descent_forward": (6, False), "descent_backward": (6, True)}[where]

    @functools.wraps(forward)  # the Trainer keeps the columns named in forward's signature
    def failing_forward(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        if len(calls) == call and not backward:
            raise torch.OutOfMemoryError("simulated out of memory")
        outputs = forward(*args, **kwargs)
        if len(calls) == call:
            outputs.logits.register_hook(oom)
        return outputs

    model.forward = failing_forward
    with pytest.raises(torch.OutOfMemoryError):
        trainer.train()
    assert calls[:3] == [False, True, True] and len(calls) == call  # step 1 completed; step 2 failed here
    assert trainer.state.global_step == 1
    assert_weights_equal(model, state.weights)
    assert_optimizer_state_equal(trainer.optimizer.state_dict(), state.optimizer)


def test_non_finite_ascent_gradient_skips_the_perturbation(tmp_path):
    """An infinite gradient in the ascent (here: a hook on the logits) skips the perturbation: the step
    is a plain gradient step on the kept examples, the weights stay finite, and it is counted."""
    model, batch = make_case("seqcls_single", batch_size=6, seed=31)
    start = weights(model)
    kept = ranked_by_own_loss(model, batch, 2)
    expected = plain_gradient(model, rows(batch, kept))
    gradient = GradientAtStep()
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, max_steps=1, per_device_train_batch_size=6,
                                                     max_grad_norm=0.0, optim="sgd", learning_rate=0.1,
                                                     lr_scheduler_type="constant", ksam_k=2),
                          train_dataset=as_dataset(batch), data_collator=stack, callbacks=[gradient])
    forward, calls = model.forward, []

    @functools.wraps(forward)  # the Trainer keeps the columns named in forward's signature
    def poisoned_forward(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        outputs = forward(*args, **kwargs)
        if len(calls) == 2:  # the ascent
            outputs.logits.register_hook(lambda g: g * float("inf"))
        return outputs

    model.forward = poisoned_forward
    trainer.train()
    assert calls == [False, True, True]
    assert trainer.sam_statistics.skipped == 1
    log = step_logs(trainer)[0]
    assert log["sam_skipped_perturbations"] == 1 and "sam_ascent_grad_norm" not in log
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        torch.testing.assert_close(gradient.grads[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(p, start[name] - 0.1 * expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_infinite_loss_example_skips_the_perturbation(tmp_path):
    """A regression target of 1e30: the squared error overflows to inf, the example ranks first, the
    ascent norm is inf and the perturbation is skipped. (The descent gradient, about 1e30, is finite:
    what the optimizer makes of it is the user's affair, as without SAM.)"""
    model, batch = make_case("seqcls_regression", seed=32)
    batch["labels"][2] = 1e30
    before = weights(model)
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, ksam_k=2))
    loss = trainer.training_step(model, dict(batch))
    assert torch.isinf(loss)
    assert trainer.sam_statistics.skipped == 1
    assert trainer.sam_statistics.pop()["sam_skipped_perturbations"] == 1
    assert_weights_equal(model, before)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------------- malformed data
def test_micro_batch_without_labels_is_skipped(tmp_path):
    """Token classification, every label -100: no ascent, no descent, no gradient; the step returns
    a loss of 0 and the log counts the micro-batch in `sam_unlabelled_batches`. The optimizer step
    (with gradient clipping on) then leaves every weight as it was."""
    model, batch = make_case("token", batch_size=4, seed=33)
    batch["labels"][:] = -100
    before = weights(model)
    gradient = GradientAtStep()
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, max_steps=1, per_device_train_batch_size=4,
                                                     max_grad_norm=1.0),
                          train_dataset=as_dataset(batch), data_collator=stack, callbacks=[gradient])
    trainer.train()
    assert all(g is None for g in gradient.grads.values())
    assert_weights_equal(model, before)
    log = step_logs(trainer)[0]
    assert log["loss"] == 0.0 and log["sam_unlabelled_batches"] == 1 and log["sam_skipped_perturbations"] == 0
    assert "sam_kept" not in log and "sam_ascent_grad_norm" not in log
    assert trainer.sam_statistics.empty == 1


@pytest.mark.parametrize("unlabelled", [0, 1])
def test_accumulation_with_one_unlabelled_micro_batch(unlabelled, tmp_path):
    """Two accumulated micro-batches, one of them without labels (first or last): the gradient is the
    labelled one's K-SAM gradient, undiluted; the logged loss is the mean of its loss and 0."""
    model, batch = make_case("token", batch_size=8, seed=34)
    batch["labels"][4 * unlabelled: 4 * unlabelled + 4] = -100
    labelled = rows(batch, list(range(4 * (1 - unlabelled), 4 * (1 - unlabelled) + 4)))
    kept = ranked_by_own_loss(model, labelled, 2)
    expected = reference_sam_gradient(model, rows(labelled, kept), rho=0.05)
    with torch.no_grad():
        labelled_loss = float(model(**labelled).loss)
    gradient = GradientAtStep()
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, max_steps=1, per_device_train_batch_size=4,
                                                     gradient_accumulation_steps=2, max_grad_norm=0.0, ksam_k=2,
                                                     train_sampling_strategy="sequential"),
                          train_dataset=as_dataset(batch), data_collator=stack, callbacks=[gradient])
    trainer.train()
    for name, p in model.named_parameters():
        p.grad = gradient.grads[name]
    assert_gradients_equal(model, expected)
    log = step_logs(trainer)[0]
    assert log["sam_unlabelled_batches"] == 1 and log["sam_kept"] == 2
    assert log["loss"] == pytest.approx(labelled_loss / 2, abs=1e-3)


def test_sam_mode_on_a_batch_without_labels(tmp_path):
    """SAM mode has no ranking pass, so it does not skip such a batch: the loss is 0/0 = NaN (as the
    model's own loss is), the ascent gradient is zero (no perturbation, none skipped) and the descent
    adds zero gradients. The Trainer's `logging_nan_inf_filter` keeps the NaN out of the logged loss."""
    model, batch = make_case("token", batch_size=4, seed=35)
    batch["labels"][:] = -100
    before = weights(model)
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, sam_mode="sam"))
    loss = trainer.training_step(model, dict(batch))
    assert torch.isnan(loss)
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0
               for p in model.parameters() if p.requires_grad and p.grad is not None)
    assert_weights_equal(model, before)
    logs = trainer.sam_statistics.pop()
    assert logs["sam_skipped_perturbations"] == 0 and "sam_unlabelled_batches" not in logs
    assert logs["sam_kept"] == 4 and logs["sam_ascent_grad_norm"] == 0.0
    assert logs["sam_kept_loss"] != logs["sam_kept_loss"]  # NaN


@pytest.mark.parametrize("case", ["seqcls_single", "token", "causal_lm"])
def test_batch_of_one(case, tmp_path):
    """A batch of one example (e.g. the last, short batch): K-SAM keeps it (a fraction rounds up)."""
    model, batch = make_case(case, batch_size=1, seed=36)
    expected = reference_sam_gradient(model, batch, rho=0.05)
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, ksam_k=0.25))
    before = weights(model)
    loss = trainer.training_step(model, dict(batch))
    with torch.no_grad():
        torch.testing.assert_close(loss, model(**batch).loss, rtol=1e-5, atol=1e-6)
    assert_weights_equal(model, before)
    assert_gradients_equal(model, expected)
    assert trainer.sam_statistics.pop()["sam_kept"] == 1


def one_token_first_row(batch: dict, token: int = 5) -> dict:
    """Row 0 becomes a one-token sequence (a lone special token, as [CLS] of an empty text)."""
    batch["input_ids"][0] = 0
    batch["input_ids"][0, 0] = token
    batch["attention_mask"][0] = 0
    batch["attention_mask"][0, 0] = 1
    return batch


@pytest.mark.parametrize("case", ["token", "causal_lm"])
def test_one_token_example_has_nothing_to_learn_and_is_never_kept(case, tmp_path):
    """Token classification ([CLS] labelled -100) and causal LM (no next token): the one-token example
    has no item, so K-SAM never keeps it, even with k = the whole batch (the model's own loss on it
    alone is NaN)."""
    model, batch = make_case(case, batch_size=4, seed=37)
    batch = one_token_first_row(batch)
    batch["labels"][0] = -100
    if case == "causal_lm":
        batch["labels"][0, 0] = 5  # labelled, but there is no next token to predict
    with torch.no_grad():
        assert torch.isnan(model(**rows(batch, [0])).loss)
    expected = reference_sam_gradient(model, rows(batch, [1, 2, 3]), rho=0.05)
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, ksam_k=4))
    loss = trainer.training_step(model, dict(batch))
    assert torch.isfinite(loss)
    assert_gradients_equal(model, expected)
    assert trainer.sam_statistics.pop()["sam_kept"] == 3


def test_one_token_example_with_a_sequence_label_is_an_ordinary_example(tmp_path):
    """Sequence classification of a [CLS]-only input: it has a label, so it is ranked like any other."""
    model, batch = make_case("seqcls_single", batch_size=4, seed=38)
    batch = one_token_first_row(batch)
    batch["labels"][0] = 2
    kept = ranked_by_own_loss(model, batch, 2)
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path, ksam_k=2))
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)


def test_batch_of_one_token_examples_only(tmp_path):
    """Every row one token long and unlabelled (token classification): skipped as unlabelled."""
    model, batch = make_case("token", batch_size=3, seed=39)
    for i in range(3):
        batch = one_token_first_row({k: v.roll(1, 0) for k, v in batch.items()})
    batch["labels"][:] = -100
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path))
    loss = trainer.training_step(model, dict(batch))
    assert loss == 0 and all(p.grad is None for p in model.parameters())
    assert trainer.sam_statistics.pop()["sam_unlabelled_batches"] == 1


# ------------------------------------------------------------------------------- DeepSpeed / FSDP
@pytest.mark.parametrize("flag", ["is_fsdp_enabled", "is_deepspeed_enabled"])
def test_sharded_training_is_refused_with_sam(flag, tmp_path):
    """Real FSDP / DeepSpeed cannot be set up here (CPU: accelerate enables FSDP only on accelerator
    devices, and deepspeed is not installed), so the accelerator is made to report one after it is
    created (FSDP without a plugin saying version 2: FSDP1): KSAMTrainer must refuse at construction
    and say what works instead; `sam_mode="none"` is accepted. FSDP2's step: tests/distributed/test_fsdp.py."""

    class Sharded(KSAMTrainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            setattr(self, flag, True)

    model, _ = make_case("seqcls_single")
    with pytest.raises(ValueError, match=r"DeepSpeed or FSDP1: use FSDP2 .*DDP .*sam_mode='none'"):
        Sharded(model=model, args=args_for(tmp_path, sam_mode="ksam"))
    with pytest.raises(ValueError, match="DeepSpeed or FSDP1"):
        Sharded(model=model, args=args_for(tmp_path, sam_mode="sam"))
    assert Sharded(model=model, args=args_for(tmp_path, sam_mode="none")).args.sam_mode == "none"


def test_fsdp_argument_without_distributed_training_is_refused(tmp_path):
    """`KSAMConfig(fsdp="full_shard")` in a single process: the Trainer itself refuses (before
    KSAMTrainer's own check can run)."""
    model, _ = make_case("seqcls_single")
    with pytest.raises(ValueError, match="fsdp only works in distributed training"):
        KSAMTrainer(model=model, args=args_for(tmp_path, sam_mode="ksam", fsdp="full_shard"))


def test_auto_find_batch_size_restart_after_out_of_memory_in_a_later_micro_batch(tmp_path):
    """With gradient accumulation, an out-of-memory error in the second micro-batch of a step makes
    the Trainer (`auto_find_batch_size=True`) shrink the batch size (8 -> 7) and restart the training loop.
    The restarted step must get the same gradient as a run started with the smaller batch."""
    model, batch = make_case("seqcls_single", batch_size=16, seed=40)
    reference_model = copy.deepcopy(model)
    settings = dict(max_steps=1, per_device_train_batch_size=7, gradient_accumulation_steps=2, max_grad_norm=0.0,
                    ksam_k=2)
    expected = GradientAtStep()
    KSAMTrainer(model=reference_model, args=args_for(tmp_path / "reference", **settings),
                train_dataset=as_dataset(batch), data_collator=stack, callbacks=[expected]).train()

    gradient = GradientAtStep()
    trainer = KSAMTrainer(model=model, args=args_for(tmp_path / "auto", **{**settings, "per_device_train_batch_size": 8},
                                                     auto_find_batch_size=True),
                          train_dataset=as_dataset(batch), data_collator=stack, callbacks=[gradient])
    forward, calls = model.forward, []

    @functools.wraps(forward)  # the Trainer keeps the columns named in forward's signature
    def failing_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        if len(calls) == 6:  # batch 8: rank, ascent, descent of micro-batch 1; rank, ascent, descent <- here
            raise torch.OutOfMemoryError("CUDA out of memory. (simulated)")
        return forward(*args, **kwargs)

    model.forward = failing_forward
    trainer.train()
    assert calls[0] == 8 and calls[6] == 7 and trainer.state.global_step == 1  # restarted with batch 7
    for name, grad in expected.grads.items():
        if grad is not None:
            torch.testing.assert_close(gradient.grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
