"""The selection rules' arithmetic against values worked out by hand."""

from __future__ import annotations

import pytest
import torch

from ksam_hf.selection import (LossSampled, Ranking, TopK, adaptive_k, inclusion_probabilities, systematic_sample,
                               top_k_indices)


def test_inclusion_probabilities_by_hand():
    # p = 0.5 * s / 10 + 0.5 / 4 = [0.175, 0.225, 0.275, 0.325]; pi = 2 p
    pi = inclusion_probabilities(torch.tensor([1.0, 2.0, 3.0, 4.0]), k=2, uniform_mix=0.5)
    torch.testing.assert_close(pi, torch.tensor([0.35, 0.45, 0.55, 0.65], dtype=torch.float64))


def test_inclusion_probabilities_are_capped_at_one_and_the_rest_respread():
    # p = [0.125, 0.125, 0.125, 0.625]; 2 p exceeds 1 for the last: it is kept surely, and the one
    # remaining draw is spread over the others in proportion to p (1/3 each).
    pi = inclusion_probabilities(torch.tensor([0.0, 0.0, 0.0, 10.0]), k=2, uniform_mix=0.5)
    torch.testing.assert_close(pi, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.float64))
    # Two rounds of capping: p = [0.05, 0.05, 0.45, 0.45] at mix 0.2 -> 3 p = [.15, .15, 1.35, 1.35].
    pi = inclusion_probabilities(torch.tensor([0.0, 0.0, 1.0, 1.0]), k=3, uniform_mix=0.2)
    torch.testing.assert_close(pi, torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("mix,expected", [(1.0, [0.5, 0.5, 0.5, 0.5]), (0.0, [0.0, 0.4, 0.8, 0.8])])
def test_uniform_mix_one_is_uniform_and_zero_follows_the_loss_alone(mix, expected):
    # mix 0: pi = 2 * s / 5 = [0, 0.4, 0.8, 0.8]
    pi = inclusion_probabilities(torch.tensor([0.0, 1.0, 2.0, 2.0]), k=2, uniform_mix=mix)
    torch.testing.assert_close(pi, torch.tensor(expected, dtype=torch.float64))


def test_loss_sampled_refuses_a_zero_uniform_mix():
    # At 0, scores [1, 0, 0, 0] and k = 2 would leave one draw for three examples of probability 0.
    with pytest.raises(ValueError, match="uniform_mix"):
        LossSampled(uniform_mix=0.0)


def test_systematic_sample_keeps_exactly_k_with_the_given_probabilities():
    pi = torch.tensor([0.1, 0.9, 0.5, 0.5, 1.0, 0.0], dtype=torch.float64)  # sums to 3
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(6)
    for _ in range(draws):
        kept = systematic_sample(pi, generator)
        assert kept.numel() == 3 and kept.unique().numel() == 3 and torch.equal(kept, kept.sort().values)
        counts[kept] += 1
    frequency = counts / draws
    standard_error = (pi * (1 - pi) / draws).sqrt().float()
    assert torch.all((frequency - pi.float()).abs() <= 4 * standard_error + 1e-9), frequency
    assert frequency[4] == 1 and frequency[5] == 0


def test_loss_sampled_weights_are_inverse_probabilities_over_the_batch_items():
    """Scores [1, 2, 3, 4] (one item each) and one unlabelled row: pi over the labelled four as in
    the by-hand test; the descent divides by the labelled items (4), so sum(w_i l_i) / 4 estimates
    the mean loss."""
    ranking = Ranking(torch.tensor([1.0, 2.0, 9.0, 3.0, 4.0]), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    selected = LossSampled(uniform_mix=0.5).select(ranking, 2, torch.Generator().manual_seed(3))
    pi = {0: 0.35, 1: 0.45, 3: 0.55, 4: 0.65}
    kept = selected.ascent.tolist()
    assert len(kept) == 2 and 2 not in kept and selected.descent.tolist() == kept
    torch.testing.assert_close(selected.descent_weights, torch.tensor([1 / pi[i] for i in kept]))
    assert selected.descent_items == 4.0


def test_top_k_keeps_the_highest_labelled_losses_with_their_mean():
    ranking = Ranking(torch.tensor([0.5, float("nan"), 3.0, 2.0, 9.0]), torch.tensor([2.0, 1.0, 3.0, 1.0, 0.0]))
    selected = TopK().select(ranking, 2)
    assert selected.ascent.tolist() == [2, 3] and selected.descent_weights is None
    assert selected.descent_items is None  # the mean over the kept rows' own items
    assert top_k_indices(ranking.scores, ranking.counts, 10).tolist() == [0, 1, 2, 3]  # NaN last, unlabelled never


@pytest.mark.parametrize("losses,share,floor,expected", [
    ([4.0, 3.0, 2.0, 1.0], 0.5, 1, 2),  # 4 + 3 = 7 >= 5
    ([4.0, 3.0, 2.0, 1.0], 0.4, 1, 1),  # 4 >= 4
    ([4.0, 3.0, 2.0, 1.0], 1.0, 1, 4),
    ([4.0, 3.0, 2.0, 1.0], 0.5, 3, 3),  # the floor
    ([1.0, 1.0, 1.0, 1.0], 0.5, 1, 2),
    ([0.0, 0.0, 0.0, 0.0], 0.5, 2, 2),  # nothing to carry: the floor
])
def test_adaptive_k_by_hand(losses, share, floor, expected):
    ranking = Ranking(torch.tensor(losses), torch.ones(len(losses)))
    assert adaptive_k(ranking, share, floor) == expected


@pytest.mark.parametrize("means,tokens,expected", [
    # Mean losses [1, 2] over [6, 1] tokens: sums [6, 2], total 8. The rules keep the highest mean
    # first: row 1 carries 2 < 4, so both are needed (row 0 alone would carry 6, but top-k keeps row 1).
    ([1.0, 2.0], [6.0, 1.0], 2),
    # Row 0 (mean 1, sum 1), then row 1 (mean 0.5 over 100 tokens, sum 50): half of 51 needs both.
    ([1.0, 0.5], [1.0, 100.0], 2),
    # Means [3, 1, 1] over [4, 1, 1] tokens: sums [12, 1, 1]; row 0 carries 12 >= 7: one example.
    ([3.0, 1.0, 1.0], [4.0, 1.0, 1.0], 1),
])
def test_adaptive_k_sums_token_losses_in_the_order_the_rules_keep(means, tokens, expected):
    ranking = Ranking(torch.tensor(means), torch.tensor(tokens))
    k = adaptive_k(ranking, 0.5, 1)
    assert k == expected
    kept = TopK().select(ranking, k).ascent
    sums = ranking.scores * ranking.counts
    assert float(sums[kept].sum()) >= 0.5 * float(sums.sum())  # what top-k keeps carries the share


def test_top_k_ascent_descends_on_every_labelled_example():
    ranking = Ranking(torch.tensor([0.5, 9.0, 3.0, 2.0]), torch.tensor([2.0, 0.0, 3.0, 1.0]))
    from ksam_hf.selection import TopKAscent

    selected = TopKAscent().select(ranking, 1)
    assert selected.ascent.tolist() == [2] and selected.descent.tolist() == [0, 2, 3]
    assert selected.descent_weights is None and selected.descent_items is None  # the mean over the batch
