"""`watch_column`: a per-example column the model does not take (e.g. whether a label was flipped),
kept in the batches and logged as its mean over the examples a selection rule keeps.

The reference ranks the examples by the model's own loss on each alone (`ranked_by_own_loss`),
without ksam_hf, and takes the column's mean over those rows by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ksam_hf import KSAMTrainer
from tests.testing_utils import as_dataset, make_case, ranked_by_own_loss, step_logs

FLIPPED = torch.tensor([1, 0, 1, 0, 0, 1])


@pytest.mark.parametrize("selection", ["top_k_ascent", "top_k"])
def test_the_logged_share_is_the_columns_mean_over_the_top_k(selection, make_config):
    model, batch = make_case("seqcls_single", batch_size=6, seed=3)
    at_start = copy.deepcopy(model)
    data = as_dataset({**batch, "flipped": FLIPPED})
    trainer = KSAMTrainer(model=model, watch_column="flipped", train_dataset=data, eval_dataset=data,
                          args=make_config(sam_mode="ksam", ksam_selection=selection, ksam_k=2, max_steps=1,
                                           per_device_train_batch_size=6, per_device_eval_batch_size=6))
    trainer.train()  # one batch holding the whole dataset, whatever the sampler's order
    kept = ranked_by_own_loss(at_start, batch, 2)
    (log,) = step_logs(trainer)
    assert log["sam_kept_flipped"] == pytest.approx(float(FLIPPED[kept].float().mean()), abs=1e-4)
    assert log["sam_batch_flipped"] == pytest.approx(0.5, abs=1e-4)
    assert "eval_loss" in trainer.evaluate()  # evaluation leaves the column out of the model's inputs too


def test_a_plain_step_trains_with_the_column_and_logs_no_share(make_config):
    model, batch = make_case("seqcls_single", batch_size=6, seed=3)
    trainer = KSAMTrainer(model=model, watch_column="flipped", train_dataset=as_dataset({**batch, "flipped": FLIPPED}),
                          args=make_config(sam_mode="none", max_steps=1, per_device_train_batch_size=6))
    trainer.train()
    (log,) = step_logs(trainer)
    assert not any(key.endswith("_flipped") for key in log)


def test_a_column_that_is_not_one_number_per_example_is_refused(make_config):
    model, batch = make_case("seqcls_single", batch_size=6, seed=3)
    trainer = KSAMTrainer(model=model, watch_column="flipped",
                          args=make_config(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=2))
    with pytest.raises(ValueError, match=r"`watch_column`='flipped' must hold one number per example .*\(6, 2\)"):
        trainer.training_step(model, {**batch, "flipped": torch.zeros(6, 2)})
