"""The experimental `PreviousLossKSAMTrainer`: ranking by remembered relative losses, built on the
trainer's ranking hook, with its memory saved in checkpoints."""

from __future__ import annotations

import warnings

import datasets
import pytest
import torch
from transformers import BertForSequenceClassification

from tests.testing_utils import (assert_gradients_equal, bert_config, cpu_config, learnable_dataset, make_case,
                                 reference_sam_gradient, rows, stack, step_logs)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from ksam_hf.experimental.previous_loss import (PreviousLossKSAMConfig, PreviousLossKSAMTrainer,
                                                    estimated_batch_loss, refreshed_scores, relative_losses)


def config(output_dir, **overrides) -> PreviousLossKSAMConfig:
    return cpu_config(output_dir, PreviousLossKSAMConfig, **overrides)


def test_importing_the_experimental_package_warns():
    import importlib

    import ksam_hf.experimental

    with pytest.warns(FutureWarning, match="experimental"):
        importlib.reload(ksam_hf.experimental)


def test_ranks_by_remembered_losses(tmp_path):
    model, batch = make_case("token", seed=18)
    batch["idx"] = torch.arange(10, 16)
    trainer = PreviousLossKSAMTrainer(model=model, args=config(tmp_path, ksam_k=2))
    forward, grad_modes = model.forward, []

    def counting_forward(*args, **kwargs):
        assert "idx" not in kwargs
        grad_modes.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    model.forward = counting_forward
    trainer.training_step(model, dict(batch))  # unseen examples: ranked by a forward pass
    assert grad_modes == [False, True, True]
    own = {}
    plain = {k: v for k, v in batch.items() if k != "idx"}
    with torch.no_grad():
        for i in range(6):
            own[10 + i] = float(forward(**rows(plain, [i])).loss)
    # Remembered: each example's loss relative to the batch's mean per-example loss.
    mean_own = sum(own.values()) / 6
    remembered = trainer.loss_memory.lookup(torch.arange(10, 16))
    torch.testing.assert_close(remembered, torch.tensor([own[i] / mean_own for i in range(10, 16)]),
                               rtol=1e-5, atol=1e-6)

    # Now pretend rows 1 and 4 had the highest scores last time: the next step must keep them,
    # without a ranking forward pass.
    trainer.loss_memory.update(torch.arange(10, 16), torch.tensor([0.1, 9.0, 0.2, 0.3, 8.0, 0.4]))
    grad_modes.clear()
    model.zero_grad(set_to_none=True)
    loss = trainer.training_step(model, dict(batch))
    assert grad_modes == [True, True]
    model.forward = forward
    expected = reference_sam_gradient(model, rows(plain, [1, 4]), rho=0.05)
    assert_gradients_equal(model, expected)
    # Their scores are refreshed in proportion to their current losses, keeping their mean (8.5);
    # the logged loss estimates the batch's: their mean loss over their mean score.
    kept_mean = (own[11] + own[14]) / 2
    refreshed = trainer.loss_memory.lookup(torch.tensor([11, 14]))
    torch.testing.assert_close(refreshed, torch.tensor([8.5 * own[11] / kept_mean, 8.5 * own[14] / kept_mean]),
                               rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(kept_mean / 8.5, rel=1e-5)
    untouched = trainer.loss_memory.lookup(torch.tensor([10, 12, 13, 15]))
    torch.testing.assert_close(untouched, torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_remembered_scores_are_relative_to_the_batch_they_were_measured_in():
    """Two batches measured at different loss levels (early: all high; late: all low) compare fairly."""
    early = relative_losses(torch.tensor([3.0, 1.0, 2.0, 7.0]), torch.tensor([True, True, True, False]))
    late = relative_losses(torch.tensor([0.2, 0.6]), torch.tensor([True, True]))
    torch.testing.assert_close(early[:3], torch.tensor([1.5, 0.5, 1.0]))
    assert torch.isnan(early[3])  # unlabelled: never ranked from memory
    torch.testing.assert_close(late, torch.tensor([0.5, 1.5]))  # the late hard example outranks the early easy one
    torch.testing.assert_close(relative_losses(torch.zeros(3), torch.ones(3, dtype=torch.bool)), torch.zeros(3))
    torch.testing.assert_close(refreshed_scores(torch.tensor([1.5, 1.0]), torch.tensor([0.1, 0.4])),
                               torch.tensor([0.5, 2.0]))
    assert float(estimated_batch_loss(torch.tensor([0.1, 0.4]), torch.tensor([1.5, 1.0]))) == pytest.approx(0.2)


def id_table(size: int, seed: int) -> datasets.Dataset:
    data = learnable_dataset(size, seed)
    return datasets.Dataset.from_dict({"input_ids": [d["input_ids"].tolist() for d in data],
                                       "attention_mask": [d["attention_mask"].tolist() for d in data],
                                       "labels": [int(d["labels"]) for d in data], "idx": list(range(size)),
                                       "sentence": ["unused"] * size})


def memory_trainer(output_dir, callbacks=(), **overrides):
    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2))
    settings = dict(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=3e-3)
    settings.update(overrides)
    return PreviousLossKSAMTrainer(model=model, args=config(output_dir, **settings), train_dataset=id_table(32, 2).with_format("torch"),
                                   data_collator=stack, callbacks=list(callbacks))


def test_keeps_the_id_column_and_ranks_later_epochs_from_memory(tmp_path):
    trainer = memory_trainer(tmp_path)
    trainer.train()
    assert step_logs(trainer)[-1]["sam_ranked_from_memory"] == 8  # epochs 2 and 3: 4 batches of 8 each


def test_resume_matches_an_uninterrupted_run(tmp_path):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 6  # mid epoch 2

    straight = memory_trainer(tmp_path / "straight", save_strategy="steps", save_steps=6)
    straight.train()
    memory_trainer(tmp_path / "interrupted", [StopAt()], save_strategy="steps", save_steps=6).train()
    assert (tmp_path / "interrupted" / "checkpoint-6" / "ksam_loss_memory_0.pt").is_file()
    resumed = memory_trainer(tmp_path / "interrupted", save_strategy="steps", save_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "interrupted" / "checkpoint-6"))
    assert [log["loss"] for log in step_logs(resumed)] == pytest.approx(
        [log["loss"] for log in step_logs(straight)], abs=1e-6)
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_without_ids_is_a_clear_error(tmp_path):
    model, batch = make_case("seqcls_single")
    trainer = PreviousLossKSAMTrainer(model=model, args=config(tmp_path))
    with pytest.raises(ValueError, match="ksam_id_column"):
        trainer.training_step(model, dict(batch))
