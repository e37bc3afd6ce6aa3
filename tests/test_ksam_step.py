"""One `training_step` of KSAMTrainer against SAM / K-SAM gradients computed here by plain autograd.

The reference never uses ksam_hf's code: examples are ranked by the model's own loss on each
example alone, and the SAM gradient is taken from the model's own loss on the kept examples.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.trainer_pt_utils import LabelSmoother

from ksam_hf import KSAMConfig, KSAMTrainer
from tests.tiny_models import CASES, make_case

LABEL_KEYS = ("labels", "start_positions", "end_positions")


def rows(batch: dict, indices) -> dict:
    index = torch.as_tensor(indices)
    return {k: v.index_select(0, index) for k, v in batch.items()}


def model_loss(model, batch: dict, label_smoothing: float = 0.0, shift: bool = False) -> torch.Tensor:
    """The model's own loss, or the Trainer's LabelSmoother over the model's logits."""
    if not label_smoothing:
        return model(**batch).loss
    outputs = model(**{k: v for k, v in batch.items() if k not in LABEL_KEYS})
    return LabelSmoother(epsilon=label_smoothing)(outputs, batch["labels"], shift_labels=shift)


def ranked_by_own_loss(model, batch: dict, k: int) -> list[int]:
    """The k examples with the highest loss, each evaluated alone by the model."""
    size = next(iter(batch.values())).shape[0]
    with torch.no_grad():
        losses = [float(model(**rows(batch, [i])).loss) for i in range(size)]
    return sorted(sorted(range(size), key=lambda i: -losses[i])[:k])


def reference_sam_gradient(model, batch: dict, rho: float, adaptive: bool = False, **loss_kwargs):
    """SAM by hand: g = grad L(w); e = rho g/||g|| (ASAM: rho w^2 g/||w g||); return grad L(w + e)."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model_loss(model, batch, **loss_kwargs), params, allow_unused=True)
    pairs = [(p, g) for p, g in zip(params, grads) if g is not None]
    if adaptive:
        norm = torch.sqrt(sum(((p * g) ** 2).sum() for p, g in pairs))
        steps = [rho * p * p * g / norm for p, g in pairs]
    else:
        norm = torch.sqrt(sum((g ** 2).sum() for _, g in pairs))
        steps = [rho * g / norm for _, g in pairs]
    with torch.no_grad():
        for (p, _), step in zip(pairs, steps):
            p.add_(step)
    model.zero_grad(set_to_none=True)
    model_loss(model, batch, **loss_kwargs).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def make_trainer(model, tmp_path, **sam) -> KSAMTrainer:
    args = KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **sam)
    return KSAMTrainer(model=model, args=args)


def assert_gradients_equal(model, expected: dict) -> None:
    for name, p in model.named_parameters():
        if expected[name] is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
        else:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def run_step(trainer: KSAMTrainer, model, batch: dict) -> dict:
    """One training step from zero gradients; checks that the weights come back bit for bit."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, dict(batch))
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} left perturbed"
    return before


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mode", ["sam", "ksam"])
def test_step_matches_hand_computed_sam(case, mode, tmp_path):
    model, batch = make_case(case)
    k = 2
    kept = ranked_by_own_loss(model, batch, k) if mode == "ksam" else list(range(6))
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    trainer = make_trainer(model, tmp_path, sam_mode=mode, sam_rho=0.05, ksam_k=k)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("case", ["seqcls_single", "causal_lm", "qa"])
def test_adaptive_step_matches_hand_computed_asam(case, tmp_path):
    model, batch = make_case(case, seed=3)
    kept = ranked_by_own_loss(model, batch, 3)
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.5, adaptive=True)
    trainer = make_trainer(model, tmp_path, sam_mode="ksam", sam_rho=0.5, ksam_k=0.5, sam_adaptive=True)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("case,shift", [("seqcls_single", False), ("token", False), ("causal_lm", True)])
def test_label_smoothing_is_honoured(case, shift, tmp_path):
    model, batch = make_case(case, seed=5)
    expected = reference_sam_gradient(model, batch, rho=0.05, label_smoothing=0.1, shift=shift)
    trainer = make_trainer(model, tmp_path, sam_mode="sam", sam_rho=0.05, label_smoothing_factor=0.1)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


@pytest.mark.parametrize("case", ["seqcls_single", "token", "causal_lm"])
def test_rho_zero_whole_batch_is_the_plain_gradient(case, tmp_path):
    model, batch = make_case(case, seed=2)
    reference = copy.deepcopy(model)
    reference(**batch).loss.backward()
    trainer = make_trainer(model, tmp_path, sam_mode="ksam", sam_rho=0.0, ksam_k=1.0)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, {n: p.grad for n, p in reference.named_parameters()})


def test_k_larger_than_batch_keeps_the_whole_batch(tmp_path):
    model, batch = make_case("seqcls_single", seed=4)
    expected = reference_sam_gradient(model, batch, rho=0.05)
    trainer = make_trainer(model, tmp_path, sam_mode="ksam", ksam_k=100)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


def test_mode_none_is_the_stock_trainer_step(tmp_path):
    from transformers import Trainer, TrainingArguments

    model, batch = make_case("seqcls_single", seed=6)
    stock_model = copy.deepcopy(model)
    stock = Trainer(model=stock_model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none",
                                                               use_cpu=True))
    stock.current_gradient_accumulation_steps = 1  # set by the training loop
    stock_loss = stock.training_step(stock_model, dict(batch))
    trainer = make_trainer(model, tmp_path, sam_mode="none")
    loss = trainer.training_step(model, dict(batch))
    assert torch.equal(loss, stock_loss)
    for (name, p), q in zip(model.named_parameters(), stock_model.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_unlabelled_examples_are_never_kept(tmp_path):
    model, batch = make_case("token", seed=8)
    batch["labels"][[0, 2, 4]] = -100  # three rows with nothing to learn from
    kept = [1, 3, 5]
    expected = reference_sam_gradient(model, rows(batch, kept), rho=0.05)
    trainer = make_trainer(model, tmp_path, sam_mode="ksam", ksam_k=5)
    run_step(trainer, model, batch)
    assert_gradients_equal(model, expected)


def test_logged_loss_is_the_whole_batch_loss(tmp_path):
    model, batch = make_case("causal_lm", seed=9)
    with torch.no_grad():
        full = model(**batch).loss
    trainer = make_trainer(model, tmp_path, sam_mode="ksam", ksam_k=2)
    loss = trainer.training_step(model, dict(batch))
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-6)
    logs = trainer._sam_logs.pop()
    assert logs["sam_kept"] == 2 and logs["sam_ascent_grad_norm"] > 0 and logs["sam_skipped_perturbations"] == 0
    kept = ranked_by_own_loss(model, batch, 2)
    with torch.no_grad():
        kept_loss = float(model(**rows(batch, kept)).loss)
    assert logs["sam_kept_loss"] == pytest.approx(kept_loss, abs=1e-3)


def test_existing_gradients_survive_the_step(tmp_path):
    """A micro-batch's gradient already in p.grad is kept and the new one joins it as a running mean."""
    model, batch = make_case("seqcls_single", seed=10)
    first, second = rows(batch, [0, 1, 2]), rows(batch, [3, 4, 5])
    trainer = make_trainer(model, tmp_path, sam_mode="sam", sam_rho=0.05)
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
def test_ranking_pass_mode_and_train_mode_passes(tmp_path, options, ranking_mode):
    """By default the ranking pass runs in eval mode and picks the top-k of the eval-mode losses;
    `ksam_rank_without_dropout=False` ranks in train mode. Ascent and descent always train."""
    model, batch = make_case("seqcls_single", seed=19)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
    modes = []
    model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer = make_trainer(model, tmp_path, sam_mode="ksam", ksam_k=2, **options)
    model.eval()
    kept = ranked_by_own_loss(model, batch, 2)
    modes.clear()
    chosen = []
    original = trainer._descend
    trainer._descend = lambda m, rows_kept: (chosen.append(rows_kept["input_ids"][:, :3]), original(m, rows_kept))
    trainer.training_step(model, dict(batch))
    assert modes == [ranking_mode, True, True] and model.training
    if not ranking_mode:
        assert torch.equal(chosen[0], batch["input_ids"][kept, :3])
