"""ksam-hf: K-SAM and SAM as a drop-in Hugging Face Transformers `Trainer`."""

from .config import KSAMConfig, KSAMSeq2SeqConfig
from .per_example_loss import PerExampleLoss
from .trainer import KSAMSeq2SeqTrainer, KSAMTrainer

__all__ = ["KSAMConfig", "KSAMSeq2SeqConfig", "KSAMTrainer", "KSAMSeq2SeqTrainer", "PerExampleLoss"]
__version__ = "0.1.0"
