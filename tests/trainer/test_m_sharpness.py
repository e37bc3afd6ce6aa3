"""m-SAM (`sam_group_size`): one perturbation per group of m examples, against the step by hand."""

from __future__ import annotations

import pytest
import torch

from ksam_hf import KSAMConfig, KSAMTrainer
from tests.testing_utils import (assert_gradients_equal, assert_weights_equal, make_case, model_loss, perturbed_copy,
                                 ranked_by_own_loss, rows, weights)


def by_hand(model, batch: dict, groups: list[list[int]], rho: float, kept=None) -> dict:
    """Each group its own SAM step (its ascent on `kept(group)`, default the group), the descents'
    gradients averaged over the batch's items: sum_g n_g grad L_g(w + e_g) / n (n: examples here)."""
    total = sum(len(g) for g in groups)
    summed: dict = {}
    for group in groups:
        ascent = rows(batch, kept(group) if kept else group)
        moved = perturbed_copy(model, ascent, rho)
        model_loss(moved, rows(batch, group)).backward()
        for name, p in moved.named_parameters():
            if p.grad is not None:
                summed[name] = summed.get(name, 0) + p.grad * len(group) / total
    return {name: summed.get(name) for name, _ in model.named_parameters()}


def step(model, batch: dict, tmp_path, **sam) -> KSAMTrainer:
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       **sam))
    before = weights(model)
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, dict(batch))
    assert_weights_equal(model, before)  # every group's perturbation undone
    return trainer


def test_two_groups_two_perturbations(tmp_path):
    model, batch = make_case("seqcls_single", batch_size=6)
    expected = by_hand(model, batch, [[0, 1, 2], [3, 4, 5]], rho=0.05)
    step(model, batch, tmp_path, sam_mode="sam", sam_rho=0.05, sam_group_size=3)
    assert_gradients_equal(model, expected)
    one_perturbation = by_hand(model, batch, [[0, 1, 2, 3, 4, 5]], rho=0.05)
    assert any(not torch.allclose(one_perturbation[n], expected[n]) for n in expected if expected[n] is not None)


def test_a_short_last_group_weighs_by_its_examples(tmp_path):
    model, batch = make_case("seqcls_single", batch_size=5)
    expected = by_hand(model, batch, [[0, 1], [2, 3], [4]], rho=0.05)
    step(model, batch, tmp_path, sam_mode="sam", sam_rho=0.05, sam_group_size=2)
    assert_gradients_equal(model, expected)


def test_an_ascent_rule_picks_its_rows_within_each_group(tmp_path):
    model, batch = make_case("seqcls_single", batch_size=8)
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]

    def top_one(group: list[int]) -> list[int]:  # the group's highest loss, each example scored alone
        return [group[i] for i in ranked_by_own_loss(model, rows(batch, group), 1)]

    expected = by_hand(model, batch, groups, rho=0.05, kept=top_one)
    step(model, batch, tmp_path, sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=0.25, sam_rho=0.05,
         sam_group_size=4)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("case", ["seqcls_single", "token"])
def test_groups_of_m_are_micro_batches_of_m_with_accumulation(case, tmp_path):
    """SAM with one micro-batch of B and groups of m is SAM with micro-batches of m and B / m
    accumulation steps: the same gradient (token-level heads too: both weigh each group by its items)."""
    model, batch = make_case(case, batch_size=6)
    grouped = step(model, batch, tmp_path / "g", sam_mode="sam", sam_rho=0.05, sam_group_size=2)
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path / "a"), report_to="none", use_cpu=True,
                                                       sam_mode="sam", sam_rho=0.05, gradient_accumulation_steps=3))
    trainer.current_gradient_accumulation_steps = 3
    for number, group in enumerate([[0, 1], [2, 3], [4, 5]]):
        trainer.accelerator.gradient_state._set_sync_gradients(number == 2)
        trainer.training_step(model, rows(batch, group))
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)
    assert grouped.sam_statistics.pop()["sam_kept"] == 2  # three ascents of two rows each


def test_a_micro_batch_no_larger_than_m_is_one_group(tmp_path):
    model, batch = make_case("seqcls_single", batch_size=4)
    expected = by_hand(model, batch, [[0, 1, 2, 3]], rho=0.05)
    step(model, batch, tmp_path, sam_mode="sam", sam_rho=0.05, sam_group_size=8)
    assert_gradients_equal(model, expected)


def test_refused_where_there_is_no_ascent_to_split(tmp_path):
    with pytest.raises(ValueError, match="sam_group_size.*momentum"):
        KSAMConfig(output_dir=str(tmp_path), sam_mode="momentum", sam_group_size=4)
    with pytest.raises(ValueError, match="sam_group_size.*whole number"):
        KSAMConfig(output_dir=str(tmp_path), sam_mode="sam", sam_group_size=0)


def test_a_micro_batch_is_cut_by_its_own_row_lengths_only(tmp_path):
    """Lengths left by an earlier micro-batch (here: set by hand, as short as 2 tokens) must not cut
    this one's groups: the step equals a fresh trainer's."""
    grads = []
    for stale in (False, True):
        model, batch = make_case("seqcls_single", batch_size=6, seed=4)
        batch["attention_mask"][:] = 1
        trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path / str(stale)), report_to="none",
                                                           use_cpu=True, sam_mode="ksam", ksam_selection="top_k_ascent",
                                                           ksam_k=1, sam_rho=0.05, sam_group_size=3))
        if stale:
            trainer._row_lengths = torch.full((6,), 2)
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(batch))
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for got, want in zip(grads[1], grads[0]):
        assert torch.equal(got, want)
