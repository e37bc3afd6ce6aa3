"""One `training_step` of KSAMTrainer against SAM / K-SAM gradients computed here by plain autograd.

The references never use ksam_hf's code: examples are ranked by the model's own loss on each
example alone, the SAM gradient is taken from the model's own loss on the kept examples, and the
importance weights of `loss_sampled` are computed here from those losses.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ksam_hf import KSAMTrainer
from tests.testing_utils import (CASES, assert_gradients_equal, make_case, model_loss, own_losses, perturbed_copy,
                                 ranked_by_own_loss, reference_sam_gradient, rows)


@pytest.fixture
def make_trainer(make_config):
    def make(model, **sam) -> KSAMTrainer:
        return KSAMTrainer(model=model, args=make_config(**sam))

    return make


def run_step(trainer: KSAMTrainer, model, batch: dict) -> None:
    """One training step from zero gradients; checks that the weights come back bit for bit."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, dict(batch))
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} left perturbed"


def items_of(case: str, batch: dict) -> list[float]:
    """Each example's number of loss items, counted here from its labels."""
    labels = batch["labels"]
    if case == "causal_lm":
        labels = labels[:, 1:]
    if labels.dim() == 1:
        return [float(label != -100) for label in labels]
    return [float(row.ne(-100).sum()) for row in labels]


# ----------------------------------------------------------------------------- the paper's top-k, and SAM
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["sam", "ksam"])
def test_step_matches_hand_computed_sam(case, mode, make_trainer):
    model, batch = make_case(case)
    k = 2
    kept = ranked_by_own_loss(model, batch, k) if mode == "ksam" else list(range(6))
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    trainer = make_trainer(model, sam_mode=mode, sam_rho=0.05, ksam_k=k, ksam_selection="top_k")
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("case", ["seqcls_single", "causal_lm", "qa"])
def test_adaptive_step_matches_hand_computed_asam(case, make_trainer):
    model, batch = make_case(case, seed=3)
    kept = ranked_by_own_loss(model, batch, 3)
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.5, adaptive=True)
    trainer = make_trainer(model, sam_mode="ksam", sam_rho=0.5, ksam_k=0.5, sam_adaptive=True, ksam_selection="top_k")
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("case,shift", [("seqcls_single", False), ("token", False), ("causal_lm", True)])
def test_label_smoothing_is_honoured(case, shift, make_trainer):
    model, batch = make_case(case, seed=5)
    expected = reference_sam_gradient(model, batch, rho=0.05, label_smoothing=0.1, shift=shift)
    trainer = make_trainer(model, sam_mode="sam", sam_rho=0.05, label_smoothing_factor=0.1)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("selection", ["top_k", "loss_sampled"])
@pytest.mark.parametrize("case", ["seqcls_single", "token", "causal_lm"])
def test_rho_zero_whole_batch_is_the_plain_gradient(case, selection, make_trainer):
    """k = the whole batch (a count of 6): both rules keep every example with weight one."""
    model, batch = make_case(case, seed=2)
    reference = copy.deepcopy(model)
    reference(**batch).loss.backward()
    trainer = make_trainer(model, sam_mode="ksam", sam_rho=0.0, ksam_k=6, ksam_selection=selection)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, {n: p.grad for n, p in reference.named_parameters()})


def test_k_larger_than_batch_keeps_the_whole_batch(make_trainer):
    model, batch = make_case("seqcls_single", seed=4)
    expected = reference_sam_gradient(model, batch, rho=0.05)
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=100)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


def test_mode_none_is_the_stock_trainer_step(make_trainer, tmp_path):
    from transformers import Trainer, TrainingArguments

    model, batch = make_case("seqcls_single", seed=6)
    stock_model = copy.deepcopy(model)
    stock = Trainer(model=stock_model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                               use_cpu=True))
    stock.current_gradient_accumulation_steps = 1  # set by the training loop
    stock_loss = stock.training_step(stock_model, dict(batch))
    trainer = make_trainer(model, sam_mode="none")
    loss = trainer.training_step(model, dict(batch))
    assert torch.equal(loss, stock_loss)
    for (name, p), q in zip(model.named_parameters(), stock_model.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("selection", ["top_k", "loss_sampled"])
def test_unlabelled_examples_are_never_kept(selection, make_trainer):
    model, batch = make_case("token", seed=8)
    batch["labels"][[0, 2, 4]] = -100  # three rows with nothing to learn from
    kept = [1, 3, 5]  # k = 5 > 3 labelled: all of them, each with inclusion probability 1
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=5, ksam_selection=selection)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)
    assert trainer.sam_statistics.last_selected.ascent.tolist() == kept


def test_logged_loss_is_the_whole_batch_loss(make_trainer):
    model, batch = make_case("causal_lm", seed=9)
    with torch.no_grad():
        full = model(**batch).loss
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=2, ksam_selection="top_k")
    loss = trainer.training_step(model, dict(batch))
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    logs = trainer.sam_statistics.pop()
    assert logs["sam_kept"] == 2 and logs["sam_ascent_grad_norm"] > 0 and logs["sam_skipped_perturbations"] == 0
    assert "sam_mean_max_prob" not in logs  # a language model: no single-label confidence
    kept = ranked_by_own_loss(model, batch, 2)
    with torch.no_grad():
        kept_loss = float(model(**rows(batch, kept)).loss)
    assert logs["sam_kept_loss"] == pytest.approx(kept_loss, abs=1e-3)


@pytest.mark.parametrize("mode", ["ksam", "sam"])
def test_confidence_of_a_classifier_is_logged(mode, make_trainer):
    """`sam_mean_max_prob`: the mean top-class probability over the batch at w (softmax by hand)."""
    model, batch = make_case("seqcls_single", seed=41)
    with torch.no_grad():
        probabilities = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.softmax(-1)
    trainer = make_trainer(model, sam_mode=mode, ksam_k=2)
    trainer.training_step(model, dict(batch))
    assert trainer.sam_statistics.pop()["sam_mean_max_prob"] == pytest.approx(
        float(probabilities.max(-1).values.mean()), abs=1e-4)


def test_no_confidence_is_logged_for_float_labels_or_unlabelled_batches(make_trainer):
    """Float labels with `problem_type` unset make a classifier multi-label (as Transformers' loss
    decides): its softmax top class means nothing. A micro-batch without labels adds nothing."""
    for mode in ("ksam", "sam"):
        model, batch = make_case("seqcls_multi", seed=42)
        assert model.config.problem_type is None
        trainer = make_trainer(model, sam_mode=mode, ksam_k=2)
        trainer.training_step(model, dict(batch))
        assert "sam_mean_max_prob" not in trainer.sam_statistics.pop(), mode

    model, batch = make_case("seqcls_single", seed=43)
    with torch.no_grad():
        probabilities = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.softmax(-1)
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=2, sam_rho=0.0, learning_rate=0.0)
    trainer.training_step(model, dict(batch))
    trainer.training_step(model, {**batch, "labels": torch.full_like(batch["labels"], -100)})
    assert trainer.sam_statistics.pop()["sam_mean_max_prob"] == pytest.approx(
        float(probabilities.max(-1).values.mean()), abs=1e-4)  # the labelled batch's alone


def test_existing_gradients_survive_the_step(make_trainer):
    """A micro-batch's gradient already in p.grad is kept and the new one joins it as a running mean."""
    model, batch = make_case("seqcls_single", seed=10)
    first, second = rows(batch, [0, 1, 2]), rows(batch, [3, 4, 5])
    trainer = make_trainer(model, sam_mode="sam", sam_rho=0.05)
    g1 = reference_sam_gradient(model, first, rho=0.05)
    g2 = reference_sam_gradient(model, second, rho=0.05)
    model.zero_grad(set_to_none=True)
    trainer.accelerator.gradient_state._set_sync_gradients(False)
    trainer.training_step(model, dict(first))
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.training_step(model, dict(second))
    assert_gradients_equal(model, {n: None if g1[n] is None else (g1[n] + g2[n]) / 2 for n in g1})


@pytest.mark.parametrize("options, ranking_mode", [({}, False), ({"ksam_rank_without_dropout": False}, True)],
                         ids=["default-eval-mode", "paper-train-mode"])
def test_ranking_pass_mode_and_train_mode_passes(make_trainer, options, ranking_mode):
    """By default the ranking pass runs in eval mode and picks the top-k of the eval-mode losses;
    `ksam_rank_without_dropout=False` ranks in train mode. Ascent and descent always train."""
    model, batch = make_case("seqcls_single", seed=19)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=2, ksam_selection="top_k", **options)
    model.eval()
    kept = ranked_by_own_loss(model, batch, 2)
    modes.clear()
    trainer.training_step(model, dict(batch))
    assert modes == [ranking_mode, True, True] and model.training
    if not ranking_mode:
        assert trainer.sam_statistics.last_selected.ascent.tolist() == kept


@pytest.mark.parametrize("case", ["seqcls_single", "token", "causal_lm"])
def test_top_k_ascent_perturbs_with_the_top_k_and_descends_on_the_batch(case, make_trainer):
    """`top_k_ascent`: e from the k highest losses' gradient, then the whole batch's gradient at w + e."""
    model, batch = make_case(case, seed=72)
    kept = ranked_by_own_loss(model, batch, 2)
    moved = perturbed_copy(model, rows(batch, kept), rho=0.05)
    model_loss(moved, batch).backward()
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=2, ksam_selection="top_k_ascent")
    run_step(trainer, model, batch)
    assert_gradients_equal(model, {n: p.grad for n, p in moved.named_parameters()})


# ----------------------------------------------------------------------------- loss_sampled
def hand_inclusion_probabilities(losses: list[float], k: int, uniform_mix: float) -> list[float]:
    """pi_i = k * ((1 - mix) * l_i / sum(l) + mix / n), for batches where none exceeds 1."""
    n, total = len(losses), sum(losses)
    pi = [k * ((1 - uniform_mix) * loss / total + uniform_mix / n) for loss in losses]
    assert max(pi) < 1, "choose a batch without capped probabilities"
    return pi


@pytest.mark.parametrize("case", ["seqcls_single", "token", "causal_lm", "multiple_choice"])
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_sampled_step_is_the_importance_weighted_sam_gradient(case, seed, make_trainer):
    """Ascent: the mean loss of the sampled rows; descent at w + e: sum over the sampled rows of
    (loss sum / pi) over the whole batch's items. pi from the model's own per-example losses."""
    model, batch = make_case(case, batch_size=8, seed=60 + seed)
    k, mix, rho = 3, 0.5, 0.05
    items = items_of(case, batch)
    pi = hand_inclusion_probabilities(own_losses(model, batch), k, mix)
    trainer = make_trainer(model, sam_mode="ksam", sam_rho=rho, ksam_k=k, ksam_selection="loss_sampled",
                           ksam_uniform_mix=mix)
    torch.manual_seed(seed)
    run_step(trainer, model, batch)
    selected = trainer.sam_statistics.last_selected
    kept = selected.ascent.tolist()
    assert len(kept) == k == len(set(kept)) and selected.descent.tolist() == kept
    torch.testing.assert_close(selected.descent_weights, torch.tensor([1 / pi[i] for i in kept]), rtol=1e-5, atol=0)

    moved = perturbed_copy(model, rows(batch, kept), rho)
    estimate = sum(model_loss(moved, rows(batch, [i])) * items[i] / pi[i] for i in kept) / sum(items)
    estimate.backward()
    assert_gradients_equal(model, {n: p.grad for n, p in moved.named_parameters()})


def test_loss_sampled_descent_is_unbiased_over_draws(make_trainer):
    """Averaged over every draw, the descent (rho = 0) is the gradient of the batch's mean loss.

    The sampling is exact given the random order and the uniform start, so the mean over many draws
    must approach the full-batch gradient within the Monte-Carlo error."""
    model, batch = make_case("seqcls_single", batch_size=8, seed=70)
    full = copy.deepcopy(model)
    full(**batch).loss.backward()
    expected = torch.cat([p.grad.view(-1) for p in full.parameters() if p.grad is not None])
    trainer = make_trainer(model, sam_mode="ksam", sam_rho=0.0, ksam_k=2, ksam_selection="loss_sampled")
    torch.manual_seed(0)
    draws = []
    for _ in range(400):
        model.zero_grad(set_to_none=True)
        trainer.training_step(model, dict(batch))
        draws.append(torch.cat([p.grad.view(-1) for p in model.parameters() if p.grad is not None]))
    draws = torch.stack(draws)
    error = (draws.mean(0) - expected).norm() / expected.norm()
    spread = draws.std(0).norm() / expected.norm() / 400 ** 0.5  # standard error of the mean, relative
    assert error < 4 * spread, (float(error), float(spread))
    assert spread < 0.5  # the check has power: the Monte-Carlo error is well below the gradient


def test_adaptive_k_keeps_the_fewest_carrying_the_loss_share(make_trainer):
    """`ksam_loss_share`: k is the fewest examples whose losses sum to the share, at least `ksam_k`."""
    model, batch = make_case("seqcls_single", batch_size=8, seed=71)
    losses = sorted(own_losses(model, batch), reverse=True)
    share = 0.6
    expected_k = next(n for n in range(1, 9) if sum(losses[:n]) >= share * sum(losses))
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=1, ksam_loss_share=share, ksam_selection="top_k")
    trainer.training_step(model, dict(batch))
    assert len(trainer.sam_statistics.last_selected.ascent) == expected_k
    trainer = make_trainer(model, sam_mode="ksam", ksam_k=7, ksam_loss_share=share, ksam_selection="top_k")
    trainer.training_step(model, dict(batch))
    assert len(trainer.sam_statistics.last_selected.ascent) == max(7, expected_k)
