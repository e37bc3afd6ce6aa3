"""Fine-tune a causal LM on chat data with TRL's SFT, LoRA adapters and a sharpness-aware step
(`KSAMSFTTrainer`): Bi-LoRA (`--sam_mode bi_lora`: SAM for LoRA in one forward and backward), Flat-LoRA
(`--sam_mode flat_lora`), or K-SAM (the default `ksam`).

With the Hub (a real model and dataset), Bi-LoRA at the paper's radius and auxiliary rank:

    python examples/sft_lora_ksam.py --model_name_or_path HuggingFaceTB/SmolLM2-135M-Instruct \
        --dataset_name trl-lib/Capybara --output_dir runs/smollm-bi-lora --packing True --bf16 True \
        --sam_mode bi_lora --sam_rho 0.05 --bi_lora_rank 8

Offline (what the repository's CI and this machine can run): a small randomly initialised Llama
with the tokenizer of `--tokenizer_name` and a chat dataset of arithmetic questions generated here:

    python examples/sft_lora_ksam.py --output_dir runs/sft-bi-lora --max_steps 40 --sam_mode bi_lora --sam_rho 0.05

Every `KSAMSFTConfig` field is a flag (`--sam_rho`, `--ksam_k`, `--packing`, `--assistant_only_loss`,
...). With packing, K-SAM ranks and keeps the original conversations inside the packed rows; the
auxiliary adapter of Bi-LoRA is never in what `save_model` writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import datasets
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, LlamaConfig, LlamaForCausalLM

from ksam_hf import KSAMSFTConfig, KSAMSFTTrainer

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}{% generation %}"
                 "{{ m['content'] }}{{ eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}\n"
                 "{% endfor %}")
"""For a tokenizer without a chat template (the offline one): `{% generation %}` marks the assistant's
tokens, which `assistant_only_loss` trains on."""


@dataclass
class ExampleArguments:
    """The model and the data; without `--model_name_or_path` / `--dataset_name`, the offline ones."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "A causal LM on the Hub or on disk."})
    tokenizer_name: str = field(default="../shared/models/all-MiniLM-L6-v2",
                                metadata={"help": "Tokenizer of the offline model (ignored with a model name)."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "A chat dataset with `messages` on the Hub."})
    examples: int = field(default=2000, metadata={"help": "Size of the generated dataset (offline)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})


def arithmetic_chats(count: int, seed: int = 0) -> datasets.Dataset:
    """Questions such as 'what is 12 plus 7?' with their answers, as `messages`."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        chats.append([{"role": "user", "content": f"what is {a} plus {b}?"},
                      {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}])
    return datasets.Dataset.from_dict({"messages": chats})


def offline_model(tokenizer_name: str):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config), tokenizer


def main() -> None:
    example_args, sft_args = HfArgumentParser((ExampleArguments, KSAMSFTConfig)).parse_args_into_dataclasses()
    if example_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(example_args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(example_args.model_name_or_path)
    else:
        model, tokenizer = offline_model(example_args.tokenizer_name)
    if example_args.dataset_name:
        train = datasets.load_dataset(example_args.dataset_name, split="train")
    else:
        train = arithmetic_chats(example_args.examples, seed=sft_args.seed)
    lora = LoraConfig(task_type="CAUSAL_LM", r=example_args.lora_r, lora_alpha=2 * example_args.lora_r,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    trainer = KSAMSFTTrainer(model=model, args=sft_args, train_dataset=train, processing_class=tokenizer,
                             peft_config=lora)
    trainer.model.print_trainable_parameters()
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main()
