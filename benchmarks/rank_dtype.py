"""K-SAM's ranking pass in bf16 (`ksam_rank_dtype="bfloat16"`) against fp32, on real MiniLM batches:
what it costs, and how often it keeps other examples.

MiniLM (its pretrained encoder, a new 2-class head) is first fine-tuned on GLUE batches with AdamW
for `--train-steps` steps (a ranking at the random head's initialisation, where every loss is near
ln 2, would exaggerate the disagreement), then on `--batches` other batches: each batch is ranked in
eval mode in fp32 and under bf16 autocast (interleaved, the order alternating), the two passes are
timed, and the top k = `--k` of each ranking compared. Prints, and writes to --output as JSON:
the median time of each pass, their ratio, the mean share of kept examples that differ, and the
share of batches whose kept sets are identical.

    python -m benchmarks.rank_dtype --inputs sst2
    python -m benchmarks.rank_dtype --inputs rte
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .common import MINILM_PATH, REPO, machine_info, median
from .step_time import GLUE_BATCHES, glue_batches


def losses(model: torch.nn.Module, batch: dict, bf16: bool) -> tuple[torch.Tensor, float]:
    """Per-example cross-entropy of a ranking pass (eval mode, no gradients) and its wall time."""
    started = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    values = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
    return values, time.perf_counter() - started


def top_k(values: torch.Tensor, k: int) -> set[int]:
    return set(torch.topk(values, k).indices.tolist())


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", choices=list(GLUE_BATCHES), default="sst2")
    parser.add_argument("--model", type=Path, default=MINILM_PATH)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--k", type=float, default=0.25, help="share of the batch kept")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(str(args.model), num_labels=2)
    batches = glue_batches(args.inputs, args.batch_size, args.seq_len, args.seed, args.train_steps + args.batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for batch in batches[:args.train_steps]:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    k = math.ceil(args.k * args.batch_size)
    times = {"float32": [], "bfloat16": []}
    differing, identical, mean_loss = [], 0, []
    for index, batch in enumerate(batches[args.train_steps:]):
        order = (False, True) if index % 2 == 0 else (True, False)
        results = {bf16: losses(model, batch, bf16) for bf16 in order}
        times["float32"].append(results[False][1])
        times["bfloat16"].append(results[True][1])
        kept32, kept16 = top_k(results[False][0], k), top_k(results[True][0], k)
        differing.append(len(kept32 - kept16) / k)
        identical += kept32 == kept16
        mean_loss.append(float(results[False][0].mean()))
    result = {
        "benchmark": "benchmarks.rank_dtype", "inputs": args.inputs, "batch_size": args.batch_size, "k": k,
        "train_steps": args.train_steps, "batches": len(differing), "machine": machine_info(torch.device("cpu")),
        "median_ms": {name: 1e3 * median(values) for name, values in times.items()},
        "bf16_over_fp32": median(times["bfloat16"]) / median(times["float32"]),
        "mean_share_of_kept_differing": sum(differing) / len(differing),
        "share_of_batches_identical": identical / len(differing),
        "mean_fp32_loss": sum(mean_loss) / len(mean_loss),
    }
    print(f"MiniLM, {args.inputs} batches of {args.batch_size}, k = {k}, after {args.train_steps} AdamW steps "
          f"(mean ranking loss {result['mean_fp32_loss']:.3f}), {len(differing)} batches:")
    print(f"  ranking pass: fp32 {result['median_ms']['float32']:.1f} ms, bf16 {result['median_ms']['bfloat16']:.1f} ms "
          f"(bf16 / fp32 = {result['bf16_over_fp32']:.2f})")
    print(f"  kept sets: {100 * result['mean_share_of_kept_differing']:.1f} % of the kept examples differ on average; "
          f"{100 * result['share_of_batches_identical']:.0f} % of batches keep the same set")
    output = args.output or REPO / "runs" / "benchmarks" / f"rank_dtype_{args.inputs}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
