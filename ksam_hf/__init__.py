"""ksam-hf: K-SAM and SAM as a drop-in Hugging Face Transformers `Trainer`.

`KSAMSFTTrainer` / `KSAMSFTConfig` (TRL's SFT) are imported on first use: they need `ksam-hf[trl]`.
"""

from typing import Any

from .config import KSAMConfig, KSAMSeq2SeqConfig
from .per_example_loss import PerExampleLoss
from .trainer import KSAMSeq2SeqTrainer, KSAMTrainer

__all__ = ["KSAMConfig", "KSAMSeq2SeqConfig", "KSAMTrainer", "KSAMSeq2SeqTrainer", "PerExampleLoss",
           "KSAMSFTConfig", "KSAMSFTTrainer"]
__version__ = "0.2.0"

_TRL_NAMES = {"KSAMSFTConfig": "sft_config", "KSAMSFTTrainer": "sft_trainer"}


def __getattr__(name: str) -> Any:
    if name in _TRL_NAMES:
        try:
            import trl  # noqa: F401
        except ImportError as error:
            raise ImportError(f"ksam_hf.{name} needs TRL: pip install 'ksam-hf[trl]'") from error
        from importlib import import_module

        return getattr(import_module(f".{_TRL_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
