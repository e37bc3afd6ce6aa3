"""SAM's maths: the ascent norm, the perturbation e, and the weights moved to w + e and back.

Each function works on lists of tensors with `torch._foreach_*` kernels (one launch per list
rather than a Python loop over parameters) and without autograd. Names: `epsilon` is e (one
tensor per parameter), `params` the parameters it moves (those with an ascent gradient).

Sharded parameters (FSDP2's DTensors) work too: each rank holds a shard of every parameter and of
its gradient; the norm is the global one (the shards' squared norms all-reduced, as
`clip_grad_norm_` does), and e is added to each rank's own shard in place (FSDP2 gathers the
parameters from those shards for every forward), with a copy of the shard to restore.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch.distributed.tensor import DTensor
from torch.profiler import record_function

Tensors = Sequence[torch.Tensor]


def ascent_gradient(loss: torch.Tensor, params: Sequence[torch.nn.Parameter]) -> list[Optional[torch.Tensor]]:
    """The gradient of `loss` for each of `params` (None where unused), leaving `p.grad` (earlier
    accumulation micro-batches) as it was.

    A backward into emptied `.grad` slots, read, then the earlier gradients put back (also when
    the backward fails): unlike `torch.autograd.grad`, this works through reentrant gradient
    checkpointing, whose recomputation only a `.backward()` can drive.
    """
    earlier = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        loss.backward()
        return [p.grad for p in params]
    finally:
        for p, grad in zip(params, earlier):
            p.grad = grad


@torch.no_grad()
def ascent_norm(grads: Tensors, params: Tensors, adaptive: bool) -> torch.Tensor:
    """Global L2 norm of the ascent gradient: ||g||, or ASAM's ||w * g||, as a float32 scalar."""
    if adaptive:
        grads = torch._foreach_mul(params, grads)
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)  # fp32 from the kernel: no cast per tensor
    total = torch.linalg.vector_norm(torch.stack(norms), 2)
    return total.full_tensor() if isinstance(total, DTensor) else total  # sharded: the all-reduced norm


@torch.no_grad()
def gradient_to_epsilon_(grads: list[torch.Tensor], params: Tensors, rho: float, norm: float,
                         adaptive: bool) -> list[torch.Tensor]:
    """Turn `grads` in place into SAM's e = rho * g / ||g|| (ASAM: rho * w^2 * g / ||w g||).

    `norm` is `ascent_norm(grads, ...)`, finite. Any scale of `grads` (an fp16 loss scale) cancels.
    """
    if adaptive:
        torch._foreach_mul_(grads, params)
        torch._foreach_mul_(grads, params)
    torch._foreach_mul_(grads, rho / (norm + 1e-12))
    return grads


@contextmanager
def weights_at_w_plus_e(params: Sequence[torch.nn.Parameter], epsilon: Optional[list[torch.Tensor]]
                        ) -> Iterator[None]:
    """Inside the block the parameters hold w + e; on leaving it (an exception included) they hold
    w again, bit for bit. `epsilon=None` leaves the weights where they are.

    No copy of w is made: e's buffers become w + e in place and are swapped into `p.data`, and w,
    untouched, is swapped back (never w + e - e, which would not give w exactly). A buffer whose
    layout differs from its weight's is first copied into the weight's layout.
    """
    if epsilon is None:
        yield
        return
    if any(isinstance(p, DTensor) for p in params):
        with _sharded_weights_at_w_plus_e(params, epsilon):
            yield
        return
    saved = [p.data for p in params]
    try:
        with torch.no_grad():
            torch._foreach_add_(epsilon, list(params))
            for p, moved in zip(params, epsilon):
                if moved.stride() != p.stride() or moved.dtype != p.dtype:
                    moved = torch.empty_like(p).copy_(moved)
                p.data = moved
        yield
    finally:
        with record_function("ksam/restore"):
            for p, original in zip(params, saved):
                p.data = original


@contextmanager
def _sharded_weights_at_w_plus_e(params: Sequence[torch.nn.Parameter], epsilon: list[torch.Tensor]
                                 ) -> Iterator[None]:
    """`weights_at_w_plus_e` for sharded parameters (FSDP2): FSDP2 gathers every forward's weights
    from the storage of each rank's shard, so e goes into the shards in place, and a copy of each
    shard (1/N of the weights) puts w back, bit for bit."""
    shards = [p.to_local() if isinstance(p, DTensor) else p.data for p in params]
    steps = [e.to_local() if isinstance(e, DTensor) else e for e in epsilon]
    with torch.no_grad():
        saved = [shard.clone() for shard in shards]
    try:
        with torch.no_grad():
            torch._foreach_add_(shards, steps)
        yield
    finally:
        with record_function("ksam/restore"), torch.no_grad():
            torch._foreach_copy_(shards, saved)
