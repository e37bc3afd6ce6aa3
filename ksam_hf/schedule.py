"""Which optimizer steps SAM perturbs: every n-th step, a seeded random share of steps (RST, Zhao et
al. 2022), or only the last part of training (late-phase SAM, Zhou et al., ICLR 2025).

Decided once per optimizer step from the step's number and the run's seed only, so that every
micro-batch of an accumulated step and every process decide alike, and a resumed run decides as
the uninterrupted one did. An unperturbed step is the base optimizer's plain step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamSchedule:
    """`every_n_steps`: perturb optimizer steps n, 2n, ... (counted from 1); `step_share`: perturb each
    step with this probability (a draw seeded by `seed` and the step); `start_fraction`: no step before
    this fraction of the run's steps. A step is perturbed when all three allow it."""

    every_n_steps: int = 1
    step_share: float = 1.0
    start_fraction: float = 0.0
    seed: int = 0

    def perturbs(self, completed_steps: int, max_steps: int) -> bool:
        """Whether the optimizer step after `completed_steps` (the Trainer's `global_step`) is perturbed."""
        number = completed_steps + 1
        if completed_steps < self.start_fraction * max_steps:
            return False
        if number % self.every_n_steps:
            return False
        if self.step_share < 1.0:
            draw = np.random.default_rng([self.seed, completed_steps, 0x5CED]).random()
            return bool(draw < self.step_share)
        return True
