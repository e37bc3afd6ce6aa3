"""`KSAMSFTConfig`: TRL's `SFTConfig` with the SAM fields of `KSAMConfig` (needs `ksam-hf[trl]`)."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from .config import KSAMConfig


@dataclass
class KSAMSFTConfig(SFTConfig, KSAMConfig):
    r"""
    Configuration of [`KSAMSFTTrainer`]: every field of TRL's [`~trl.SFTConfig`] (chat templates,
    `completion_only_loss`, `assistant_only_loss`, `max_length`, `packing`, `padding_free`, ...) and
    every SAM field of [`KSAMConfig`] (`sam_mode`, `sam_rho`, `ksam_k`, `ksam_selection`,
    `ksam_uniform_mix`, `ksam_loss_share`, `sam_adaptive`, `ksam_rank_without_dropout`,
    `sam_sync_ascent`), documented there. With `packing` or `padding_free`, an example is one
    original sequence of the packed row, not the row. SAM needs the standard token loss:
    `loss_type="nll"` (the default).
    """
