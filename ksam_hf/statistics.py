"""What K-SAM's step records between two logs: examples kept, their loss, the ascent norm, skips,
and the ranking pass's confidence (the health signal: a classifier collapsing to the uniform
predictor shows as a mean top-class probability of 1 / classes)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .selection import Selected


class StepStatistics:
    """Running sums of the per-step SAM statistics between two logs; `pop` gives the log entries.
    `watch_column`: the name of a per-example batch column whose mean over the kept examples (and
    over the batch) is logged, as `sam_kept_<name>` (and `sam_batch_<name>`)."""

    def __init__(self, watch_column: Optional[str] = None) -> None:
        self.watch_column = watch_column
        self.skipped = 0  # perturbations skipped for a non-finite ascent norm (cumulative)
        self.empty = 0  # micro-batches with no labelled example (cumulative)
        self.last_selected: Optional[Selected] = None  # the latest micro-batch's selection (K-SAM)
        self.perturbed_elements = 0  # weights the latest ascent moved (its e's size: the extra memory)
        self._reset()

    def _reset(self) -> None:
        self.steps, self.kept, self.norm_steps, self.norm = 0, 0, 0, 0.0
        self.micro_batches, self.perturbed = 0, 0
        self.kept_loss = torch.zeros(())
        self.confidence, self.confidence_items = torch.zeros(()), torch.zeros(())
        self.watched_steps, self.watched_kept, self.watched_batch = 0, 0.0, 0.0

    def add_step(self, perturbed: bool) -> None:
        """One micro-batch, perturbed (its descent taken at w + e) or plain (a step the SAM schedule
        leaves out, momentum's first step, a perturbation skipped)."""
        self.micro_batches += 1
        self.perturbed += int(perturbed)

    def add_unlabelled(self) -> None:
        """A micro-batch with no labelled example: nothing to ascend or descend on."""
        self.empty += 1

    def add_selection(self, selected: Selected) -> None:
        """The rows a selection rule kept in the latest micro-batch (read by tests and benchmarks)."""
        self.last_selected = selected

    def add_ascent(self, kept: int, kept_loss: torch.Tensor, norm: float, perturbed_elements: int = 0) -> None:
        """One ascent pass: rows kept, their mean loss, the ascent gradient's norm (unscaled), and the
        weights its e moves (0: no e)."""
        if perturbed_elements:
            self.perturbed_elements = perturbed_elements
        self.steps += 1
        self.kept += kept
        self.kept_loss = self.kept_loss.to(kept_loss.device) + kept_loss.float()
        if math.isfinite(norm):
            self.norm_steps += 1
            self.norm += norm
        else:
            self.skipped += 1

    def add_confidence(self, confidence: Optional[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """The batch's top-class probabilities, summed over its labelled examples, and their number
        (None: not a single-label classifier); kept on the device until logged."""
        if confidence is not None:
            total, items = confidence
            self.confidence = self.confidence.to(total.device) + total.float()
            self.confidence_items = self.confidence_items.to(items.device) + items.float()

    def add_watched(self, kept: float, batch: float) -> None:
        """One selection's mean of the watched column over the kept examples, and over the batch."""
        self.watched_steps += 1
        self.watched_kept += kept
        self.watched_batch += batch

    def pop(self) -> dict[str, float]:
        logs: dict[str, float] = {"sam_skipped_perturbations": self.skipped}
        if self.empty:
            logs["sam_unlabelled_batches"] = self.empty
        if self.micro_batches:
            logs["sam_perturbed_share"] = round(self.perturbed / self.micro_batches, 4)
        if self.steps:
            logs["sam_kept"] = round(self.kept / self.steps, 4)
            logs["sam_kept_loss"] = round(float(self.kept_loss) / self.steps, 4)
        if self.norm_steps:
            logs["sam_ascent_grad_norm"] = round(self.norm / self.norm_steps, 4)
        if float(self.confidence_items):
            logs["sam_mean_max_prob"] = round(float(self.confidence) / float(self.confidence_items), 4)
        if self.watched_steps:
            logs[f"sam_kept_{self.watch_column}"] = round(self.watched_kept / self.watched_steps, 4)
            logs[f"sam_batch_{self.watch_column}"] = round(self.watched_batch / self.watched_steps, 4)
        self._reset()
        return logs
