"""What one step of each `sam_mode` does: the rows of its passes and where its perturbation comes from.

A `StepRule` pairs a selection rule (None: the whole batch in both passes, no ranking) with a
`Direction`. The training step runs whatever its rule declares, with no branch per mode: a ranking
pass if the selection needs one, an ascent pass if the direction needs one, the descent at w + e.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .perturbation import AscentGradient, Direction, NoPerturbation, OptimizerMomentum, RandomDirection
from .selection import SelectionRule


@dataclass(frozen=True)
class StepRule:
    """`rows`: the selection rule (None: the whole batch); `direction`: the source of e."""

    rows: Optional[SelectionRule]
    direction: Direction

    @property
    def needs_ranking(self) -> bool:
        return self.rows is not None and self.rows.needs_ranking


PLAIN_STEP = StepRule(None, NoPerturbation())
"""A step the SAM schedule leaves unperturbed: one forward and backward on the whole batch."""


def step_rule(sam_mode: str, selection: SelectionRule) -> StepRule:
    """The rule of a perturbing `sam_mode` (`selection`: K-SAM's, from `ksam_selection`)."""
    rules = {"sam": lambda: StepRule(None, AscentGradient()),
             "ksam": lambda: StepRule(selection, AscentGradient()),
             "momentum": lambda: StepRule(None, OptimizerMomentum()),
             "random_direction": lambda: StepRule(None, RandomDirection())}
    return rules[sam_mode]()
