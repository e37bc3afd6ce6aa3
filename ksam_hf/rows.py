"""The kept examples of a batch as a smaller batch: their rows, without the padding none of them uses."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

DECODER_KEYS = ("decoder_input_ids", "decoder_attention_mask", "labels")


def select_rows(inputs: Mapping[str, Any], indices: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """The rows `indices` of every batch-shaped tensor in `inputs`; anything else is passed through."""
    selected = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            value = value.index_select(0, indices.to(value.device))
        selected[key] = value
    return selected


def _used_length(used: torch.Tensor) -> int:
    """One past the last column (last dimension) that any row uses."""
    columns = used.reshape(-1, used.shape[-1]).any(dim=0).nonzero()
    return int(columns.max()) + 1 if columns.numel() else used.shape[-1]


def _cut(inputs: dict[str, Any], keys: list[str], dim: int, length: int) -> None:
    for key in keys:
        inputs[key] = inputs[key].narrow(dim, 0, length)


def used_lengths(inputs: Mapping[str, Any]) -> Optional[torch.Tensor]:
    """Each row's used length (one past its last column with `attention_mask != 0` or a token label),
    computed where the inputs are, without a host synchronisation; None without a 2-D attention mask."""
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    used = mask.ne(0)
    labels = inputs.get("labels")
    if isinstance(labels, torch.Tensor) and labels.shape == mask.shape:
        used = used | labels.ne(-100)
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (used * positions).amax(dim=1)


def trim_padding(inputs: Mapping[str, Any], decoder_labels: bool, length: Optional[int] = None) -> dict[str, Any]:
    """Drop the trailing padding columns that none of the (selected) rows uses.

    Encoder side: columns past the last one with `attention_mask != 0` (or a token label, for
    token-level heads) in any row, cut from every tensor shaped like the attention mask. Decoder
    side (`decoder_labels=True`, seq2seq models): columns past the last valid label or decoder
    attention, cut from the labels and decoder inputs. Only trailing columns are cut, so positions
    of the kept tokens do not change. `length`: the encoder side's used length, known already (from
    `used_lengths`, copied to the host with the ranking): no host synchronisation to find it.
    """
    trimmed = dict(inputs)
    decoder_keys = [k for k in DECODER_KEYS if k in trimmed and isinstance(trimmed[k], torch.Tensor)
                    and trimmed[k].dim() >= 2] if decoder_labels else []
    mask = trimmed.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() >= 2:
        used = mask.ne(0)
        labels = trimmed.get("labels")
        if not decoder_labels and isinstance(labels, torch.Tensor) and labels.shape == mask.shape:
            used = used | labels.ne(-100)
        if length is None or decoder_labels:
            length = _used_length(used)
        if length < mask.shape[-1]:
            keys = [k for k, v in trimmed.items() if k not in decoder_keys and isinstance(v, torch.Tensor)
                    and v.dim() >= mask.dim() and v.shape[: mask.dim()] == mask.shape]
            _cut(trimmed, keys, mask.dim() - 1, length)
    if decoder_keys:
        labels = trimmed.get("labels")
        used = labels.ne(-100) if isinstance(labels, torch.Tensor) else None
        decoder_mask = trimmed.get("decoder_attention_mask")
        if isinstance(decoder_mask, torch.Tensor):
            used = decoder_mask.ne(0) if used is None else used | decoder_mask.ne(0)
        if used is not None:
            length = _used_length(used)
            _cut(trimmed, [k for k in decoder_keys if trimmed[k].shape[:2] == used.shape[:2]],
                 used.dim() - 1, length)
    return trimmed
