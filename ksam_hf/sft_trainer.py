"""`KSAMSFTTrainer`: TRL's `SFTTrainer` whose training step is SAM or K-SAM (needs `ksam-hf[trl]`).

Every SFT feature that shapes the data (chat templates, completion-only and assistant-only loss,
which set the other tokens' labels to -100; `max_length` truncation; packing) reaches the step
through the batch, so the SAM step needs nothing from the SFT loss itself. Evaluation is SFT's own.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn
from trl import SFTTrainer

from .sft_config import KSAMSFTConfig
from .trainer import SharpnessAwareStepMixin


class KSAMSFTTrainer(SharpnessAwareStepMixin, SFTTrainer):
    """`trl.SFTTrainer` with the SAM / K-SAM step; takes every `SFTTrainer` argument, configured
    with `KSAMSFTConfig` (a plain `SFTConfig` is converted once, with the SAM fields' defaults).
    With packed or padding-free batches, K-SAM ranks and keeps the original sequences."""

    config_class = KSAMSFTConfig

    def _check_sam_setup(self) -> None:
        super()._check_sam_setup()
        if self.rule is not None and self.args.loss_type != "nll":  # the LoRA modes train on SFT's own loss
            raise ValueError(
                f"`loss_type`={self.args.loss_type!r} with `sam_mode`={self.args.sam_mode!r}: SAM and K-SAM train on "
                "the token cross-entropy. Use loss_type='nll' (the default), or sam_mode='none'.")

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Optional[Union[torch.Tensor, int]] = None) -> torch.Tensor:
        if self.args.sam_mode == "none":  # SFT's own step, activation offloading included
            return super().training_step(model, inputs, num_items_in_batch)
        with self.maybe_activation_offload_context:
            return super().training_step(model, inputs, num_items_in_batch)
