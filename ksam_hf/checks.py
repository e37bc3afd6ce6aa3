"""Checks that turn silent wrong training into one clear error: a per-example loss of the wrong
shape, a model whose own loss is not its head's standard one, weights that are no longer finite."""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .packing import is_packed, sequence_count


def check_per_example_losses(losses: Any, inputs: Mapping[str, Any]) -> None:
    """A per-example loss function must give one loss sum and one item count per example (a row,
    or a sequence of a packed batch); a loss reduced over the batch would turn K-SAM into SAM."""
    rows = sequence_count(inputs) if is_packed(inputs) else next(
        (v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
              for t in (losses if isinstance(losses, (tuple, list)) else [losses])]
    if len(shapes) != 2 or any(shape != (rows,) for shape in shapes):
        raise ValueError(
            f"`per_example_loss_func` returned {shapes} for a batch of {rows} rows: it must return two "
            f"tensors of shape [{rows}], each example's loss sum and its item count, not a loss reduced "
            "over the batch (which would turn K-SAM into SAM).")


def own_and_standard_loss(outputs: Any, standard: tuple[torch.Tensor, torch.Tensor]
                          ) -> Optional[tuple[float, float, float]]:
    """The model's own loss, the standard loss of its outputs (from `standard`, the per-example sums
    and counts) and the relative tolerance of their comparison, or None when there is nothing finite
    to compare. A loss the model computed in bf16 or fp16 (FSDP2's bf16 parameters) is good to a few
    of its dtype's epsilons, not to 1e-3."""
    own = outputs.get("loss") if hasattr(outputs, "get") else None
    sums, counts = standard
    if own is None or float(counts.sum()) == 0:
        return None
    pair = float(own.detach()), float(sums.detach().sum() / counts.sum())
    tolerance = max(1e-3, 4 * torch.finfo(own.dtype).eps) if own.is_floating_point() else 1e-3
    return (*pair, tolerance) if all(math.isfinite(x) for x in pair) else None


def check_model_loss(name: str, head: str, own: float, standard: float, rel_tol: float = 1e-3) -> None:
    if not math.isclose(own, standard, rel_tol=rel_tol, abs_tol=1e-5):
        raise ValueError(
            f"{name} computes its own loss ({own:.6f}), not the standard {head} loss of its outputs "
            f"({standard:.6f}) (e.g. class weights in a subclass): SAM / K-SAM would train on the standard "
            "one. Pass `per_example_loss_func=` that computes your loss per example, or keep the model's "
            "standard loss.")


def check_finite_weights(model: nn.Module, step: int) -> None:
    """Raise, naming the step and the first broken parameter, if any weight is NaN or infinite
    (one host sync)."""
    named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return
    # Sharded (FSDP2): each process checks its own shards; one that finds a broken weight raises,
    # and the launcher stops the others.
    finite = torch.stack([torch.isfinite(p.to_local() if isinstance(p, DTensor) else p).all() for _, p in named])
    if not bool(finite.all()):
        broken = named[int((~finite).nonzero()[0])][0]
        raise FloatingPointError(
            f"The weights are not finite after step {step} (first: {broken}): training diverged (a learning "
            "rate too high, an fp16 overflow, or non-finite labels or inputs). Stopped before anything is "
            "reported or saved from it.")
