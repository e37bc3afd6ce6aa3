"""K-SAM on packed (padding-free) batches ranks and keeps the original sequences: the step on a
packed row is the step on the same sequences laid out as a padded batch, and both are the
hand-computed SAM gradient of the kept sequences."""

from __future__ import annotations

import copy

import pytest
import torch

from ksam_hf import KSAMTrainer
from ksam_hf.packing import per_sequence_losses, sequence_label_counts
from tests.testing_utils import (assert_gradients_equal, own_losses, packed_and_padded, ranked_by_own_loss,
                                 reference_sam_gradient, rows, tiny_llama)

LENGTHS = [5, 9, 3, 7, 6, 4]


def test_per_sequence_losses_of_a_packed_row_are_those_of_the_sequences_alone():
    model = tiny_llama().eval()
    packed, padded = packed_and_padded(LENGTHS, seed=1)
    with torch.no_grad():
        outputs = model(**{k: v for k, v in packed.items() if k != "labels"}, use_cache=False)
    sums, counts = per_sequence_losses(outputs, packed, shift=True)
    assert counts.tolist() == [n - 1 for n in LENGTHS]  # every token but the first is predicted
    torch.testing.assert_close(sums / counts, torch.tensor(own_losses(model, padded)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("selection", ["top_k", "loss_sampled"])
def test_the_packed_step_is_the_padded_step_and_the_hand_computed_one(selection, make_config):
    model = tiny_llama(seed=2)
    packed, padded = packed_and_padded(LENGTHS, seed=3)
    twin = copy.deepcopy(model)
    settings = dict(sam_mode="ksam", ksam_k=2, ksam_selection=selection)

    torch.manual_seed(0)
    on_packed = KSAMTrainer(model=model, args=make_config(**settings))
    on_packed.training_step(model, dict(packed))
    kept = on_packed.sam_statistics.last_selected.ascent.tolist()

    torch.manual_seed(0)
    on_padded = KSAMTrainer(model=twin, args=make_config(**settings))
    on_padded.training_step(twin, dict(padded))
    assert on_padded.sam_statistics.last_selected.ascent.tolist() == kept
    assert_gradients_equal(model, {n: p.grad for n, p in twin.named_parameters()})
    if selection == "top_k":
        assert kept == ranked_by_own_loss(tiny_llama(seed=2), padded, 2)
        assert_gradients_equal(model, reference_sam_gradient(tiny_llama(seed=2), rows(padded, kept), rho=0.05))


def test_the_kept_sequences_are_packed_again(make_config):
    """The ascent and descent run on a row of the kept sequences only (the cost falls with k)."""
    model = tiny_llama(seed=4)
    packed, _ = packed_and_padded(LENGTHS, seed=5)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True)
    trainer = KSAMTrainer(model=model, args=make_config(sam_mode="ksam", ksam_k=2, ksam_selection="top_k"))
    trainer.training_step(model, dict(packed))
    kept = trainer.sam_statistics.last_selected.ascent.tolist()
    kept_tokens = sum(LENGTHS[i] for i in kept)
    assert seen == [torch.Size([1, sum(LENGTHS)]), torch.Size([1, kept_tokens]), torch.Size([1, kept_tokens])]


def test_random_ascent_never_draws_a_packed_sequence_without_labels(make_config):
    """A sequence whose labels are all -100 (a prompt the collator masked whole) has nothing to
    ascend on: the draw skips it, read from the labels, so the perturbation is never lost to a 0/0."""
    packed, _ = packed_and_padded(LENGTHS, seed=6)
    starts = torch.cumsum(torch.tensor([0] + LENGTHS), 0)
    packed["labels"] = packed["labels"].clone()
    packed["labels"][0, starts[1]:starts[2]] = -100  # the second sequence: no label
    counts = sequence_label_counts(packed, shift=True)
    assert counts.tolist() == [n - 1 if i != 1 else 0 for i, n in enumerate(LENGTHS)]
    model = tiny_llama(seed=7)
    trainer = KSAMTrainer(model=model, args=make_config(sam_mode="ksam", ksam_k=5, ksam_selection="random_ascent"))
    for step in range(4):
        trainer.state.global_step = step
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(packed))
        assert sorted(trainer.sam_statistics.last_selected.ascent.tolist()) == [0, 2, 3, 4, 5]
    assert trainer.sam_statistics.skipped == 0
