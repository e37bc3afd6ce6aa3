"""Packed and padding-free batches: the examples are the sequences inside the rows, not the rows.

A padding-free collator (TRL's `padding_free`/`packing`, Transformers' `DataCollatorWithFlattening`)
concatenates several sequences into one row with `position_ids` restarting at 0 at each sequence
and no `attention_mask`. K-SAM ranks the paper's unit, the example: each sequence's loss is the
sum of its own tokens' losses, and the kept sequences are packed again into a shorter row, so the
cost of the ascent and descent falls with k.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .per_example_loss import IGNORE_INDEX, _logits

BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx")
"""What a padding-free collator derives from the sequence boundaries; rebuilt for the kept sequences."""


def is_packed(inputs: Mapping[str, Any]) -> bool:
    """Sequences flattened into rows: `position_ids` and no `attention_mask` (the padding-free layout)."""
    return isinstance(inputs.get("position_ids"), torch.Tensor) and "attention_mask" not in inputs


def sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """The sequence of every token, numbered across the batch's rows in order (flattened `[rows * T]`).

    A sequence starts where `position_ids` is 0, and at the start of every row.
    """
    starts = position_ids == 0
    starts[:, 0] = True
    return torch.cumsum(starts.reshape(-1).long(), 0) - 1


def sequence_count(inputs: Mapping[str, Any]) -> int:
    return int(sequence_ids(inputs["position_ids"])[-1]) + 1


def per_sequence_losses(outputs: Any, inputs: Mapping[str, Any], shift: bool, label_smoothing: float = 0.0
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's token-loss sum and token count (a causal LM with `shift`: position t predicts
    the label at t + 1, which belongs to the sequence of t + 1; collators mask each sequence's first
    label, so no token is predicted across a boundary)."""
    logits = _logits(outputs)
    labels, ids = _labels_by_sequence(inputs, logits.device, shift)
    if shift:
        logits = logits[:, :-1, :]
    losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=label_smoothing)
    count = sequence_count(inputs)
    valid = labels.reshape(-1).ne(IGNORE_INDEX)
    sums = losses.new_zeros(count).index_add(0, ids.reshape(-1), losses)
    counts = losses.new_zeros(count).index_add(0, ids.reshape(-1), valid.to(losses.dtype))
    return sums, counts


def _labels_by_sequence(inputs: Mapping[str, Any], device: torch.device, shift: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels each token's loss is taken against, and the sequence of each (a causal LM with
    `shift`: position t predicts the label at t + 1), on `device`."""
    labels = inputs["labels"].detach().to(device)
    ids = sequence_ids(inputs["position_ids"].to(device)).view(labels.shape)
    return (labels[:, 1:], ids[:, 1:]) if shift else (labels, ids)


def sequence_label_counts(inputs: Mapping[str, Any], shift: bool) -> torch.Tensor:
    """Each sequence's number of labelled tokens, read from the labels alone (no forward pass), as
    `per_sequence_losses` counts them; on the CPU."""
    labels, ids = _labels_by_sequence(inputs, torch.device("cpu"), shift)
    return torch.zeros(sequence_count(inputs)).index_add(0, ids.reshape(-1), labels.reshape(-1).ne(IGNORE_INDEX).float())


def repack(inputs: Mapping[str, Any], kept: torch.Tensor) -> dict[str, Any]:
    """The sequences `kept` (indices in batch order) packed into one row, with the boundary tensors
    of a padding-free collator rebuilt for them; other entries are passed through."""
    position_ids = inputs["position_ids"]
    shape = position_ids.shape
    ids = sequence_ids(position_ids)
    tokens = torch.isin(ids, kept.to(ids.device))
    packed = {}
    for key, value in inputs.items():
        if key in BOUNDARY_KEYS:
            continue
        if isinstance(value, torch.Tensor) and value.shape[:2] == shape:
            value = value.reshape(shape[0] * shape[1], *value.shape[2:])[tokens.to(value.device)].unsqueeze(0)
        packed[key] = value
    if any(key in inputs for key in BOUNDARY_KEYS):
        new_ids = sequence_ids(packed["position_ids"])
        lengths = torch.bincount(new_ids)
        cu_seq_lens = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)]).to(torch.int32)
        longest = int(lengths.max())
        device = inputs.get("cu_seq_lens_q", position_ids).device
        for key, value in (("cu_seq_lens_q", cu_seq_lens), ("cu_seq_lens_k", cu_seq_lens), ("max_length_q", longest),
                           ("max_length_k", longest), ("seq_idx", new_ids.to(torch.int32).unsqueeze(0))):
            if key in inputs:
                packed[key] = value.to(device) if isinstance(value, torch.Tensor) else value
    return packed
