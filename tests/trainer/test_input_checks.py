"""Models and inputs that K-SAM must refuse with an error that says what to do, or train correctly:
custom losses, per-example loss functions of the wrong shape, diverged weights, tuple outputs,
gradient checkpointing in both modes, models split across devices."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from ksam_hf import KSAMTrainer
from tests.testing_utils import (as_dataset, assert_gradients_equal, bert_config, make_case, ranked_by_own_loss,
                                 reference_sam_gradient, rows, stack)


class ClassWeightedClassifier(BertForSequenceClassification):
    """A user's subclass whose loss weighs class 1 ten times (a common way to handle imbalance)."""

    def forward(self, labels=None, **kwargs):
        outputs = super().forward(**kwargs)
        if labels is not None:
            weight = torch.tensor([1.0, 10.0, 1.0])
            outputs.loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight)
        return outputs


@pytest.mark.parametrize("mode", ["ksam", "sam"])
def test_a_model_with_its_own_loss_is_refused(mode, make_config):
    torch.manual_seed(0)
    model = ClassWeightedClassifier(bert_config(num_labels=3))
    _, batch = make_case("seqcls_single", seed=50)
    batch["labels"] = torch.tensor([0, 1, 2, 1, 0, 1])
    trainer = KSAMTrainer(model=model, args=make_config(sam_mode=mode))
    with pytest.raises(ValueError, match=r"ClassWeightedClassifier computes its own loss.*per_example_loss_func"):
        trainer.training_step(model, dict(batch))


def test_the_standard_loss_passes_the_check_with_label_smoothing(make_config):
    """The check compares the model's own loss with the standard one, not with the smoothed one."""
    model, batch = make_case("seqcls_single", seed=51)
    trainer = KSAMTrainer(model=model, args=make_config(label_smoothing_factor=0.1))
    trainer.training_step(model, dict(batch))


def test_a_per_example_loss_reduced_over_the_batch_is_refused(make_config):
    model, batch = make_case("seqcls_single", seed=52)

    def reduced(outputs, inputs):
        return outputs.logits.square().mean(), torch.ones(())

    trainer = KSAMTrainer(model=model, args=make_config(), per_example_loss_func=reduced)
    with pytest.raises(ValueError, match=r"per_example_loss_func.*\[\(\), \(\)\] for a batch of 6 rows.*shape \[6\]"):
        trainer.training_step(model, dict(batch))


@pytest.mark.parametrize("mode", ["none", "ksam"])
def test_diverged_weights_stop_the_run_naming_the_step(mode, make_config):
    """A regression target of NaN (a broken data row) makes the weights NaN at the first optimizer
    step, while the Trainer's NaN filter keeps the logged loss finite. The run stops at step 1's log."""
    model, batch = make_case("seqcls_regression", batch_size=8, seed=53)
    batch["labels"][5] = float("nan")
    trainer = KSAMTrainer(model=model, args=make_config(sam_mode=mode, max_steps=3, per_device_train_batch_size=8,
                                                        ksam_k=8, train_sampling_strategy="sequential"),
                          train_dataset=as_dataset(batch), data_collator=stack)
    with pytest.raises(FloatingPointError, match="not finite after step 1"):
        trainer.train()


def test_a_model_returning_tuples_trains(make_config):
    """`config.return_dict=False` (the stock Trainer trains it): K-SAM asks for its outputs as a dataclass."""
    model, batch = make_case("seqcls_single", seed=54)
    expected = reference_sam_gradient(model, rows(batch, ranked_by_own_loss(model, batch, 2)), rho=0.05)
    model.config.return_dict = False
    assert isinstance(model(**batch), tuple)
    trainer = KSAMTrainer(model=model, args=make_config(ksam_k=2, ksam_selection="top_k"))
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("mode", ["ksam", "sam"])
def test_gradient_checkpointing_in_both_modes(reentrant, mode, make_config):
    """Recomputing activations changes nothing: the step's gradient is the hand-computed one. The
    reentrant mode cannot be differentiated with `torch.autograd.grad`: the ascent must use a backward."""
    model, batch = make_case("seqcls_single", seed=55)
    kept = ranked_by_own_loss(model, batch, 2) if mode == "ksam" else list(range(6))
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    trainer = KSAMTrainer(model=model, args=make_config(sam_mode=mode, ksam_k=2, ksam_selection="top_k"))
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, dict(batch))
    assert_gradients_equal(model, expected)


def test_a_model_split_across_devices_is_refused(make_config):
    model, _ = make_case("seqcls_single")
    model.hf_device_map = {"bert.embeddings": "cpu", "bert.encoder": "disk", "classifier": "cpu"}  # offloaded
    with pytest.raises(ValueError, match=r"split across devices by `device_map`.*use DDP.*sam_mode='none'"):
        KSAMTrainer(model=model, args=make_config())
    model.hf_device_map = {"": "cpu"}  # on one device: fine
    KSAMTrainer(model=model, args=make_config())


def test_a_loss_computed_in_bf16_is_compared_to_bf16_precision():
    """FSDP2 with bf16 parameters: the model's own loss is a bf16 number (about 3 significant digits),
    so it is compared with the standard loss to 4 bf16 epsilons (3.1 %), and a class-weighted loss
    that differs by more is still refused."""
    from ksam_hf.checks import check_model_loss, own_and_standard_loss

    standard = (torch.tensor([1.0994 * 4]), torch.tensor([4.0]))
    own, reference, tolerance = own_and_standard_loss({"loss": torch.tensor(1.1016, dtype=torch.bfloat16)}, standard)
    assert tolerance == pytest.approx(4 * 2 ** -7) and reference == pytest.approx(1.0994)
    check_model_loss("M", "sequence_classification", own, reference, tolerance)  # 0.2 % apart: the same loss
    assert own_and_standard_loss({"loss": torch.tensor(1.1016)}, standard)[2] == 1e-3  # fp32: as before
    weighted = own_and_standard_loss({"loss": torch.tensor(1.25, dtype=torch.bfloat16)}, standard)
    with pytest.raises(ValueError, match="M computes its own loss"):
        check_model_loss("M", "sequence_classification", *weighted)
