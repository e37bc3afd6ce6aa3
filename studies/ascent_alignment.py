"""How far does a partial perturbation reach along SAM's? The cosine between SAM's ascent direction
(the batch's gradient) and each cheaper rule's direction, during AdamW training on the SAM-wins cell.

A rule's e = rho d / ||d|| moves the weights rho cos(d, g_B) along SAM's direction g_B / ||g_B||: at
the same rho, a rule whose direction is at cosine 0.5 to the batch's perturbs half as far along it.
Directions, per batch of 32: the 8 highest losses' gradient (top_k_ascent's ascent), 8 and 4 rows
drawn at random (random_ascent at 1/4, 1/8), AdamW's first moment, negated (momentum's e points
along -m), and a Gaussian draw (random_direction). Measured at the weights AdamW reaches after a
few numbers of steps on the noisy sample (the same sample, noise and order for every rule),
averaged over `--batches` batches each.

    python -m studies.ascent_alignment --output docs/results/frontier/ascent_alignment.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from benchmarks.common import MINILM_PATH, machine_info
from glue_scripts.glue_data import load_glue_tsv
from glue_scripts.training_split import flip_labels, parse_row_range, seeded_sample, split_rows

REPO = Path(__file__).resolve().parents[1]


def batches(tokenizer, glue_dir: str, seed: int, size: int, noise: float, batch_size: int,
            heldout_rows: str = "62349:67349") -> list[dict]:
    """The run's training sample (run_glue's `--test_split_rows`, `--train_sample`, `--label_noise` with
    the same seed), in a seeded order."""
    train, _ = split_rows(load_glue_tsv(glue_dir, "sst2", ["train"])["train"], parse_row_range(heldout_rows))
    sample, _ = flip_labels(seeded_sample(train, size, seed), noise, seed, [0, 1])
    order = np.random.default_rng(seed).permutation(len(sample))
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        rows = sample.select(order[start:start + batch_size].tolist())
        encoded = tokenizer(list(rows["sentence"]), padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append({**encoded, "labels": torch.tensor(list(rows["label"]))})
    return out


def gradient(model, batch: dict, rows: Optional[list[int]] = None) -> torch.Tensor:
    """The flattened gradient of the mean loss over `rows` of the batch (all rows: None)."""
    if rows is not None:
        batch = {key: value[rows] for key, value in batch.items()}
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def measure(model, optimizer, batch: dict, generator: torch.Generator) -> dict[str, float]:
    """Cosines of each rule's direction with the batch's gradient (the model in train mode, dropout
    off: the same function for every direction)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}).logits,
                                                   batch["labels"], reduction="none")
    size = len(losses)
    full = gradient(model, batch)
    top = torch.topk(losses, size // 4).indices.sort().values.tolist()
    result = {"top_k_ascent (top 1/4)": cosine(gradient(model, batch, top), full)}
    for share in (4, 8):
        drawn = torch.randperm(size, generator=generator)[: size // share].sort().values.tolist()
        result[f"random_ascent 1/{share}"] = cosine(gradient(model, batch, drawn), full)
    moments = [optimizer.state[p].get("exp_avg") for p in params]
    if all(m is not None for m in moments):
        result["momentum (-m)"] = cosine(-torch.cat([m.reshape(-1) for m in moments]), full)
    result["random_direction"] = cosine(torch.randn(full.numel(), generator=generator), full)
    return result


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "glue"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train_sample", type=int, default=1000)
    parser.add_argument("--label_noise", type=float, default=0.3)
    parser.add_argument("--at_steps", type=int, nargs="+", default=[0, 30, 100, 200])
    parser.add_argument("--batches", type=int, default=6, help="batches measured at each step")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_PATH))
    model = AutoModelForSequenceClassification.from_pretrained(str(MINILM_PATH), num_labels=2, hidden_dropout_prob=0.0,
                                                               attention_probs_dropout_prob=0.0)
    model.train()
    data = batches(tokenizer, args.glue_dir, args.seed, args.train_sample, args.label_noise, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    rows, step, started = [], 0, time.time()
    for target in sorted(args.at_steps):
        while step < target:
            batch = data[step % len(data)]
            optimizer.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            optimizer.step()
            step += 1
        measured = [measure(model, optimizer, data[(step + i) % len(data)], generator) for i in range(args.batches)]
        means = {name: float(np.mean([m[name] for m in measured])) for name in measured[0]}
        rows.append({"step": step, **{name: round(value, 4) for name, value in means.items()}})
        print(f"step {step}: " + ", ".join(f"{name} {value:.3f}" for name, value in means.items()), flush=True)
    result = {"benchmark": "ascent_alignment", "args": {k: str(v) for k, v in vars(args).items()},
              "machine": machine_info(torch.device("cpu")), "seconds": round(time.time() - started, 1), "rows": rows}
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
