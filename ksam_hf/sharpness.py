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
def save_weights(params: Tensors) -> list[torch.Tensor]:
    """A copy of the weights, from which `restore_weights_` puts them back bit for bit."""
    return [p.detach().clone() for p in params]


@torch.no_grad()
def perturb_weights_(params: Tensors, perturbation: Tensors) -> None:
    """w <- w + e."""
    torch._foreach_add_(list(params), list(perturbation))


@torch.no_grad()
def restore_weights_(params: Tensors, saved: Optional[Tensors]) -> None:
    """w <- saved copy (never w - e: floating-point subtraction would not give w back exactly)."""
    if saved is not None:
        torch._foreach_copy_(list(params), list(saved))
