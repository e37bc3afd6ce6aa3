"""The field's cheap SAMs in KSAMTrainer's step, against arithmetic done here by plain autograd:
random sub-batch ascent, Momentum-SAM, the random-direction control, and the SAM schedules.

The references never call ksam_hf: the subset a step drew is read from its statistics, the first
moment from the optimizer's state, and the random e from the weights the descent pass saw.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from ksam_hf import KSAMTrainer
from ksam_hf.schedule import SamSchedule
from tests.testing_utils import (assert_gradients_equal, make_case, model_loss, perturbed_copy, plain_gradient, rows,
                                 step_logs, weights)
from tests.trainer.test_robustness import N, WeightsAtStepEnd, checkpoint_trainer

RHO = 0.05


@pytest.fixture
def make_trainer(make_config):
    def make(model, **sam) -> KSAMTrainer:
        return KSAMTrainer(model=model, args=make_config(**{"sam_rho": RHO, **sam}))

    return make


def step(trainer: KSAMTrainer, model, batch: dict) -> None:
    """One training step from zero gradients; the weights must come back bit for bit."""
    before = weights(model)
    model.zero_grad(set_to_none=True)
    trainer.training_step(model, dict(batch))
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} left perturbed"


def gradient_at(model, batch: dict, epsilon: dict) -> dict:
    """The gradient of the model's own loss on `batch` at w + epsilon (by name)."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in moved.named_parameters():
            if epsilon.get(name) is not None:
                p.add_(epsilon[name])
    moved.zero_grad(set_to_none=True)
    model_loss(moved, batch).backward()
    return {name: p.grad for name, p in moved.named_parameters()}


class ForwardRecorder:
    """Counts the model's forward calls, and keeps the weights each call saw."""

    def __init__(self, model):
        self.calls, self.seen = 0, []
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.seen.append(weights(module))


# ----------------------------------------------------------------------------- random_ascent
@pytest.mark.parametrize("case", ["seqcls_single", "token", "causal_lm"])
def test_random_ascent_is_the_batch_gradient_at_the_drawn_subsets_ascent(case, make_trainer):
    model, batch = make_case(case, seed=11)
    trainer = make_trainer(model, sam_mode="ksam", ksam_selection="random_ascent", ksam_k=2)
    step(trainer, model, batch)
    drawn = trainer.sam_statistics.last_selected.ascent.tolist()
    assert len(drawn) == 2 and len(set(drawn)) == 2
    moved = perturbed_copy(model, rows(batch, drawn), rho=RHO)  # e = rho g_S / ||g_S||
    model_loss(moved, batch).backward()  # the whole batch at w + e
    assert_gradients_equal(model, {n: p.grad for n, p in moved.named_parameters()})


def test_random_ascent_draws_are_seeded_per_step_and_skip_unlabelled_rows(make_trainer):
    model, batch = make_case("token", seed=12, batch_size=8)
    batch["labels"][[0, 2, 4, 6]] = -100
    def draws(seed: int) -> list[list[int]]:
        trainer = make_trainer(copy.deepcopy(model), sam_mode="ksam", ksam_selection="random_ascent", ksam_k=2,
                               seed=seed)
        drawn = []
        for global_step in range(6):
            trainer.state.global_step = global_step
            step(trainer, trainer.model, batch)
            drawn.append(trainer.sam_statistics.last_selected.ascent.tolist())
        return drawn

    first, again, other = draws(0), draws(0), draws(1)
    assert first == again  # the same seed and steps: the same rows (a resumed run draws them again)
    assert all(set(d) <= {1, 3, 5, 7} and len(d) == 2 for d in first + other)
    assert len({tuple(d) for d in first}) > 1  # the rows change from step to step
    assert first != other


# ----------------------------------------------------------------------------- momentum
def momentum_of(trainer: KSAMTrainer, model, key: str) -> dict:
    return {name: trainer.optimizer.state[p][key].clone() if p in trainer.optimizer.state else None
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("case", ["seqcls_single", "causal_lm"])
def test_momentum_is_the_gradient_against_the_first_moment(case, make_trainer):
    model, batch = make_case(case, seed=13)
    trainer = make_trainer(model, sam_mode="momentum")
    trainer.create_optimizer()
    expected_first = plain_gradient(model, batch)
    step(trainer, model, batch)  # the optimizer has no state yet: a plain step
    assert_gradients_equal(model, expected_first)
    trainer.optimizer.step()
    m = momentum_of(trainer, model, "exp_avg")  # read from the optimizer before the step
    norm = torch.sqrt(sum((v ** 2).sum() for v in m.values() if v is not None))
    epsilon = {name: None if v is None else -RHO * v / norm for name, v in m.items()}
    expected = gradient_at(model, batch, epsilon)
    step(trainer, model, batch)  # the weights come back bit for bit (checked in `step`)
    assert_gradients_equal(model, expected)


def test_momentum_reads_sgds_momentum_buffer_and_warns_once_without_one(make_trainer, caplog):
    model, batch = make_case("seqcls_single", seed=14)
    trainer = make_trainer(model, sam_mode="momentum", optim="sgd", optim_args="momentum=0.9", learning_rate=0.1)
    trainer.create_optimizer()
    step(trainer, model, batch)
    trainer.optimizer.step()
    m = momentum_of(trainer, model, "momentum_buffer")
    norm = torch.sqrt(sum((v ** 2).sum() for v in m.values() if v is not None))
    expected = gradient_at(model, batch, {n: None if v is None else -RHO * v / norm for n, v in m.items()})
    step(trainer, model, batch)
    assert_gradients_equal(model, expected)

    model, batch = make_case("seqcls_single", seed=15)
    plain = make_trainer(model, sam_mode="momentum", optim="sgd", learning_rate=0.1)  # no momentum
    plain.create_optimizer()
    with caplog.at_level(logging.WARNING, logger="ksam_hf.perturbation"):
        for global_step in range(3):
            plain.state.global_step = global_step
            step(plain, model, batch)
            expected = plain_gradient(model, batch)
            assert_gradients_equal(model, expected)
            plain.optimizer.step()
    warnings = [r.getMessage() for r in caplog.records if "keeps no first moment" in r.getMessage()]
    assert len(warnings) == 1 and "SGD" in warnings[0]


# ----------------------------------------------------------------------------- random_direction
def test_random_direction_has_norm_rho_is_seeded_by_step_and_shared_by_micro_batches(make_trainer):
    model, batch = make_case("seqcls_single", seed=16)
    trainer = make_trainer(model, sam_mode="random_direction", gradient_accumulation_steps=2)
    w = weights(model)
    recorder = ForwardRecorder(model)
    step(trainer, model, rows(batch, [0, 1, 2]))  # two micro-batches of one optimizer step (global_step 0)
    step(trainer, model, rows(batch, [3, 4, 5]))
    assert recorder.calls == 2  # one forward per micro-batch
    e1, e2 = ({n: seen[n] - w[n] for n in w} for seen in recorder.seen)
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in e1.values()))
    assert float(norm) == pytest.approx(RHO, rel=1e-4)
    for name in w:
        torch.testing.assert_close(e1[name], e2[name], rtol=0, atol=1e-7)
    # The descent gradient is the micro-batch's gradient at w + e.
    expected = gradient_at(model, rows(batch, [3, 4, 5]), e1)
    assert_gradients_equal(model, expected)
    # Not the gradient's direction: e is a draw, nearly orthogonal to g in this many dimensions.
    g = plain_gradient(model, batch)
    dot = sum((e1[n] * g[n]).sum() for n in w if g[n] is not None)
    g_norm = torch.sqrt(sum((g[n] ** 2).sum() for n in w if g[n] is not None))
    assert abs(float(dot / (norm * g_norm))) < 0.1
    # The next optimizer step draws another e; the same step of another trainer with the seed, the same.
    trainer.state.global_step = 1
    step(trainer, model, rows(batch, [0, 1, 2]))
    e3 = {n: recorder.seen[2][n] - w[n] for n in w}
    assert not torch.allclose(e3["classifier.weight"], e1["classifier.weight"])
    twin = make_trainer(copy.deepcopy(model), sam_mode="random_direction", gradient_accumulation_steps=2)
    twin_recorder = ForwardRecorder(twin.model)
    step(twin, twin.model, rows(batch, [0, 1, 2]))
    for name in w:
        torch.testing.assert_close(twin_recorder.seen[0][name] - w[name], e1[name], rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- passes per micro-batch
@pytest.mark.parametrize("sam, forwards", [
    (dict(sam_mode="ksam", ksam_selection="random_ascent"), 2),
    (dict(sam_mode="momentum"), 1),
    (dict(sam_mode="random_direction"), 1),
    (dict(sam_mode="ksam", ksam_selection="top_k_ascent", sam_every_n_steps=2), 1),  # step 1 of every 2nd: plain
    (dict(sam_mode="sam"), 2),
    (dict(sam_mode="ksam", ksam_selection="top_k_ascent"), 3),
])
def test_forward_calls_per_micro_batch(sam, forwards, make_trainer):
    model, batch = make_case("seqcls_single", seed=17)
    trainer = make_trainer(model, **sam)
    trainer.create_optimizer()
    step(trainer, model, batch)
    trainer.optimizer.step()  # momentum has state from here on
    recorder = ForwardRecorder(model)
    trainer.state.global_step = 2  # optimizer step 3: not a multiple of 2
    step(trainer, model, batch)
    assert recorder.calls == forwards


# ----------------------------------------------------------------------------- schedules
def perturbed_per_step(tmp_path, **sam) -> list[float]:
    trainer = checkpoint_trainer(tmp_path, save_strategy="no", **sam)
    trainer.train()
    return [log["sam_perturbed_share"] for log in step_logs(trainer)]


@pytest.mark.parametrize("sam, expected", [
    (dict(sam_mode="sam", sam_every_n_steps=2), [0, 1, 0, 1, 0, 1]),
    (dict(sam_mode="momentum", sam_every_n_steps=3), [0, 0, 1, 0, 0, 1]),
    (dict(sam_mode="momentum"), [0, 1, 1, 1, 1, 1]),  # no first moment before the first optimizer step
    (dict(sam_mode="ksam", sam_start_fraction=0.5), [0, 0, 0, 1, 1, 1]),
    (dict(sam_mode="random_direction", sam_start_fraction=0.3, sam_every_n_steps=2), [0, 0, 0, 1, 0, 1]),
])
def test_schedules_perturb_exactly_the_steps_they_name_under_accumulation(sam, expected, tmp_path):
    """6 optimizer steps of 2 micro-batches each: a logged share of 0 or 1 per step means both
    micro-batches of the step decided alike. Start 0.3 of 6 steps: 1.8 steps done, so from step 3
    (counted from 1) on; with every 2nd step as well: steps 4 and 6."""
    assert perturbed_per_step(tmp_path, **sam) == expected


def test_a_random_share_of_steps_is_seeded():
    schedule = SamSchedule(step_share=0.3, seed=4)
    decisions = [schedule.perturbs(s, 1000) for s in range(1000)]
    assert decisions == [SamSchedule(step_share=0.3, seed=4).perturbs(s, 1000) for s in range(1000)]
    assert decisions != [SamSchedule(step_share=0.3, seed=5).perturbs(s, 1000) for s in range(1000)]
    assert 250 < sum(decisions) < 350  # binomial(1000, 0.3): mean 300, sd 14.5


# ----------------------------------------------------------------------------- optimizer steps and resume
class WeightsBeforeOptimizerStep(WeightsAtStepEnd):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before = getattr(self, "before", {})
        self.before[state.global_step] = weights(model)


@pytest.mark.parametrize("sam", [dict(sam_mode="momentum"), dict(sam_mode="random_direction"),
                                 dict(sam_mode="ksam", ksam_selection="random_ascent"),
                                 dict(sam_mode="sam", sam_step_share=0.5)])
def test_the_optimizer_steps_from_the_restored_weights(sam, tmp_path):
    """Before each optimizer step the weights are those the previous step ended with: the rule left
    nothing perturbed, so what the step changes is the optimizer's update alone."""
    callback = WeightsBeforeOptimizerStep()
    trainer = checkpoint_trainer(tmp_path, [callback], save_strategy="no", **sam)
    start = weights(trainer.model)
    trainer.train()
    for global_step in range(2 * N):
        reference = start if global_step == 0 else callback.weights[global_step]
        for name, value in callback.before[global_step].items():
            assert torch.equal(value, reference[name]), (global_step, name)


@pytest.mark.parametrize("sam", [dict(sam_mode="momentum"), dict(sam_mode="sam", sam_every_n_steps=2),
                                 dict(sam_mode="ksam", ksam_selection="random_ascent", sam_step_share=0.5),
                                 dict(sam_mode="random_direction", sam_start_fraction=0.4)])
def test_save_and_resume_are_exact(sam, tmp_path):
    straight = checkpoint_trainer(tmp_path / "straight", **sam)
    straight.train()
    interrupted = checkpoint_trainer(tmp_path / "interrupted", [WeightsAtStepEnd(stop_at=N)], **sam)
    interrupted.train()
    resumed = checkpoint_trainer(tmp_path / "interrupted", **sam)
    resumed.train(resume_from_checkpoint=str(tmp_path / "interrupted" / f"checkpoint-{N}"))
    straight_logs, resumed_logs = step_logs(straight), step_logs(resumed)
    assert len(straight_logs) == len(resumed_logs) == 2 * N
    for ours, theirs in zip(resumed_logs, straight_logs):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-6)
        assert ours["sam_perturbed_share"] == theirs["sam_perturbed_share"]
    for (name, p), q in zip(resumed.model.named_parameters(), straight.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------- refused settings
@pytest.mark.parametrize("sam, match", [
    (dict(sam_every_n_steps=0), r"`sam_every_n_steps`=0 must be a whole number >= 1"),
    (dict(sam_every_n_steps=1.5), r"`sam_every_n_steps`=1.5 must be a whole number >= 1"),
    (dict(sam_step_share=0.0), r"`sam_step_share`=0.0 must be a number in \(0, 1\]"),
    (dict(sam_step_share=1.2), r"`sam_step_share`=1.2 must be a number in \(0, 1\]"),
    (dict(sam_start_fraction=1.0), r"`sam_start_fraction`=1.0 must be in \[0, 1\)"),
    (dict(sam_start_fraction=-0.1), r"`sam_start_fraction`=-0.1 must be in \[0, 1\)"),
    (dict(sam_mode="sam", ksam_selection="random_ascent"), r"`ksam_selection`='random_ascent' needs `sam_mode`='ksam'"),
    (dict(ksam_rank_dtype="float16"), r"`ksam_rank_dtype`='float16' is unknown: use one of float32, bfloat16"),
])
def test_bad_schedule_settings_are_refused_in_one_line(sam, match, make_config):
    with pytest.raises(ValueError, match=match):
        make_config(**sam)


# ----------------------------------------------------------------------------- bf16 ranking
def test_bf16_ranking_runs_only_the_ranking_pass_under_autocast(make_trainer, monkeypatch, caplog):
    model, batch = make_case("seqcls_single", seed=18)
    autocast = []
    model.register_forward_pre_hook(lambda module, args: autocast.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    trainer = make_trainer(model, sam_mode="ksam", ksam_selection="top_k_ascent", ksam_rank_dtype="bfloat16")
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    step(trainer, model, batch)
    assert [enabled for enabled, _ in autocast] == [bf16, False, False]  # rank, ascent, descent
    if bf16:
        assert autocast[0][1] == torch.bfloat16
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # a CPU without bf16
    autocast.clear()
    fallback = make_trainer(model, sam_mode="ksam", ksam_selection="top_k_ascent", ksam_rank_dtype="bfloat16")
    with caplog.at_level(logging.WARNING, logger="ksam_hf.trainer"):
        step(fallback, model, batch)
        step(fallback, model, batch)
    assert [enabled for enabled, _ in autocast] == [False] * 6
    assert [r.getMessage() for r in caplog.records if "ksam_rank_dtype" in r.getMessage()] == [
        "ksam_rank_dtype='bfloat16': cpu computes no bf16 here; ranking in float32."]
