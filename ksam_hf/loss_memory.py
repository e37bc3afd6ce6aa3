"""Each training example's loss at its previous visit, for ranking a batch without a forward pass."""

from __future__ import annotations

import torch


class ExampleLossMemory:
    """A table from example id (a non-negative integer, e.g. the dataset's `idx` column) to the
    loss the example had when last seen. Unknown examples read as NaN. Kept on the CPU: one
    float per training example."""

    def __init__(self) -> None:
        self.losses = torch.full((0,), float("nan"))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Remembered losses of `ids` (NaN where the example has not been seen)."""
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
