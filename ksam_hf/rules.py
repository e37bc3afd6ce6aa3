"""The step modes (`sam_mode`): the one registry from which `KSAMConfig`'s choices, `run_glue.py
--optimizer` and the studies' methods are built.

A `StepRule` pairs a selection rule (None: the whole batch in both passes, no ranking) with a
`Direction`. The training step runs whatever its rule declares, with no branch per mode: a ranking
pass if the selection needs one, an ascent pass if the direction needs one, the descent at w + e.
A new mode is one `StepMode` in `STEP_MODES`.
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


@dataclass(frozen=True)
class StepMode:
    """One `sam_mode`: its one-line description, where its e comes from (None: the stock Trainer
    step), whether `ksam_selection` picks its rows, and whether it is a LoRA method (`lora`: the
    stock step with the hooks of `ksam_hf.lora_sam`, on a PEFT LoRA model)."""

    name: str
    help: str
    direction: Optional[type[Direction]]
    selects_rows: bool = False
    lora: bool = False

    @property
    def perturbs(self) -> bool:
        return self.direction is not None or self.lora

    def rule(self, selection: SelectionRule) -> Optional[StepRule]:
        """The mode's rule (`selection`: K-SAM's, from `ksam_selection`); None for the stock step."""
        if self.direction is None:
            return None
        return StepRule(selection if self.selects_rows else None, self.direction())


STEP_MODES: dict[str, StepMode] = {mode.name: mode for mode in (
    StepMode("ksam", "SAM on k examples per batch, picked by ksam_selection", AscentGradient, selects_rows=True),
    StepMode("sam", "full-batch SAM (two forward and backward passes)", AscentGradient),
    StepMode("momentum", "Momentum-SAM: the perturbation along the optimizer's first moment, no ascent pass",
             OptimizerMomentum),
    StepMode("random_direction", "a seeded random perturbation of radius rho: the control", RandomDirection),
    StepMode("bi_lora", "Bi-LoRA: an auxiliary LoRA adapter ascends while the main one descends, one pass (LoRA only)",
             None, lora=True),
    StepMode("flat_lora", "Flat-LoRA: seeded Gaussian noise on the merged LoRA weights, one pass (LoRA only)",
             None, lora=True),
    StepMode("none", "the plain Trainer step (the baseline)", None),
)}
"""`sam_mode` -> `StepMode`, in the order the options list them."""

PERTURBING_MODES = tuple(name for name, mode in STEP_MODES.items() if mode.perturbs)
"""The modes whose step perturbs the weights (every mode but the stock step)."""

PLAIN_STEP = StepRule(None, NoPerturbation())
"""A step the SAM schedule leaves unperturbed: one forward and backward on the whole batch."""


def step_rule(sam_mode: str, selection: SelectionRule) -> Optional[StepRule]:
    """The rule of `sam_mode` (None for `"none"`, the stock Trainer step)."""
    return STEP_MODES[sam_mode].rule(selection)
