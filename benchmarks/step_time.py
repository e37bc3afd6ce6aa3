"""Step time of AdamW, SAM and K-SAM as `KSAMTrainer` runs them, against the cost they cannot avoid.

For each method a `KSAMTrainer` (built with `KSAMConfig(..., use_cpu=...)` and `create_optimizer()`)
runs exactly what the Trainer does per optimizer step:

    trainer.training_step(model, batch)
    trainer.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)   # max_grad_norm = 1.0
    optimizer.step()
    model.zero_grad(set_to_none=True)

Methods: adamw, sam, ksam@K for each --ks with ksam_selection='loss_sampled' (both passes on k
examples: the step K-SAM's cost claim is about; the library's default, top_k_ascent, descends on the
whole batch), and at k = 0.25 the variants +top_k (the paper's rule), +top_k_ascent (the library's
default: the ascent on the top k, the descent on the whole batch), +dropout_rank (ranking in train
mode) and +previous_loss (ksam_hf.experimental's trainer, its memory filled first so that every
batch ranks from memory); then the cheap rules (--cheap-rules): random_ascent@0.25 and @0.125,
momentum, random_direction, sam_every_2 (SAM on every second step; its median is over the mix).

Next to each method a "bound" runs, in plain PyTorch on the same model, optimizer and batch, only
the passes the method cannot avoid (benchmarks/runners.py says how the bound of K-SAM picks its
rows: the library's selection rule on its own ranking):

    AdamW: one forward+backward over the batch, then clip + optimizer step
    SAM:   two forward+backward over the batch (the first with torch.autograd.grad), clip + step
    K-SAM: the ranking (a forward without gradients over the batch, in eval mode as KSAMTrainer
           ranks by default, train mode for +dropout_rank; a memory read for +previous_loss), the
           selection rule, the kept rows cut by ksam_hf.rows, two forward+backward over them (the
           first with torch.autograd.grad; +top_k_ascent: the second over the batch), clip + step

measured / bound - 1 is what the library adds on top (its bookkeeping, the perturbation's vector
maths, copies, syncs). All runners (methods and bounds) are interleaved in one process: each round
runs one step of every runner, in an order rotated from round to round; after `--warmup` rounds,
`--steps` rounds are timed and the median is reported. Peak memory is measured afterwards, one
extra step per runner on the same (longest) batch. `--profile` profiles one K-SAM and one AdamW
step and reports the time of the `ksam/*` regions KSAMTrainer labels itself (rank, ascent,
descent, restore). Results go to --output-dir (default runs/benchmarks/, ignored by git); a file
of an earlier run is never replaced without --overwrite. See docs/performance.md.

    python -m benchmarks.step_time --model minilm --inputs fixed --profile
    python -m benchmarks.step_time --model minilm --inputs rte
    python -m benchmarks.step_time --model minilm --inputs sst2 --ks 0.25 --variants top_k top_k_ascent
    python -m benchmarks.step_time --model bert-base-shaped --layers 4 --inputs fixed
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from . import measure, report
from .common import MIB, MINILM_PATH, MODEL_HELP, MODELS, REPO, Batch, build_model, collate, machine_info, \
    random_examples
from .runners import CHEAP_RULES, KSAM_SELECTION, VARIANT_K, VARIANTS, Method, MethodRunner, TrainerSettings, build_runners, \
    group_methods, make_trainer, methods_to_time

GLUE_BATCHES = {
    # --inputs: (train file, text columns, label column, label ids)
    "rte": (Path(os.environ.get("KSAM_BENCH_RTE", "/work/shared/glue/RTE/train.tsv")), ("sentence1", "sentence2"),
            "label", {"entailment": 0, "not_entailment": 1}),
    "sst2": (Path(os.environ.get("KSAM_BENCH_SST2", "/work/shared/glue/SST-2/train.tsv")), ("sentence",), "label",
             {"0": 0, "1": 1}),
}
"""Real GLUE batches: RTE's sentence pairs (long), SST-2's phrases (short: 13 tokens on average)."""
DEFAULT_OUTPUT_DIR = REPO / "runs" / "benchmarks"


# ----------------------------------------------------------------------------------------- options
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_time", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="minilm", help=MODEL_HELP)
    p.add_argument("--layers", type=int, default=4, help="layers of bert-base-shaped (BERT-base has 12)")
    p.add_argument("--inputs", choices=["fixed", *GLUE_BATCHES], default="fixed",
                   help="fixed: random token ids, batch-size x seq-len, every position attended; sst2: GLUE "
                        "SST-2 train batches (short phrases), as rte below; rte: GLUE RTE "
                        "train batches, MiniLM tokenizer, truncated to seq-len, dynamic padding")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=30, help="timed rounds (one step of every runner per round)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--ks", type=float, nargs="+", default=[0.1, 0.25, 0.5],
                   help="K-SAM k (ksam_selection='loss_sampled'), fractions of the batch")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                   help=f"also time K-SAM at k={VARIANT_K:g} with ksam_selection='top_k' (top_k, the paper's "
                        "rule) and 'top_k_ascent' (top_k_ascent, the library's default), ranking in train mode "
                        "as the paper does (dropout_rank: "
                        "ksam_rank_without_dropout=False), and ranking by remembered losses (previous_loss: "
                        "ksam_hf.experimental's PreviousLossKSAMTrainer; every example has a remembered loss, "
                        "so the step skips the ranking forward pass)")
    p.add_argument("--cheap-rules", nargs="*", default=list(CHEAP_RULES), choices=list(CHEAP_RULES),
                   help="also time the field's cheap SAMs: random_ascent at k = 1/4 and 1/8 (no ranking pass), "
                        "momentum (Momentum-SAM), random_direction (the control), SAM on every 2nd step")
    p.add_argument("--group-sizes", type=int, nargs="*", default=[],
                   help="also time m-SAM (SAM with sam_group_size m: one perturbation per group of m examples) "
                        "for each m, e.g. 1 4 8")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: mixed precision (bf16 autocast, fp32 weights), methods and bounds alike; on a CPU "
                        "only where it has AVX-512 bf16 or AMX (read lscpu's flags first)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--no-bound", action="store_true", help="time the methods only (half the run time)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one K-SAM step and one AdamW step with torch.profiler; writes the time "
                        "of the library's ksam/* phases and the top ops")
    p.add_argument("--profile-k", type=float, default=None,
                   help=f"k of the profiled K-SAM step (default: {VARIANT_K:g} if in --ks, else the first)")
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    p.add_argument("--tag", default=None, help="file-name stem (default: step_time_<model>_<inputs>_<device>)")
    p.add_argument("--overwrite", action="store_true", help="replace files of an earlier run with the same tag")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if any(m < 1 for m in args.group_sizes):
        p.error("--group-sizes are whole numbers of examples >= 1")
    if any(not 0 < k < 1 for k in args.ks + ([args.profile_k] if args.profile_k is not None else [])):
        p.error("--ks and --profile-k are fractions of the batch in (0, 1)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.profile_k is None:
        args.profile_k = VARIANT_K if VARIANT_K in args.ks else args.ks[0]
    return args


# ----------------------------------------------------------------------------------------- batches
def glue_batches(task: str, batch_size: int, seq_len: int, seed: int, count: int) -> list[Batch]:
    """The first `count` batches of a GLUE task's train file (`GLUE_BATCHES`) in a seeded shuffle
    (fewer if one epoch has fewer), tokenized with the MiniLM tokenizer, truncated to seq-len, padded
    to each batch's longest row."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    path, texts, label, label_ids = GLUE_BATCHES[task]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = rows[0], rows[1:]
    col = {name: header.index(name) for name in (*texts, label)}
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_PATH))
    collator = DataCollatorWithPadding(tokenizer)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    per_epoch = len(rows) // batch_size  # drop the short last batch: every batch has batch-size rows
    batches = []
    for b in range(min(count, per_epoch)):
        chosen = [rows[i] for i in order[b * batch_size:(b + 1) * batch_size]]
        encoded = tokenizer(*[[r[col[text]] for r in chosen] for text in texts], truncation=True, max_length=seq_len)
        features = [{key: encoded[key][i] for key in encoded} | {"labels": label_ids[r[col[label]]]}
                    for i, r in enumerate(chosen)]
        batches.append(dict(collator(features)))
    return batches


def make_batches(args: argparse.Namespace, vocab_size: int, device: torch.device) -> list[Batch]:
    """One batch per round (fixed inputs: at most 16 distinct, cycled), on the device, each with
    an `idx` column of example ids."""
    count = args.warmup + args.steps
    if args.inputs == "fixed":
        batches = [collate(random_examples(args.batch_size, args.seq_len, vocab_size, args.seed + i,
                                           varied_lengths=False)) for i in range(min(count, 16))]
    else:
        batches = glue_batches(args.inputs, args.batch_size, args.seq_len, args.seed, count)
    size = args.batch_size
    return [{**{k: v.to(device) for k, v in b.items()}, "idx": torch.arange(i * size, (i + 1) * size, device=device)}
            for i, b in enumerate(batches)]


# ----------------------------------------------------------------------------------------- main
def profile_runners(methods: list[MethodRunner], profile_k: float, settings: TrainerSettings,
                    ) -> list[MethodRunner]:
    """K-SAM at `profile_k` (a trainer of its own, on a copy of AdamW's model, if it is not timed) and AdamW."""
    by_name = {m.name: m for m in methods}
    name = f"ksam@{profile_k:g}"
    ksam = by_name.get(name)
    if ksam is None:
        method = Method(name, "ksam", profile_k, options=KSAM_SELECTION)
        ksam = MethodRunner(method, make_trainer(method, copy.deepcopy(by_name["adamw"].model), settings))
    return [ksam, by_name["adamw"]]


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    log: Callable[[str], None] = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    stem = args.tag or (f"step_time_{args.model}{args.layers if args.model == 'bert-base-shaped' else ''}"
                        f"_{args.inputs}{'_bf16' if args.dtype == 'bf16' else ''}_{args.device}")
    profiled = [f"ksam@{args.profile_k:g}", "adamw"] if args.profile else []
    paths = report.output_paths(args.output_dir, stem, profiled)
    if not args.overwrite:
        report.refuse_overwrite(paths)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)

    base = build_model(args.model, layers=args.layers, seq_len=args.seq_len, seed=args.seed)
    batches = make_batches(args, base.config.vocab_size, device)
    param_bytes = sum(p.numel() * p.element_size() for p in base.parameters() if p.requires_grad)
    log(f"{args.model}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters; {len(batches)} "
        f"{args.inputs} batches of {args.batch_size} (padded lengths "
        f"{sorted({int(b['input_ids'].shape[1]) for b in batches})}); device {device}; "
        f"{torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory(prefix="ksam_bench_") as trainer_dir:
        settings = TrainerSettings(rho=args.rho, seed=args.seed, batch_size=args.batch_size,
                                   use_cpu=args.device == "cpu", output_dir=trainer_dir, bf16=args.dtype == "bf16")
        timed = methods_to_time(args.ks, args.variants, tuple(args.cheap_rules)) + group_methods(args.group_sizes)
        methods, bounds = build_runners(timed, base, device, settings, batches, with_bounds=not args.no_bound)
        del base
        runners = methods + bounds
        times, faults = measure.run_rounds(runners, batches, args.warmup, args.steps, device, log)
        memory_batch = max(batches, key=lambda b: b["input_ids"].shape[1])
        log("memory: one more step per runner on the longest batch")
        peaks = measure.measure_memory(runners, memory_batch, device)
        vector_ops = measure.vector_ops_time(methods[0].model, device, args.rho)
        profiles = {r.name: measure.profile_step(r, memory_batch, device)
                    for r in profile_runners(methods, args.profile_k, settings)} if args.profile else {}

    rows, targets = report.summarise(methods, times, faults, peaks, param_bytes, args.batch_size)
    title = (f"{args.model}{f' ({args.layers} layers)' if args.model == 'bert-base-shaped' else ''}, "
             f"{args.inputs} {args.batch_size}x{args.seq_len}, {args.dtype}, {device.type}, "
             f"{torch.get_num_threads()} threads")
    print(f"\n{title}; median of {args.steps} interleaved steps after {args.warmup} warm-up rounds\n"
          f"{report.format_table(rows)}")
    print(f"SAM vector maths per step (all {param_bytes / MIB:.0f} MiB of parameters): ksam_hf.sharpness "
          f"{vector_ops['library_ms']:.1f} ms, minimal (norm, w+=ae, w-=ae) {vector_ops['minimal_ms']:.1f} ms")
    failed = [t for t in targets if not t["pass"]]
    print(f"targets: {len(targets) - len(failed)}/{len(targets)} PASS"
          + (": FAIL " + ", ".join(f"{t['method']} {t['target']}" for t in failed) if failed else ""))

    csv_path, json_path, png_path, *profile_paths = paths
    report.write_csv(rows, csv_path)
    report.plot(rows, png_path, title)
    for name, path in zip(profiled, profile_paths):
        report.write_profile(profiles[name], path, f"torch.profiler, one {name} step, {args.model} {args.inputs} "
                             f"{args.batch_size}x{args.seq_len} on {device.type}")
    result = {
        "benchmark": "benchmarks.step_time", "started_utc": started.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.step_time " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(device),
        "model": {"name": args.model, "parameters": sum(p.numel() for p in methods[0].model.parameters()),
                  "trainable_bytes": param_bytes},
        "batches": {"count": len(batches), "padded_lengths": [int(b["input_ids"].shape[1]) for b in batches],
                    "memory_batch_length": int(memory_batch["input_ids"].shape[1])},
        "memory_measure": ("torch.cuda.max_memory_allocated during one step minus memory_allocated at its start"
                           if device.type == "cuda" else
                           "peak of bytes allocated by torch's CPU allocator during one step and not yet freed "
                           "(torch.profiler profile_memory events), above the step's start"),
        "rows": rows, "targets": targets, "sam_vector_ops": vector_ops,
        "methods": {m.name: m.record() for m in methods},
        "peak_step_bytes": peaks,
        "step_times_s": times,  # per runner, in timed-round order
        "step_minor_page_faults": faults,
        "runner_order": [r.name for r in runners],
        "profile": {name: {"file": path.name} | {k: v for k, v in profiles[name].items() if k != "table"}
                    for name, path in zip(profiled, profile_paths)} or None,
    }
    report.write_json(result, json_path)
    print("wrote " + ", ".join(str(p) for p in paths))
    return result


if __name__ == "__main__":
    main()
