"""SAM's maths: the ascent perturbation, applying it, and restoring the weights bit-exactly.

Each function works on lists of tensors with `torch._foreach_*` kernels (one launch per list
rather than a Python loop over parameters) and without autograd.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

Tensors = Sequence[torch.Tensor]


@torch.no_grad()
def ascent_norm(grads: Tensors, params: Tensors, adaptive: bool) -> torch.Tensor:
    """Global L2 norm of the ascent gradient: ||g||, or ASAM's ||w * g||, as a float32 scalar."""
    if adaptive:
        grads = torch._foreach_mul(params, grads)
    norms = torch._foreach_norm(grads, 2)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2)


@torch.no_grad()
def perturbation_(grads: list[torch.Tensor], params: Tensors, rho: float, norm: float,
                  adaptive: bool) -> list[torch.Tensor]:
    """Turn `grads` in place into SAM's e = rho * g / ||g|| (ASAM: rho * w^2 * g / ||w g||).

    `norm` is `ascent_norm(grads, ...)`, finite. Any scale of `grads` (an fp16 loss scale) cancels.
    """
    if adaptive:
        torch._foreach_mul_(grads, params)
        torch._foreach_mul_(grads, params)
    torch._foreach_mul_(grads, rho / (norm + 1e-12))
    return grads


@torch.no_grad()
def perturb_weights_(params: Sequence[torch.nn.Parameter], perturbation: list[torch.Tensor]) -> None:
    """w <- w + e without copying w: keep `[p.data for p in params]` first, for `restore_weights_`.

    e's buffers become w + e (bit for bit the same as w + e, addition being commutative) and are
    swapped into the parameters, so the original weights stay untouched where they were. A
    perturbation whose layout differs from its weight's is copied into the weight's layout first.
    """
    torch._foreach_add_(perturbation, list(params))
    for p, moved in zip(params, perturbation):
        if moved.stride() != p.stride() or moved.dtype != p.dtype:
            moved = torch.empty_like(p).copy_(moved)
        p.data = moved


@torch.no_grad()
def restore_weights_(params: Sequence[torch.nn.Parameter], saved: Optional[Tensors]) -> None:
    """Put back the weights kept before `perturb_weights_` (never w - e: that would not give w exactly)."""
    if saved is not None:
        for p, original in zip(params, saved):
            p.data = original
