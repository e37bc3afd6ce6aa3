"""Where a step's perturbation e comes from: one small class per source.

The training step asks its `Direction` for e once per micro-batch and descends at w + e. A
direction never sees the trainer: it declares what it needs. SAM and K-SAM take e from an ascent
gradient of some rows (`AscentGradient`: `needs_ascent`, so the step runs that pass itself);
Momentum-SAM from the base optimizer's first moment, at no extra pass (`OptimizerMomentum`); the
control from a seeded Gaussian draw (`RandomDirection`); a scheduled plain step from nothing
(`NoPerturbation`). The last three read what they need from a `StepContext`. A new source is one
subclass; the step does not change.
"""

from __future__ import annotations

import logging
from abc import ABC
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .sharpness import ascent_norm

logger = logging.getLogger(__name__)


@dataclass
class Perturbation:
    """e (None: the descent runs at w) for the parameters it moves, and the ascent pass's loss at w
    (None when no pass measured it) with its per-example sums and counts."""

    params: list[nn.Parameter]
    epsilon: Optional[list[torch.Tensor]]
    loss: Optional[torch.Tensor] = None
    per_example: Optional[tuple[torch.Tensor, torch.Tensor]] = None


@dataclass(frozen=True)
class StepContext:
    """What a direction without an ascent pass may read: the base optimizer (its state holds the
    moments), the optimizer steps completed, the radius and the run's seed."""

    optimizer: Any
    global_step: int
    rho: float
    seed: int


class Direction(ABC):
    """A source of e. `needs_ascent`: e comes from the ascent gradient of the step's ascent rows,
    which the step computes itself (`perturbation` is then not called)."""

    needs_ascent: bool = False

    def perturbation(self, params: list[nn.Parameter], context: StepContext) -> Perturbation:
        """e for this micro-batch (not yet applied), for the trainable `params`."""
        raise NotImplementedError(f"{type(self).__name__} takes e from the step's ascent pass.")


class NoPerturbation(Direction):
    """A plain step of the base optimizer (a step the SAM schedule leaves unperturbed)."""

    def perturbation(self, params: list[nn.Parameter], context: StepContext) -> Perturbation:
        return Perturbation([], None)


class AscentGradient(Direction):
    """SAM's e = rho g / ||g|| (ASAM: rho w^2 g / ||w g||), g the gradient of the ascent rows' mean
    loss: one more forward and backward, on the rows the selection rule gives (SAM: the batch),
    which the step runs (`needs_ascent`)."""

    needs_ascent = True


class OptimizerMomentum(Direction):
    """Momentum-SAM (Becker et al. 2024, arXiv 2401.12033): e = -rho m / ||m||, m the base optimizer's
    first moment (AdamW's `exp_avg`, SGD's `momentum_buffer`), ||m|| global over the trainable
    parameters. No ascent pass: the step costs one forward and backward.

    The sign is the authors' (their Algorithm 1, and their AdamW code, subtract the momentum): m
    averages past gradients, so -m is the direction the optimizer is moving in, and w - rho m / ||m||
    lies ahead on its path, where the authors find that the gradient serves as SAM's ascent point
    does (a look-ahead far beyond the next step, like Nesterov's but at SAM's radius). Perturbing
    along +m would look back where the weights came from. m is the optimizer's state before this
    step's update: the same for every micro-batch of an accumulated step and on every process.

    Before the optimizer holds state (the first step) the step is plain. An optimizer that keeps no
    first moment (SGD without momentum, Adafactor without beta1) gives plain steps, with one
    warning naming it, from the second step on.
    """

    MOMENT_KEYS = ("exp_avg", "momentum_buffer")

    def __init__(self) -> None:
        self._warned = False

    def perturbation(self, params: list[nn.Parameter], context: StepContext) -> Perturbation:
        optimizer = context.optimizer
        state = optimizer.state if optimizer is not None else {}
        moments = [self._moment(state.get(p, {})) for p in params]
        moved = [(p, m) for p, m in zip(params, moments) if m is not None]
        if not moved:
            if (context.global_step > 0 or any(state.get(p) for p in params)) and not self._warned:
                self._warned = True
                logger.warning(f"sam_mode='momentum': {type(getattr(optimizer, 'optimizer', optimizer)).__name__} "
                               "keeps no first moment (exp_avg / momentum_buffer): every step is a plain step. Use "
                               "AdamW or SGD with momentum, or another sam_mode.")
            return Perturbation([], None)
        params, moments = [p for p, _ in moved], [m for _, m in moved]
        if context.rho == 0:
            return Perturbation([], None)
        norm = ascent_norm(moments, params, adaptive=False)  # on the device: a zero moment gives e = 0
        scale = torch.where(norm > 0, -context.rho / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)
        epsilon = torch._foreach_mul(moments, scale)
        return Perturbation(params, [e.to(p.dtype) for e, p in zip(epsilon, params)])

    @classmethod
    def _moment(cls, state: dict) -> Optional[torch.Tensor]:
        for key in cls.MOMENT_KEYS:
            value = state.get(key)
            if torch.is_tensor(value):
                return value
        return None


class RandomDirection(Direction):
    """The control: e = rho z / ||z||, z standard Gaussian per element, drawn from a generator seeded
    by the run's seed and the optimizer step (the same draw on every process and every micro-batch
    of a step, and after a resume). One forward and backward: is it the direction that matters?"""

    def perturbation(self, params: list[nn.Parameter], context: StepContext) -> Perturbation:
        if not params or context.rho == 0:
            return Perturbation([], None)
        seed = int(np.random.SeedSequence([context.seed, context.global_step, 0x5A4D]).generate_state(1)[0])
        generators: dict[torch.device, torch.Generator] = {}
        epsilon = []
        for p in params:
            if p.device not in generators:
                generators[p.device] = torch.Generator(device=p.device).manual_seed(seed)
            z = torch.randn(p.shape, generator=generators[p.device], device=p.device, dtype=torch.float32)
            if isinstance(p, DTensor):  # sharded (FSDP2): every rank drew the whole z; keep its own shard
                z = distribute_tensor(z, p.device_mesh, p.placements)
            epsilon.append(z)
        norm = ascent_norm(epsilon, params, adaptive=False)  # on the device
        torch._foreach_mul_(epsilon, context.rho / norm)
        return Perturbation(params, [e.to(p.dtype) for e, p in zip(epsilon, params)])
