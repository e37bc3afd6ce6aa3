"""The post-training compressions of `ksam_hf.compression`, against counts and norms taken here."""

from __future__ import annotations

import copy

import pytest
import torch

from ksam_hf.compression import (add_relative_noise_, encoder_linears, prune_global_magnitude_, quantized_int8,
                                 saved_weights)
from tests.testing_utils import make_case, weights


def test_the_encoder_linears_leave_out_the_head_and_the_pooler():
    model, _ = make_case("seqcls_single")
    layers = encoder_linears(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert layers and all(names[id(m)].startswith("bert.encoder.") for m in layers)
    assert model.classifier not in layers and model.bert.pooler.dense not in layers


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
def test_global_pruning_zeroes_exactly_the_share_of_smallest_weights(share):
    model, _ = make_case("seqcls_single")
    layers = encoder_linears(model)
    all_weights = torch.cat([m.weight.detach().flatten() for m in layers])
    total = all_weights.numel()
    threshold = all_weights.abs().sort().values[round(share * total) - 1]  # the largest magnitude pruned
    with saved_weights(layers):
        assert prune_global_magnitude_(layers, share) == round(share * total)
        after = torch.cat([m.weight.detach().flatten() for m in layers])
        assert int((after == 0).sum()) == round(share * total)
        assert bool((after[after != 0].abs() >= threshold).all())  # every survivor at least as large
        per_layer = [float((m.weight == 0).float().mean()) for m in layers]
        assert max(per_layer) > min(per_layer)  # global, not the same share in every layer
    assert torch.equal(torch.cat([m.weight.detach().flatten() for m in layers]), all_weights)  # restored


@pytest.mark.parametrize("size", [0.01, 0.05])
def test_noise_has_exactly_its_relative_size_and_is_seeded(size):
    model, _ = make_case("seqcls_single")
    layers = encoder_linears(model)
    before = [m.weight.detach().clone() for m in layers]
    with saved_weights(layers):
        add_relative_noise_(layers, size, seed=3)
        first = [m.weight.detach().clone() for m in layers]
    for weight, noisy in zip(before, first):
        torch.testing.assert_close((noisy - weight).norm() / weight.norm(), torch.tensor(size), rtol=1e-4, atol=0)
    with saved_weights(layers):
        add_relative_noise_(layers, size, seed=3)
        assert all(torch.equal(m.weight, w) for m, w in zip(layers, first))  # the same seed, the same draw
        add_relative_noise_(layers, size, seed=4)
        assert not torch.equal(layers[0].weight, first[0])
    assert all(torch.equal(m.weight, w) for m, w in zip(layers, before))  # restored bit for bit


def test_the_int8_model_is_a_quantized_copy_close_to_the_float_model():
    model, batch = make_case("seqcls_single")
    model.eval()
    original = weights(model)
    quantized = quantized_int8(model)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.modules())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        reference, got = model(**inputs).logits, quantized(**inputs).logits
    assert not torch.equal(reference, got)  # it did quantize
    torch.testing.assert_close(got, reference, rtol=0, atol=0.05 * float(reference.abs().max()))
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())  # the model itself untouched
    assert copy.deepcopy(quantized) is not None
