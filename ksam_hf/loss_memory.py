"""Each training example's loss at its previous visit, for ranking a batch without a forward pass.

A remembered loss is as old as the example's last visit, and the training loss falls in the
meantime: ranked by raw losses, a later batch would keep the examples that happened to be seen
early (when every loss was high), not the hard ones. So the memory holds *relative* losses: an
example's loss divided by the mean loss of the examples it was measured with, which compares
examples measured at different times.
"""

from __future__ import annotations

import torch


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
