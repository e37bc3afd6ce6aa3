"""Packed (padding-free) batches: sequence boundaries and re-packing, worked out by hand."""

from __future__ import annotations

import torch

from ksam_hf.packing import is_packed, repack, sequence_count, sequence_ids


def packed_batch() -> dict:
    # One row holding three sequences of lengths 3, 2, 4, then 2 padding tokens (pad_to_multiple_of).
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0]])
    return {"input_ids": torch.tensor([[11, 12, 13, 21, 22, 31, 32, 33, 34, 0, 0]]),
            "labels": torch.tensor([[-100, 12, 13, -100, 22, -100, 32, 33, 34, -100, -100]]),
            "position_ids": position_ids,
            "cu_seq_lens_q": torch.tensor([0, 3, 5, 9, 10, 11], dtype=torch.int32),
            "cu_seq_lens_k": torch.tensor([0, 3, 5, 9, 10, 11], dtype=torch.int32),
            "max_length_q": 4, "max_length_k": 4,
            "seq_idx": torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4]], dtype=torch.int32)}


def test_sequences_start_where_positions_restart_and_at_every_row():
    assert sequence_ids(packed_batch()["position_ids"]).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4]
    assert sequence_ids(torch.tensor([[0, 1, 2], [3, 4, 0]])).tolist() == [0, 0, 0, 1, 1, 2]  # a row starts one
    assert sequence_count(packed_batch()) == 5
    assert is_packed(packed_batch())
    assert not is_packed({**packed_batch(), "attention_mask": torch.ones(1, 11)})


def test_repack_keeps_the_chosen_sequences_and_rebuilds_the_boundaries():
    packed = repack(packed_batch(), torch.tensor([0, 2]))
    assert packed["input_ids"].tolist() == [[11, 12, 13, 31, 32, 33, 34]]
    assert packed["labels"].tolist() == [[-100, 12, 13, -100, 32, 33, 34]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    assert packed["cu_seq_lens_q"].tolist() == packed["cu_seq_lens_k"].tolist() == [0, 3, 7]
    assert packed["cu_seq_lens_q"].dtype == torch.int32
    assert packed["max_length_q"] == packed["max_length_k"] == 4
    assert packed["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1]]
