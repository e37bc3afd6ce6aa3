"""Step time of every rule on a causal LM fine-tuned with LoRA: the LoRA modes (LoRA AdamW, LoRA-SAM,
Bi-LoRA, Flat-LoRA) and, with `--rules all`, K-SAM's rules, Momentum-SAM and the control, paired.

Each runner is a `KSAMTrainer` over its own copy of one PEFT LoRA model (r 16 on the attention and
MLP projections, random weights: nothing is downloaded) and runs one optimizer step as the Trainer's
loop does: `training_step`, clip, Bi-LoRA's ascent (the Trainer runs it before the optimizer steps),
the optimizer step, zero the gradients. Flat-LoRA draws a new noise every step, as in training (its
sigma held at the papers' 0.05 by a step halfway through a run). The runners are interleaved round
by round (`benchmarks.measure.run_rounds`); the figure is the median over the timed rounds of each
step over LoRA AdamW's in the same round. Passes: LoRA AdamW, Bi-LoRA and Flat-LoRA one forward and
backward, LoRA-SAM two; Bi-LoRA and Flat-LoRA's bound is thus LoRA AdamW's step.

`--packed`: the micro-batch's B x T tokens are sequences of 64 to 512 tokens, flattened into one row
by TRL's own collator (`DataCollatorForLanguageModeling(padding_free=True)`, what `SFTTrainer` with
`packing=True` feeds the model: `position_ids` restarting at 0, no attention mask), so that K-SAM
ranks and keeps sequences. Beside each figure: its pass bound (`benchmarks.bound_table`'s pricing,
a pass in proportion to its rows: the ranking a third of a forward and backward) and, packed, the
same bound priced by the tokens the rule's passes actually took (k sequences of unequal lengths
are not k/B of the tokens), read from each timed step's selection.

    python -m benchmarks.lora_step_time --shape cpu-small                  # a 4-layer Qwen2, 4 x 256 tokens
    python -m benchmarks.lora_step_time --shape cpu-small --rules all --packed
    python -m benchmarks.lora_step_time --shape qwen2-0.5b --device cuda --rules all --packed   # 0.5B, bf16, 4 x 2048
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from . import measure
from ksam_hf.packing import sequence_ids

from .bound_table import PASS_BOUNDS, RANK
from .common import REPO, machine_info, median
from .report import paired_ratios

SHAPES = {
    # name: (Llama/Qwen2 config fields, batch, sequence length, dtype)
    "cpu-small": (dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=8000), 4, 256, torch.float32),
    "qwen2-0.5b": (dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True), 4, 2048, torch.bfloat16),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
METHODS = {"lora_adamw": dict(sam_mode="none"), "lora_sam": dict(sam_mode="sam", sam_rho=0.05),
           "bi_lora": dict(sam_mode="bi_lora", sam_rho=0.05), "flat_lora": dict(sam_mode="flat_lora", sam_rho=0.05)}
OTHER_RULES = {
    "top_k_ascent": dict(sam_mode="ksam", ksam_selection="top_k_ascent", ksam_k=0.25, sam_rho=0.05),
    "loss_sampled": dict(sam_mode="ksam", ksam_selection="loss_sampled", ksam_k=0.25, sam_rho=0.05),
    "top_k": dict(sam_mode="ksam", ksam_selection="top_k", ksam_k=0.25, sam_rho=0.05),
    "random_ascent": dict(sam_mode="ksam", ksam_selection="random_ascent", ksam_k=0.25, sam_rho=0.05),
    "momentum": dict(sam_mode="momentum", sam_rho=0.05),
    "random_direction": dict(sam_mode="random_direction", sam_rho=0.05),
}
PASSES = {name: PASS_BOUNDS[rule][1] for name, rule in {
    "lora_adamw": "adamw", "lora_sam": "sam", "bi_lora": "adamw", "flat_lora": "adamw",
    "top_k_ascent": "ksam@0.25+top_k_ascent", "loss_sampled": "ksam@0.25", "top_k": "ksam@0.25+top_k",
    "random_ascent": "random_ascent@0.25", "momentum": "momentum", "random_direction": "random_direction"}.items()}
"""The pass bound, in LoRA AdamW's steps (`benchmarks.bound_table`'s pricing; Bi-LoRA and Flat-LoRA:
one forward and backward, as LoRA AdamW's)."""


def packed_batch(tokens: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`tokens` cut into sequences of 64 to 512 tokens and collated as TRL's SFT collates a packed
    micro-batch: one row, `position_ids` restarting at 0 at each sequence, every token labelled."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    sequences, start = [], 0
    while start < tokens.numel():
        length = int(torch.randint(64, 513, (), generator=generator))
        sequences.append({"input_ids": tokens[start:start + length].tolist()})
        start += length
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, return_tensors="pt")(sequences)


def token_bound(name: str, shares: list[tuple[float, float]]) -> Optional[float]:
    """The pass bound priced by tokens: the ranking pass (a third of a forward and backward over the
    batch) where the rule ranks, plus the ascent's and the descent's shares of the batch's tokens,
    averaged over the timed steps; None for a rule that selects nothing."""
    if not shares:
        return None
    ascent, descent = (sum(column) / len(shares) for column in zip(*shares))
    return (0.0 if name == "random_ascent" else RANK) + ascent + descent


def build(shape: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    fields, _, seq_len, dtype = SHAPES[shape]
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=max(seq_len, 512), **fields))
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=TARGETS))
    return model.to(device, dtype)


class Runner:
    """One optimizer step of a LoRA mode through its trainer."""

    def __init__(self, name: str, model: torch.nn.Module, output_dir: str, use_cpu: bool, bf16: bool) -> None:
        from ksam_hf import KSAMConfig, KSAMTrainer

        self.name = name
        args = KSAMConfig(output_dir=output_dir, use_cpu=use_cpu, bf16=bf16, report_to="none", save_strategy="no",
                          max_grad_norm=1.0, learning_rate=1e-4, **{**METHODS, **OTHER_RULES}[name])
        self.trainer = KSAMTrainer(model=model, args=args)
        self.trainer.create_optimizer()
        self.trainer.state.global_step, self.trainer.state.max_steps = 500, 1000  # sigma_t = sigma / 2 for Flat-LoRA
        self.model = model
        self.selections: list[tuple[torch.Tensor, Any]] = []  # (the batch's position_ids, its Selected)

    def token_shares(self) -> list[tuple[float, float]]:
        """Each recorded step's (ascent, descent) tokens over the batch's."""
        shares = []
        for position_ids, selected in self.selections:
            tokens = torch.bincount(sequence_ids(position_ids.cpu())).float()
            shares.append((float(tokens[selected.ascent.cpu()].sum() / tokens.sum()),
                           float(tokens[selected.descent.cpu()].sum() / tokens.sum())))
        return shares

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        trainer = self.trainer
        trainer.sam_statistics.last_selected = None
        trainer.training_step(self.model, dict(batch))
        selected = trainer.sam_statistics.last_selected
        if selected is not None and not selected.whole_batch and "position_ids" in batch:
            self.selections.append((batch["position_ids"], selected))  # priced after the timing
        trainer.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.name == "bi_lora":
            trainer.lora_sam.ascend(1.0)
        trainer.optimizer.step()
        self.model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1  # a new noise draw every step


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_step_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="cpu-small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rules", choices=["lora", "all"], default="lora",
                        help="lora: the four LoRA modes; all: also K-SAM's rules, Momentum-SAM and the control")
    parser.add_argument("--packed", action="store_true", help="rows of packed sequences (padding-free, as SFT packs)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", type=Path, default=REPO / "runs" / "benchmarks" / "lora_step_time.json")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    _, batch_size, seq_len, dtype = SHAPES[args.shape]
    base = build(args.shape, device)
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        ids = torch.randint(10, base.config.vocab_size, (batch_size, seq_len), generator=generator)
        if args.packed:
            batches.append({key: value.to(device) if torch.is_tensor(value) else value
                            for key, value in packed_batch(ids.reshape(-1), generator).items()})
        else:
            ids = ids.to(device)
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    started = _dt.datetime.now(_dt.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="ksam_lora_bench_") as folder:
        names = list(METHODS) + (list(OTHER_RULES) if args.rules == "all" else [])
        runners = [Runner(name, copy.deepcopy(base), folder, use_cpu=device.type == "cpu",
                          bf16=dtype == torch.bfloat16) for name in names]
        times, _ = measure.run_rounds(runners, batches, args.warmup, args.steps, device, lambda line: print(line, flush=True))
    ratios = paired_ratios(times, baseline="lora_adamw")
    bounds = {runner.name: token_bound(runner.name, runner.token_shares()[args.warmup:]) for runner in runners}
    rows = [{"method": name, "median_ms": 1e3 * median(times[name]), "paired_ratio_to_lora_adamw": ratios[name][0],
             "pass_bound": PASSES[name], "token_bound": bounds[name],
             "overhead_ms": 1e3 * (median(times[name]) - (bounds[name] or PASSES[name]) * median(times["lora_adamw"]))}
            for name in names]
    trainable = sum(p.numel() for p in base.parameters() if p.requires_grad)
    title = (f"{args.shape}: {sum(p.numel() for p in base.parameters()) / 1e6:.0f}M parameters "
             f"({trainable / 1e6:.1f}M LoRA r16 on {', '.join(TARGETS)}), {batch_size} x {seq_len} tokens"
             f"{' as packed sequences of 64-512 in one row (TRL padding-free)' if args.packed else ''}, "
             f"{str(dtype).split('.')[-1]}, {device.type}; "
             f"median of {args.steps} interleaved steps")
    print(title)
    print("method             median ms   x LoRA AdamW (paired)   pass bound x   by tokens x   "
          "overhead ms (step - bound x AdamW's; by tokens where priced)")
    for row in rows:
        by_tokens = "—" if row["token_bound"] is None else f"{row['token_bound']:.2f}"
        print(f"{row['method']:<18} {row['median_ms']:>9.1f}   {row['paired_ratio_to_lora_adamw']:>21.3f}   "
              f"{row['pass_bound']:>12.2f}   {by_tokens:>11}   {row['overhead_ms']:>10.1f}")
    result = {"benchmark": "benchmarks.lora_step_time", "started_utc": started.isoformat(timespec="seconds"),
              "command": "python -m benchmarks.lora_step_time " + " ".join(sys.argv[1:] if argv is None else argv),
              "title": title, "machine": machine_info(device), "rows": rows, "step_times_s": times}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
