"""Experimental: K-SAM ranking each batch by its examples' losses at their previous visit, which
skips the ranking forward pass once every example of the batch has been seen.

Not recommended: what it saves and what it cost in accuracy is measured in `docs/performance.md`.

A remembered loss is as old as the example's last visit, and the training loss falls in the
meantime: ranked by raw losses, a later batch would keep the examples that happened to be seen
early (when every loss was high), not the hard ones. So the memory holds *relative* losses: an
example's loss divided by the mean loss of the examples it was measured with, which compares
examples measured at different times.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..config import KSAMConfig
from ..selection import Ranking
from ..perturbation import Perturbation
from ..trainer import KSAMTrainer, RankedBatch

LOSS_MEMORY_FILE = "ksam_loss_memory_{}.pt"
"""Checkpoint file (per process) of the remembered losses."""


class ExampleLossMemory:
    """A table from example id (a non-negative integer, e.g. the dataset's `idx` column) to the
    example's relative loss when last measured. Unknown examples read as NaN. Kept on the CPU: one
    float per training example."""

    def __init__(self) -> None:
        self.losses = torch.full((0,), float("nan"))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Remembered scores of `ids` (NaN where the example has not been seen)."""
        ids = ids.detach().long().cpu().view(-1)
        known = ids < self.losses.numel()
        out = torch.full(ids.shape, float("nan"))
        out[known] = self.losses[ids[known]]
        return out

    def update(self, ids: torch.Tensor, losses: torch.Tensor) -> None:
        """Remember `losses` (NaN: forget) for `ids`."""
        ids = ids.detach().long().cpu().view(-1)
        if ids.numel() and int(ids.min()) < 0:
            raise ValueError("Example ids must be non-negative integers (e.g. the dataset's row index).")
        if ids.numel() and int(ids.max()) >= self.losses.numel():
            grown = torch.full((max(int(ids.max()) + 1, 2 * self.losses.numel()),), float("nan"))
            grown[: self.losses.numel()] = self.losses
            self.losses = grown
        self.losses[ids] = losses.detach().float().cpu().view(-1)


def relative_losses(losses: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Each labelled example's loss over the mean loss of the labelled examples (NaN for the others):
    the score of a batch that was ranked by a forward pass over all of it."""
    losses = losses.detach().float()
    mean = losses[labelled].mean() if bool(labelled.any()) else losses.new_tensor(0.0)
    scores = losses / mean if float(mean) > 0 else torch.zeros_like(losses)
    return scores.masked_fill(~labelled, float("nan"))


def refreshed_scores(remembered: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    """New scores of the kept examples of a batch ranked from memory, from their current losses.

    Only the kept examples were measured, so there is no batch mean to divide by: their scores are
    re-spread in proportion to their current losses while keeping their remembered mean (the
    examples' order among themselves is refreshed; their standing against the rest stays the one
    last measured)."""
    losses = losses.detach().float().cpu()
    mean = losses.mean()
    if float(mean) <= 0:
        return torch.zeros_like(losses)
    return remembered.mean() * losses / mean


def estimated_batch_loss(kept_losses: torch.Tensor, kept_scores: torch.Tensor) -> torch.Tensor:
    """The loss of a batch ranked from memory, estimated from its kept examples: their mean loss over
    their mean relative score (a score is a loss over its batch's mean). What the Trainer logs."""
    mean_score = float(kept_scores.mean())
    mean_loss = kept_losses.mean()
    return mean_loss / mean_score if mean_score > 0 else mean_loss


@dataclass
class PreviousLossKSAMConfig(KSAMConfig):
    r"""
    [`KSAMConfig`] for [`PreviousLossKSAMTrainer`], with the paper's `ksam_selection="top_k"` as its
    default, plus:

    Parameters:
        ksam_id_column (`str`, *optional*, defaults to `"idx"`):
            The training-set column with each example's id (a non-negative integer, e.g. the row
            index, as GLUE's `idx`). The trainer keeps this column of a `datasets.Dataset` for
            training though the model does not take it (for other datasets, set
            `remove_unused_columns=False` or have the collator pass it through).
    """

    ksam_selection: str = field(default="top_k", metadata={"help": "Which examples K-SAM keeps."})
    ksam_id_column: str = field(default="idx", metadata={"help": "Training-set column of example ids."})


class PreviousLossKSAMTrainer(KSAMTrainer):
    """K-SAM ranked by remembered relative losses: batches with unseen examples (the first epoch)
    are ranked, and scored, by the forward pass; the kept examples' scores are refreshed from their
    ascent pass; the logged loss of a batch ranked from memory is an estimate (the kept examples'
    mean loss over their mean score). The memory is saved in checkpoints."""

    config_class = PreviousLossKSAMConfig

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.args.ksam_selection != "top_k":
            raise ValueError(f"PreviousLossKSAMTrainer ranks with `ksam_selection='top_k'` only (got "
                             f"{self.args.ksam_selection!r}): a remembered score has no item count to weight "
                             "a sample by. Set ksam_selection='top_k', or use KSAMTrainer.")
        self.loss_memory = ExampleLossMemory()
        self.ranked_from_memory = 0  # micro-batches ranked by remembered losses (cumulative)
        self._from_memory = False  # this micro-batch was ranked from memory
        self._estimated_loss = torch.zeros(())

    def _ids(self, inputs: dict[str, Any]) -> torch.Tensor:
        column = self.args.ksam_id_column
        if column not in inputs:
            raise ValueError(
                f"PreviousLossKSAMTrainer needs an example id per row, but the batch has no {column!r} "
                "column. Add one (e.g. `dataset.map(lambda _, i: {'idx': i}, with_indices=True)`) or set "
                "`ksam_id_column` to the column that holds it.")
        return inputs[column]

    def rank_batch(self, model: nn.Module, inputs: dict[str, Any]) -> RankedBatch:
        ids = self._ids(inputs)
        remembered = self.loss_memory.lookup(ids)
        self._from_memory = bool(torch.isfinite(remembered).all())
        if self._from_memory:
            self.ranked_from_memory += 1
            return RankedBatch(Ranking(remembered, torch.ones_like(remembered)), None)
        ranked = super().rank_batch(model, inputs)
        self.loss_memory.update(ids, relative_losses(ranked.ranking.scores, ranked.ranking.labelled))
        return ranked

    def _ascend(self, model: nn.Module, rows: dict[str, Any], whole_batch: bool = False) -> Perturbation:
        """The ascent; after a batch ranked from memory, refresh the kept examples' scores and
        estimate the batch's loss from them."""
        ascent = super()._ascend(model, rows, whole_batch)
        if self._from_memory:
            ids = self._ids(rows)
            scores = self.loss_memory.lookup(ids)
            sums, counts = ascent.per_example
            losses = (sums / counts.clamp_min(1)).float().cpu()
            self.loss_memory.update(ids, refreshed_scores(scores, losses))
            self._estimated_loss = estimated_batch_loss(losses, scores)
        return ascent

    def _logged_loss(self, ranked: Optional[RankedBatch], whole_batch_ascent: Optional[Perturbation],
                     descent_loss: torch.Tensor) -> torch.Tensor:
        if ranked is not None and ranked.loss is None:
            return self._estimated_loss.to(self.args.device) / (self.current_gradient_accumulation_steps or 1)
        return super()._logged_loss(ranked, whole_batch_ascent, descent_loss)

    def _model_inputs(self, inputs: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        inputs = super()._model_inputs(inputs, **kwargs)
        return {k: v for k, v in inputs.items() if k != self.args.ksam_id_column}

    def _remove_unused_columns(self, dataset: Any, description: Optional[str] = None) -> Any:
        """Keep the example-id column in the training set."""
        pruned = super()._remove_unused_columns(dataset, description)
        column = self.args.ksam_id_column
        if ((description or "").lower() == "training" and column in getattr(dataset, "column_names", ())
                and column not in pruned.column_names):
            pruned = pruned.add_column(column, dataset.with_format(None)[column])
        return pruned

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, plus the remembered losses."""
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(folder, exist_ok=True)
        torch.save(self.loss_memory.losses, os.path.join(folder, LOSS_MEMORY_FILE.format(self.args.process_index)))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, LOSS_MEMORY_FILE.format(self.args.process_index))
        if os.path.isfile(path):
            self.loss_memory.losses = torch.load(path, weights_only=True)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self.ranked_from_memory:
            logs["sam_ranked_from_memory"] = self.ranked_from_memory
        super().log(logs, start_time)
