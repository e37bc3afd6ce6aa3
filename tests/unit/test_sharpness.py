"""SAM's vector maths against the same sums written out in float64."""

from __future__ import annotations

import torch

from ksam_hf.sharpness import ascent_norm


def test_ascent_norm_of_bf16_gradients_is_computed_in_fp32():
    """bf16 gradients (a model trained in bf16, e.g. a LoRA adapter on a bf16 base): the global norm
    is accumulated in fp32, not rounded to bf16's 8 bits per tensor first."""
    torch.manual_seed(0)
    grads = [torch.randn(1000, dtype=torch.bfloat16), torch.randn(37, 3, dtype=torch.bfloat16) * 100]
    expected = torch.cat([g.double().flatten() for g in grads]).norm()
    norm = ascent_norm(grads, grads, adaptive=False)
    assert norm.dtype == torch.float32
    torch.testing.assert_close(norm.double(), expected, rtol=1e-6, atol=0)


def test_adaptive_norm_is_the_norm_of_w_times_g():
    torch.manual_seed(1)
    params = [torch.randn(5, 4), torch.randn(7)]
    grads = [torch.randn(5, 4), torch.randn(7)]
    expected = torch.cat([(p.double() * g.double()).flatten() for p, g in zip(params, grads)]).norm()
    torch.testing.assert_close(ascent_norm(grads, params, adaptive=True).double(), expected, rtol=1e-6, atol=0)
