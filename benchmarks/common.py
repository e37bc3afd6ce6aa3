"""What both benchmarks share: the models, synthetic batches, a description of the machine, the
device sync around a timed region, and quantiles. One place, so that a number from `step_time`
and one from `gpu_check` are about the same model and the same kind of batch."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
MINILM_PATH = Path(os.environ.get("KSAM_BENCH_MINILM", "/work/shared/models/all-MiniLM-L6-v2"))
MODELS = ("minilm", "bert-base-shaped", "tiny")
MODEL_HELP = ("minilm: the pretrained all-MiniLM-L6-v2 (22.7M params) with a new 2-label head; "
              "bert-base-shaped: a random BERT with hidden 768 / 12 heads / FFN 3072; tiny: a tiny random "
              "BERT (hidden 32, 2 layers), for smoke tests only")
MIB = 2.0 ** 20
Batch = dict[str, torch.Tensor]


def build_model(name: str, *, layers: int = 12, seq_len: int = 128, seed: int = 0, dropout: bool = True) -> nn.Module:
    """A 2-label BERT sequence classifier (see MODEL_HELP); `layers` for bert-base-shaped only.

    The tiny model keeps BERT's vocabulary so that text tokenized for MiniLM fits it too.
    `dropout=False` zeroes the dropout, so that two runs of a step compute the same arithmetic.
    """
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    off = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(str(MINILM_PATH), num_labels=2, **off)
    positions = max(512, seq_len)
    if name == "bert-base-shaped":
        config = BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=layers,
                            max_position_embeddings=positions, num_labels=2, **off)
    elif name == "tiny":
        config = BertConfig(vocab_size=30522, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                            num_hidden_layers=2, max_position_embeddings=positions, num_labels=2, **off)
    else:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODELS)}")
    return BertForSequenceClassification(config)


def random_examples(count: int, seq_len: int, vocab_size: int, seed: int, varied_lengths: bool) -> list[Batch]:
    """Random token ids (above the special ids) and random 2-class labels, one dict per example.

    Every position attended, or (`varied_lengths`) a random length in [seq_len / 4, seq_len] then
    right padding: the padding is what K-SAM trims from its kept rows.
    """
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, vocab_size // 2)
    examples = []
    for _ in range(count):
        length = int(torch.randint(max(2, seq_len // 4), seq_len + 1, (1,), generator=generator)) \
            if varied_lengths else seq_len
        mask = (torch.arange(seq_len) < length).long()
        ids = torch.randint(low, vocab_size, (seq_len,), generator=generator) * mask
        examples.append({"input_ids": ids, "token_type_ids": torch.zeros(seq_len, dtype=torch.long),
                         "attention_mask": mask, "labels": torch.randint(0, 2, (), generator=generator)})
    return examples


def collate(examples: list[Batch]) -> Batch:
    """Stack same-length examples into a batch (also usable as a Trainer's `data_collator`)."""
    return {key: torch.stack([e[key] for e in examples]) for key in examples[0]}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock interval covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile, linearly interpolated between order statistics (q = 0.5: the median)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return quantile(values, 0.5)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a timing depends on: platform, CPU / GPU, threads, library versions, the git commit
    and whether ksam_hf has uncommitted changes."""
    import accelerate
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device.type}
    if device.type == "cuda":
        info.update(cuda_device=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    try:
        def git(*command: str) -> str:
            return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()

        info["git_commit"] = git("rev-parse", "HEAD") or None
        info["ksam_hf_modified"] = bool(git("status", "--porcelain", "--", "ksam_hf"))
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def main(argv: list[str] | None = None) -> None:
    """`random-minilm --config DIR --out DIR`: a randomly initialised model of MiniLM's shape (its
    config and tokenizer from DIR), saved to `--out`: what a GPU session times when the pretrained
    weights cannot travel (random weights of the same shape take the same time)."""
    import argparse

    from transformers import BertConfig, BertForSequenceClassification

    parser = argparse.ArgumentParser(prog="python -m benchmarks.common", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("verb", choices=["random-minilm"])
    parser.add_argument("--config", type=Path, required=True, help="a folder with MiniLM's config.json and tokenizer")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig.from_pretrained(args.config, num_labels=2)).save_pretrained(args.out)
    for path in args.config.iterdir():
        if path.name != "config.json" and path.suffix in (".json", ".txt"):
            (args.out / path.name).write_bytes(path.read_bytes())
    print(f"a random model of {args.config}'s shape in {args.out}")


if __name__ == "__main__":
    main()
