"""Host synchronisations per training step (issue 37): the counter against calls counted by hand,
and every rule's step held at its floor."""

from __future__ import annotations

import pytest
import torch

from benchmarks.sync_cases import RULES, rule_step
from benchmarks.syncs import count_step

PASSES = {"adamw": 1, "sam": 2, "momentum": 1, "random_direction": 1, "ksam random_ascent": 2, "ksam top_k": 3,
          "ksam top_k_ascent": 3, "ksam loss_sampled": 3}
"""Forward passes of each rule's step (each pass brings the model's own synchronisations, AdamW's)."""
LIBRARY = {"adamw": 0, "sam": 1, "momentum": 0, "random_direction": 0, "ksam random_ascent": 2, "ksam top_k": 2,
           "ksam top_k_ascent": 2, "ksam loss_sampled": 2}
"""The library's own, at most: the ascent's non-finite check (fp16 overflow skips the perturbation,
`tests/trainer/test_robustness.py`), and one copy to the host of what a rule selects from (the ranking's
losses, or the label counts of `random_ascent`, with each row's used length for the padding cut)."""


def test_the_counter_counts_what_makes_the_host_wait_and_nothing_on_host_tensors():
    device_tensor = torch.randn(4)

    def step():
        float(device_tensor.sum())                  # 1: a value read
        device_tensor[device_tensor > 0]            # 2: a boolean mask (a data-dependent shape)
        host = device_tensor.cpu()                  # 3: a copy to the host
        int(host.argmax()), host.tolist()           # on the host already: free
        counts = torch.zeros(4)                     # made on the host: free to read
        bool(counts.any())
        (device_tensor * 2).nonzero()               # 4
        device_tensor.to(torch.device("cpu"))       # the move to the training device: not a wait

    counter = count_step(step)
    assert [name for name, _ in counter.calls] == ["__float__", "boolean-mask indexing", ".cpu()", "nonzero"]


@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_makes_no_more_host_synchronisations_than_its_floor(rule):
    adamw = rule_step("adamw")
    adamw()
    model_own = len(count_step(adamw).calls)  # the model's own, per forward pass (Transformers' mask checks)
    step = rule_step(rule)
    step()  # the first step checks the model's own loss once
    counter = count_step(step)
    assert len(counter.calls) <= PASSES[rule] * model_own + LIBRARY[rule], counter.summary()
