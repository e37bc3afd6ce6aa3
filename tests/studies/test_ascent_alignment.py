"""The study-only benchmark `studies.ascent_alignment`: how well each rule's ascent direction aligns
with the whole batch's gradient."""

from __future__ import annotations

import pytest
import torch


def test_ascent_alignment_of_a_batch_of_identical_rows_is_one_for_every_subset():
    """Every row the same: any subset's mean-loss gradient is the batch's (cosine 1), a Gaussian draw
    in a space of thousands of dimensions is nearly orthogonal to it."""
    from transformers import BertConfig, BertForSequenceClassification

    from studies.ascent_alignment import measure

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0))
    row = torch.randint(1, 50, (1, 10))
    batch = {"input_ids": row.repeat(8, 1), "attention_mask": torch.ones(8, 10, dtype=torch.long),
             "labels": torch.ones(8, dtype=torch.long)}
    optimizer = torch.optim.AdamW(model.parameters())
    cosines = measure(model, optimizer, batch, torch.Generator().manual_seed(0))
    assert "momentum (-m)" not in cosines  # no moment before the first optimizer step
    for name in ("top_k_ascent (top 1/4)", "random_ascent 1/4", "random_ascent 1/8"):
        assert cosines[name] == pytest.approx(1.0, abs=1e-5), name
    assert abs(cosines["random_direction"]) < 0.1
