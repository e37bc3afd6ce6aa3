"""Sharpness-aware LoRA at LoRA's cost: one forward and backward a step, hooked onto PEFT's LoRA layers.

`BiLoRA` (Liu et al., ICLR 2026, arXiv 2508.19564): an auxiliary adapter B2 A2 beside each LoRA
layer's own, trained by gradient ascent from the same backward while the main adapter descends,
then scaled back into a ball jointly over all layers (c = sqrt(sum_j ||B2_j A2_j||^2) > rho: every
B2 and A2 times sqrt(rho / c)). `FlatLoRA` (Li et al., ICML 2025, arXiv 2409.14396): the loss under a
random perturbation of each merged weight W' = W0 + s B A, Gaussian per output row i with standard
deviation sigma_t ||W'_i|| / sqrt(n), sigma_t ramped up over training by a cosine; one draw per
optimizer step.

Evaluation, prediction, generation and `save_pretrained` never see either. Bi-LoRA adds its term to
each LoRA layer's output in training mode only (a forward hook); the auxiliary adapter lives outside
the model, its weights and optimizer state in checkpoints beside it. Flat-LoRA adds its noise to the
frozen base weights for the forward and backward of a training micro-batch only, and copies them
back from a saved copy after it, bit for bit (a noise drawn once per step from a seed).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHECKPOINT_FILE = "bi_lora_auxiliary.pt"
"""The auxiliary adapter's weights and optimizer state, in each checkpoint folder."""


def lora_layers(model: nn.Module, mode: str) -> list[nn.Module]:
    """PEFT's LoRA layers of `model` (one per adapted module), or a one-line error naming the fix."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        raise ValueError(f"`sam_mode`={mode!r} trains LoRA adapters: install peft (pip install 'ksam-hf[trl]') and "
                         "wrap the model with peft.get_peft_model(model, LoraConfig(...)).") from None
    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and m.active_adapters]
    if not layers:
        raise ValueError(f"`sam_mode`={mode!r} needs a model with LoRA adapters, and {type(model).__name__} has none: "
                         "wrap it with peft.get_peft_model(model, LoraConfig(r=..., target_modules=[...])) (or pass "
                         "peft_config= to KSAMSFTTrainer), or use another sam_mode.")
    return layers


def _seed(*key: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


class LoraSam(ABC):
    """What the trainer asks of either method: `active()` around a training micro-batch's forward and
    backward, and the log entries."""

    @abstractmethod
    def active(self) -> AbstractContextManager[None]:
        """Inside: the method's term is part of the training forward (and backward)."""

    @abstractmethod
    def logs(self) -> dict[str, float]:
        """What the trainer adds to its logs."""


class BiLoRA(LoraSam):
    """The auxiliary adapter: A2 (rank x in) Kaiming-uniform from `seed`, B2 (out x rank) zeros, so
    that it starts at 0; its output `B2 A2 x` added to each LoRA layer's in training. Trained by its
    own AdamW with `maximize=True` (gradient ascent) at `lr` times the main schedule's factor; after
    each ascent step the global clip to the ball of radius `rho`."""

    def __init__(self, layers: list[nn.Module], rank: int, rho: float, lr: float, seed: int,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        generator = torch.Generator().manual_seed(_seed(seed, 0xB1))
        self.a, self.b = [], []
        for layer in layers:
            weight = layer.get_base_layer().weight
            a = torch.empty(rank, layer.in_features)
            bound = 1 / math.sqrt(layer.in_features)  # nn.Linear's default init (kaiming_uniform_, a=sqrt(5))
            a.uniform_(-bound, bound, generator=generator)
            self.a.append(nn.Parameter(a.to(weight.device)))
            self.b.append(nn.Parameter(torch.zeros(layer.out_features, rank, device=weight.device)))
        self.rho, self.lr = rho, lr
        self.optimizer = torch.optim.AdamW(self.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=0.0,
                                           maximize=True)
        self.norm = 0.0  # ||B2 A2|| over all layers after the last clip
        self._on = False
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def parameters(self) -> list[nn.Parameter]:
        return self.a + self.b

    @contextmanager
    def active(self) -> Iterator[None]:
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def _hook(self, index: int):
        """B2 A2 x added to layer `index`'s output, while active and in training mode only."""
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if not (self._on and module.training):
                return output
            x, a, b = args[0], self.a[index], self.b[index]
            return output + F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))
        return hook

    def remove(self) -> None:
        """Take the hooks off the model's layers."""
        for handle in self._handles:
            handle.remove()

    @torch.no_grad()
    def product_norm(self) -> float:
        """sqrt(sum_j ||B2_j A2_j||_F^2), from rank x rank products: ||B A||^2 = sum((B^T B) * (A A^T))."""
        total = sum(float(((b.T @ b) * (a @ a.T)).sum()) for a, b in zip(self.a, self.b))
        return math.sqrt(max(total, 0.0))

    @torch.no_grad()
    def ascend(self, lr_factor: float, world_size: int = 1) -> None:
        """One ascent step from the gradients the step's backward left (averaged across processes,
        as DDP averages the main adapter's), then the global clip."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if world_size > 1 and torch.distributed.is_initialized():
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad.div_(world_size)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * lr_factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.clip()

    @torch.no_grad()
    def clip(self) -> None:
        c = self.product_norm()
        if c > self.rho:
            scale = math.sqrt(self.rho / c)
            for p in self.parameters():
                p.mul_(scale)
            c = self.product_norm()
        self.norm = c

    def state_dict(self) -> dict[str, Any]:
        return {"a": [a.detach().cpu() for a in self.a], "b": [b.detach().cpu() for b in self.b],
                "optimizer": self.optimizer.state_dict(), "norm": self.norm}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, saved in zip(self.a + self.b, state["a"] + state["b"]):
            p.copy_(saved.to(p.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.norm = state["norm"]

    def logs(self) -> dict[str, float]:
        return {"bi_lora_auxiliary_norm": round(self.norm, 6)}


def _row_noise(std: torch.Tensor, seed: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """E = std[:, None] * z, z standard Gaussian (rows x in_features) from a generator seeded by `seed`."""
    generator = torch.Generator(device=std.device).manual_seed(seed)
    z = torch.randn(std.shape[0], in_features, generator=generator, device=std.device, dtype=torch.float32)
    return (z * std[:, None]).to(dtype)


class FlatLoRA(LoraSam):
    """Gaussian noise on each merged weight, row i with standard deviation sigma_t ||W'_i|| / sqrt(n);
    one draw per optimizer step, seeded by (seed, step, layer) so that every micro-batch, every
    process and a resumed run draw alike. sigma_t = sigma (1 - cos(pi t / T)) / 2, t the optimizer
    steps done, T `max_steps`. Inside `active()` (one micro-batch's forward and backward) the noise is
    added to the frozen base weights in place, which are copied back from a saved copy on the way out,
    so they come back bit for bit (W + E - E would not, least of all in bf16). Memory: one copy of
    the adapted base weights while a micro-batch runs, and a vector of out_features per layer."""

    def __init__(self, layers: list[nn.Module], sigma: float, seed: int) -> None:
        for layer in layers:
            weight = layer.get_base_layer().weight
            if getattr(layer, "fan_in_fan_out", False):
                raise ValueError("`sam_mode`='flat_lora' needs base weights laid out as nn.Linear's (out x in); this "
                                 "model's LoRA layers are fan_in_fan_out (GPT-2's Conv1D): use sam_mode='bi_lora'.")
            if not torch.is_floating_point(weight) or weight.element_size() < 2:
                raise ValueError(f"`sam_mode`='flat_lora' cannot perturb {type(layer.get_base_layer()).__name__}'s "
                                 "quantized base weights (their noise scale needs each row's norm): use "
                                 "sam_mode='bi_lora' with a quantized base model, or LoRA on unquantized weights.")
        self.layers = layers
        self.sigma, self.seed = sigma, seed
        self.step: Optional[int] = None
        self.sigma_t = 0.0
        self.std: list[torch.Tensor] = []

    def begin(self, step: int, max_steps: int) -> None:
        """The step's scale: sigma_t and each row's ||W'_i|| (once per optimizer step)."""
        if step == self.step:
            return
        self.step = step
        self.sigma_t = self.sigma * (1 - math.cos(math.pi * min(step / max(max_steps, 1), 1.0))) / 2
        self.std = []
        with torch.no_grad():
            for layer in self.layers:
                merged = layer.get_base_layer().weight.float()
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        merged = merged + layer.get_delta_weight(adapter).float()
                self.std.append(self.sigma_t * merged.norm(dim=1) / math.sqrt(layer.in_features))

    def noise(self, index: int) -> torch.Tensor:
        """The step's noise of layer `index`, in its weight's dtype."""
        layer = self.layers[index]
        weight = layer.get_base_layer().weight
        return _row_noise(self.std[index], _seed(self.seed, self.step, index, 0xF1A7), layer.in_features, weight.dtype)

    @contextmanager
    def active(self) -> Iterator[None]:
        if not self.sigma_t:
            yield
            return
        weights = [layer.get_base_layer().weight for layer in self.layers]
        saved = [w.detach().clone() for w in weights]
        try:
            with torch.no_grad():
                for index, weight in enumerate(weights):
                    weight.add_(self.noise(index))
            yield
        finally:
            with torch.no_grad():
                for weight, original in zip(weights, saved):
                    weight.copy_(original)

    def logs(self) -> dict[str, float]:
        return {"flat_lora_sigma": round(self.sigma_t, 6)}
