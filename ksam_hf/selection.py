"""Which examples of a batch K-SAM ascends and descends on: the selection rules, and adaptive k.

A rule sees the batch's per-example losses from the ranking pass (or, if it needs no ranking,
only which examples have labels) and returns the rows of the
ascent pass, the rows of the descent pass, and how the descent combines their losses. A new rule
is a subclass of `SelectionRule` registered in `SELECTION_RULES`; the training step does not change.

Why more than the paper's rule: descending on the k highest losses of every batch minimises the
mean of the largest losses (a CVaR objective), not the mean loss. For a classifier that cannot yet
fit the hardest quarter of its data with margin, that objective is minimised by predicting the
uniform distribution for every input, and fine-tuning stalls there (`docs/selection.md`).
`loss_sampled` keeps the focus on high losses but descends on an unbiased estimate of the batch's
mean loss, so the objective stays the one the base optimizer minimises.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Ranking:
    """What the ranking pass measured, on the CPU: each example's mean loss over its items
    (`scores`) and its number of items (`counts`: tokens with a label, or 1; 0 = nothing to learn)."""

    scores: torch.Tensor
    counts: torch.Tensor

    @property
    def labelled(self) -> torch.Tensor:
        return self.counts > 0


@dataclass(frozen=True)
class Selected:
    """The rows (batch order) of each pass, and the descent's reduction.

    The descent loss is `sum_i descent_weights[i] * loss_sum_i / descent_items` over the descent
    rows, with weights of one when `descent_weights` is None and, when `descent_items` is None, the
    descent rows' own item count (their mean loss). With inverse inclusion probabilities and the
    whole batch's item count, it is an unbiased estimate of the batch's mean loss. `whole_batch`:
    both passes run on the micro-batch as it is (no selection rule: SAM, momentum, the control);
    its row indices are then not read. No ascent row: nothing in the micro-batch has a label.
    """

    ascent: torch.Tensor
    descent: torch.Tensor
    descent_weights: Optional[torch.Tensor] = None
    descent_items: Optional[float] = None
    whole_batch: bool = False

    @classmethod
    def everything(cls) -> "Selected":
        """Both passes on the whole micro-batch, unweighted."""
        return cls(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), whole_batch=True)

    @classmethod
    def nothing(cls) -> "Selected":
        """A micro-batch without a labelled example."""
        return cls(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))

    @property
    def empty(self) -> bool:
        return not self.whole_batch and self.ascent.numel() == 0


class SelectionRule(ABC):
    """Decides, from a batch's `Ranking`, the rows of the ascent and descent passes (see `Selected`).

    `needs_ranking`: whether the rule reads the losses, i.e. the step runs a ranking pass; without it
    the `Ranking` holds the label counts only (scores of zero). `seeded_by_step`: whether the step
    passes a generator seeded by the run's seed, the optimizer step, the micro-batch and the process
    (draws that a resumed run repeats); otherwise the rule draws from torch's global generator."""

    needs_ranking: bool = True
    seeded_by_step: bool = False

    @abstractmethod
    def select(self, ranking: Ranking, k: int, generator: Optional[torch.Generator] = None) -> Selected:
        """`k` is at most the number of labelled examples, and at least one."""


def top_k_indices(scores: torch.Tensor, counts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (in batch order) of the `k` highest `scores` among examples with `counts > 0`."""
    valid = counts > 0
    lowest = torch.finfo(torch.float32).min  # a NaN loss ranks last among the labelled, above the unlabelled
    ranked = torch.where(valid, scores.float().nan_to_num(nan=lowest, neginf=lowest), float("-inf"))
    k = min(k, int(valid.sum()))
    return torch.topk(ranked, k, sorted=False).indices.sort().values


class TopK(SelectionRule):
    """The paper's rule: ascent and descent on the k highest losses, descent = their mean loss.

    Minimises the mean of the k largest losses of each batch, not the mean loss: on classification
    fine-tuning it can hold the model at the uniform predictor (`docs/selection.md`).
    """

    def select(self, ranking: Ranking, k: int, generator: Optional[torch.Generator] = None) -> Selected:
        kept = top_k_indices(ranking.scores, ranking.counts, k)
        return Selected(kept, kept)


def inclusion_probabilities(scores: torch.Tensor, k: int, uniform_mix: float) -> torch.Tensor:
    """Probabilities `pi` (summing to `k`, each at most 1) of keeping each example, increasing with
    its score: `pi_i = min(1, c * p_i)` with `p_i = (1 - uniform_mix) * s_i / sum(s) + uniform_mix / n`.

    `uniform_mix` bounds the importance weights `1 / pi` at `n / (uniform_mix * k)` (0, loss alone, is
    computed here but refused by `LossSampled`: a zero-loss example would never be drawn).
    Computed in float64; `scores` must be non-negative and finite.
    """
    scores = scores.double().clamp_min(0)
    n = scores.numel()
    total = float(scores.sum())
    shares = scores / total if total > 0 else torch.full_like(scores, 1.0 / n)
    p = (1.0 - uniform_mix) * shares + uniform_mix / n
    pi = k * p
    capped = torch.zeros(n, dtype=torch.bool)
    while bool((pi > 1).any()):  # cap at 1 and spread what is left over the others, until none exceed 1
        capped |= pi >= 1
        rest = p.masked_fill(capped, 0.0)
        pi = torch.where(capped, 1.0, (k - int(capped.sum())) * rest / rest.sum())
    return pi


def systematic_sample(pi: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Exactly `sum(pi)` distinct indices, index i kept with probability exactly `pi[i]`.

    Systematic sampling with unequal probabilities (Madow 1949) over a random order: lay the
    `pi` end to end on [0, k) and keep the items under the points u, u + 1, ..., u + k - 1 for one
    uniform u. Returns the indices sorted.
    """
    n = pi.numel()
    order = torch.randperm(n, generator=generator)
    edges = torch.cumsum(pi[order], 0)
    k = round(float(edges[-1]))
    edges = edges * (k / float(edges[-1]))  # exactly k at the end, so exactly k points fall inside
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    points = u + torch.arange(k, dtype=torch.float64)
    hits = torch.searchsorted(edges, points, right=True)
    return order[hits].sort().values


class LossSampled(SelectionRule):
    """Sample k examples with probability increasing with their loss; ascend on them as they are
    (the perturbation looks where the loss is high), descend on their losses weighted by
    `1 / pi_i` over the whole batch's item count: an unbiased estimate of the batch's mean loss
    (Horvitz-Thompson), so the step minimises the same objective as the base optimizer.

    Inclusion probabilities: `inclusion_probabilities`; `uniform_mix=1` is uniform sampling (SAM on
    a random k); it must be above 0, or an example with zero loss could never be drawn.
    """

    def __init__(self, uniform_mix: float = 0.5):
        if not 0 < uniform_mix <= 1:
            raise ValueError(f"`uniform_mix`={uniform_mix!r} must be in (0, 1] (e.g. 0.5): at 0 an example with "
                             "zero loss could never be drawn.")
        self.uniform_mix = uniform_mix

    def select(self, ranking: Ranking, k: int, generator: Optional[torch.Generator] = None) -> Selected:
        labelled = ranking.labelled.nonzero().view(-1)
        scores = ranking.scores[labelled].float().nan_to_num(nan=0.0, posinf=0.0)
        pi = inclusion_probabilities(scores, k, self.uniform_mix)
        picked = systematic_sample(pi, generator)
        kept = labelled[picked]
        weights = (1.0 / pi[picked]).float()
        return Selected(kept, kept, weights, float(ranking.counts[labelled].sum()))


class TopKAscent(SelectionRule):
    """The ascent on the k highest losses (where the loss is sharpest), the descent on the whole
    batch at w + e: SAM's objective, with a perturbation that costs k examples instead of B. The
    step costs more than the base optimizer's (a full forward + backward plus the ranking pass and
    the ascent on k), less than SAM's."""

    def select(self, ranking: Ranking, k: int, generator: Optional[torch.Generator] = None) -> Selected:
        return Selected(top_k_indices(ranking.scores, ranking.counts, k), ranking.labelled.nonzero().view(-1))


class RandomAscent(SelectionRule):
    """The ascent on k labelled examples drawn uniformly at random, the descent on the whole batch at
    w + e: the sub-batch ascent of Brock et al. 2021 (used by Bahri et al. 2022 on T5), with no ranking
    pass. At most (1 + k / B) forward and backward passes."""

    needs_ranking = False
    seeded_by_step = True

    def select(self, ranking: Ranking, k: int, generator: Optional[torch.Generator] = None) -> Selected:
        labelled = ranking.labelled.nonzero().view(-1)
        drawn = labelled[torch.randperm(labelled.numel(), generator=generator)[:k]]
        return Selected(drawn.sort().values, labelled)


SELECTION_RULES = {"loss_sampled": LossSampled, "top_k": TopK, "top_k_ascent": TopKAscent,
                   "random_ascent": RandomAscent}
"""`ksam_selection` -> rule class (built with `uniform_mix=ksam_uniform_mix` where it takes one)."""


def selection_rule(name: str, uniform_mix: float) -> SelectionRule:
    rule = SELECTION_RULES[name]
    return rule(uniform_mix) if rule is LossSampled else rule()


def resolve_k(ksam_k: float, batch_size: int) -> int:
    """Examples kept from a batch of `batch_size`: `ksam_k` below 1 is a fraction (rounded up, so at
    least one), 1 and above a count (a count above a short last batch keeps all of it)."""
    k = math.ceil(ksam_k * batch_size - 1e-9) if ksam_k < 1 else int(ksam_k)
    return max(1, min(k, batch_size))


def adaptive_k(ranking: Ranking, loss_share: float, floor: int) -> int:
    """How many labelled examples, taken in the rules' order (highest per-example loss first), carry
    `loss_share` of the batch's total loss, and at least `floor`: a batch whose loss sits in a few
    examples keeps few, a flat one keeps many. An example carries its loss summed over its items
    (tokens), as the batch's total does; one loss per example: the fewest that carry the share."""
    labelled = ranking.labelled
    scores = ranking.scores.double().nan_to_num(nan=0.0).clamp_min(0)[labelled]
    losses = scores * ranking.counts.double()[labelled]
    n = losses.numel()
    total = float(losses.sum())
    if n == 0 or total <= 0:
        return max(1, min(floor, n))
    carried = torch.cumsum(losses[scores.argsort(descending=True, stable=True)], 0)
    needed = int((carried < loss_share * total * (1 - 1e-9)).sum()) + 1
    return max(1, min(max(needed, floor), n))
