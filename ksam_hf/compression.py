"""What a flat minimum is for besides accuracy: the trained model after post-training compression.

Three perturbations a model meets when it ships, each applied to a copy or undone bit for bit:
dynamic int8 quantization of its Linear layers (`torch.ao`, CPU), one-shot global magnitude pruning
of the encoder's Linear weights, and Gaussian noise on those weights of an exact relative size.
Na, Mehta and Strubell (Findings of EMNLP 2022) found BERT fine-tuned with SAM keeps more of its
score under the first two than with Adam; `run_glue.py --eval_compressed` measures it per run.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

PRUNE_SHARES = (0.3, 0.5, 0.7)
NOISE_SIZES = (0.01, 0.02, 0.05)
NOISE_DRAWS = 5


def encoder_linears(model: nn.Module) -> list[nn.Linear]:
    """The Linear layers of the model's encoder (the base model's modules named `encoder...`; all
    of the base model's Linear layers where it names none): what pruning and noise act on. The
    task head and the pooler are left as trained."""
    base = getattr(model, "base_model", model)
    named = [(name, m) for name, m in base.named_modules() if isinstance(m, nn.Linear)]
    encoder = [m for name, m in named if name.split(".")[0] == "encoder"]
    return encoder or [m for _, m in named]


def quantized_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` with its Linear layers dynamically quantized to int8 (weights int8,
    activations quantized per batch at run time), as `torch.ao.quantization.quantize_dynamic` does."""
    cpu_copy = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao, not installed here
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(cpu_copy, {nn.Linear}, dtype=torch.qint8)


@contextmanager
def saved_weights(layers: list[nn.Linear]) -> Iterator[None]:
    """The layers' weights put back bit for bit on exit (a copy of each is held meanwhile)."""
    saved = [layer.weight.detach().clone() for layer in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved):
                layer.weight.copy_(weight)


@torch.no_grad()
def prune_global_magnitude_(layers: list[nn.Linear], share: float) -> int:
    """Zero exactly round(share x their weights) of the layers' weights, those of smallest magnitude
    across all layers together (ties broken by position); returns how many were zeroed."""
    if not 0 <= share < 1:
        raise ValueError(f"share={share!r}: prune a share in [0, 1).")
    magnitudes = torch.cat([layer.weight.detach().abs().flatten().float().cpu() for layer in layers])
    count = round(share * magnitudes.numel())
    if count == 0:
        return 0
    mask = torch.ones(magnitudes.numel(), dtype=torch.bool)
    mask[torch.topk(magnitudes, count, largest=False, sorted=False).indices] = False
    start = 0
    for layer in layers:
        size = layer.weight.numel()
        layer.weight.mul_(mask[start:start + size].view_as(layer.weight).to(layer.weight.device))
        start += size
    return count


@torch.no_grad()
def add_relative_noise_(layers: list[nn.Linear], size: float, seed: int) -> None:
    """Add to each layer's weight W the noise `size * ||W|| * z / ||z||`, z standard Gaussian drawn from
    a generator seeded by `seed` and the layer's position: a perturbation of exactly `size` times
    the weight's Frobenius norm, in a random direction."""
    for position, layer in enumerate(layers):
        key = int(np.random.SeedSequence([seed, position, 0x401CE]).generate_state(1)[0])
        z = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(key))
        noise = size * layer.weight.detach().float().norm() * z / z.norm()
        layer.weight.add_(noise.to(layer.weight.device, layer.weight.dtype))


def compressed_scores(model: nn.Module, evaluate: Callable[[nn.Module], dict[str, float]],
                      seed: int) -> dict[str, dict[str, float]]:
    """Variant -> `evaluate`'s metrics of the model after each compression: `int8`, `prune30`,
    `prune50`, `prune70`, `noise0.01`, `noise0.02`, `noise0.05` (the mean over `NOISE_DRAWS` seeded
    draws). The model's weights are what they were afterwards, bit for bit."""
    variants = {"int8": evaluate(quantized_int8(model))}
    layers = encoder_linears(model)
    for share in PRUNE_SHARES:
        with saved_weights(layers):
            prune_global_magnitude_(layers, share)
            variants[f"prune{round(100 * share)}"] = evaluate(model)
    for size in NOISE_SIZES:
        draws = []
        for draw in range(NOISE_DRAWS):
            with saved_weights(layers):
                add_relative_noise_(layers, size, seed=seed * 1000 + draw)
                draws.append(evaluate(model))
        variants[f"noise{size:g}"] = {name: float(np.mean([d[name] for d in draws])) for name in draws[0]}
    return variants
