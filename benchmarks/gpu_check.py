"""GPU check of KSAMTrainer: fp16 / bf16 SAM and K-SAM gradients against fp32, and step times.

1. Gradients. One `training_step` from the same weights and batch, in fp32 (the reference), bf16
   (`KSAMConfig(bf16=True)`) and fp16 (`KSAMConfig(fp16=True)`: autocast and a GradScaler; the
   gradient is divided by the scaler's scale, and the scale halved and the step retried if the
   scaled gradient overflowed, as the Trainer would). Reported per (precision, mode): the cosine
   similarity of the flattened gradient with fp32's, the relative norm of the difference, and for
   K-SAM whether the same rows were kept (`trainer.sam_statistics.last_selected`, ascent and
   descent). Dropout is off and the RNG reseeded before each step, so that the only difference is
   the arithmetic. A row passes when its gradient is finite and its cosine reaches the
   precision's minimum (--min-cosine-bf16 / --min-cosine-fp16).

   "selection differs": K-SAM at the lower precision kept other rows than in fp32, so its
   gradient is over other examples and its cosine cannot judge the precision. Near-equal losses
   swapping order (top_k) or crossing a sampling boundary (loss_sampled) under bf16 / fp16
   rounding is expected of correct arithmetic; whether the arithmetic is correct is what the SAM
   row of the same precision measures (the same step without a selection). So such a row counts as
   passed if, and only if, that SAM row passes: a selection difference neither hides a failure the
   SAM row shows nor passes when nothing vouches for the arithmetic.

   Any failed row (an error included) makes the script exit with status 1.
2. Step times. `KSAMTrainer.train()` for `--warmup + --steps` optimizer steps per (method,
   precision), methods AdamW (`sam_mode="none"`), SAM and K-SAM; each optimizer step is timed from
   `on_step_begin` to `on_step_end` (the device synchronised at both ends); the median, 10th and
   90th percentiles of the last `--steps` are reported, with the peak memory of the run.

On a machine without CUDA it prints that it was skipped and exits with status 0 (writing
`{"skipped": true, ...}` to `--output` if given). `--device cpu` runs the same logic on the CPU,
for a smoke test on a tiny model (there accelerate autocasts bf16 only: the fp16 rows then match
fp32 exactly and there is no GradScaler, so they check the plumbing, not fp16):

    python -m benchmarks.gpu_check --output runs/benchmarks/gpu_check.json     # on a GPU machine
    python -m benchmarks.gpu_check --device cpu --model tiny --steps 2 --warmup 1 --batch-size 8 --seq-len 16
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from ksam_hf import KSAMConfig, KSAMTrainer
from ksam_hf.selection import SELECTION_RULES

from .common import MINILM_PATH, MODEL_HELP, MODELS, MIB, Batch, build_model, collate, machine_info, median, \
    quantile, random_examples, synchronize

METHODS = {"adamw": "none", "sam": "sam", "ksam": "ksam"}
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_SELECTION = KSAMConfig.__dataclass_fields__["ksam_selection"].default


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cpu: a smoke test of the same logic (fp16 then runs without a GradScaler)")
    p.add_argument("--model", choices=("auto",) + MODELS, default="auto",
                   help=f"auto: minilm ({MINILM_PATH}) if present, else bert-base-shaped (12 layers). {MODEL_HELP}")
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="comma-separated, from " + ",".join(PRECISIONS))
    p.add_argument("--methods", default="adamw,sam,ksam",
                   help="timed methods, comma-separated, from " + ",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--k", type=float, default=0.25, help="K-SAM's ksam_k (below 1 a fraction of the batch)")
    p.add_argument("--selection", choices=list(SELECTION_RULES), default=DEFAULT_SELECTION,
                   help="K-SAM's ksam_selection")
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per (method, precision)")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-cosine-bf16", type=float, default=0.99)
    p.add_argument("--min-cosine-fp16", type=float, default=0.999)
    p.add_argument("--no-timing", action="store_true", help="the gradient check only")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    args.methods = [x for x in args.methods.split(",") if x]
    if not set(args.precisions) <= set(PRECISIONS) or "fp32" not in args.precisions:
        p.error(f"--precisions must include fp32 and be among {PRECISIONS}")
    if not set(args.methods) <= set(METHODS):
        p.error(f"--methods must be among {tuple(METHODS)}")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def resolve_model_name(args: argparse.Namespace) -> str:
    if args.model != "auto":
        return args.model
    return "minilm" if (MINILM_PATH / "config.json").is_file() else "bert-base-shaped"


def config_for(args: argparse.Namespace, output_dir: str, precision: str, mode: str, **extra: Any) -> KSAMConfig:
    return KSAMConfig(output_dir=output_dir, report_to="none", use_cpu=args.device == "cpu", sam_mode=mode,
                      sam_rho=args.rho, ksam_k=args.k, ksam_selection=args.selection, fp16=precision == "fp16",
                      bf16=precision == "bf16", seed=args.seed, disable_tqdm=True, save_strategy="no", **extra)


# ----------------------------------------------------------------------------------------- 1. gradients
def one_step_gradient(args: argparse.Namespace, base: torch.nn.Module, batch: Batch, precision: str, mode: str,
                      output_dir: str) -> tuple[torch.Tensor, Optional[dict[str, list[int]]], float, int]:
    """(flat fp32 gradient / loss scale, the rows K-SAM kept or None, loss scale, retries) of one
    `training_step`."""
    model = copy.deepcopy(base)
    trainer = KSAMTrainer(model=model, args=config_for(args, output_dir, precision, mode))
    # What train() does first: accelerate's prepare wraps forward in autocast (bf16 / fp16); the
    # Trainer's own compute_loss_context_manager adds none.
    prepared = trainer.accelerator.prepare_model(model)
    scaler = getattr(trainer.accelerator, "scaler", None)
    scaler = scaler if scaler is not None and scaler.is_enabled() else None
    for retry in range(12):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(args.seed)  # loss_sampled draws from the global RNG: the same draw every time
        trainer.training_step(prepared, dict(batch))
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        flat = torch.cat([(torch.zeros(p.numel(), device=p.device) if p.grad is None else p.grad.float().flatten())
                          for p in model.parameters() if p.requires_grad]) / scale
        if bool(torch.isfinite(flat).all()) or scaler is None:
            break
        scaler.update(new_scale=scale / 2)  # what the Trainer's skipped step does on overflow
    selected = trainer.sam_statistics.last_selected
    kept = None if selected is None else {"ascent": selected.ascent.tolist(), "descent": selected.descent.tolist()}
    return flat.cpu(), kept, scale, retry


def gradient_check(args: argparse.Namespace, model_name: str, output_dir: str) -> list[dict[str, Any]]:
    """One row per (lower precision, mode), judged by `judge`."""
    base = build_model(model_name, seq_len=args.seq_len, seed=args.seed, dropout=False)
    batch = collate(random_examples(args.batch_size, args.seq_len, base.config.vocab_size, args.seed + 1,
                                    varied_lengths=True))
    rows = []
    for mode in ("sam", "ksam"):
        reference, reference_kept, _, _ = one_step_gradient(args, base, batch, "fp32", mode, output_dir)
        for precision in [p for p in args.precisions if p != "fp32"]:
            try:
                grad, kept, scale, retries = one_step_gradient(args, base, batch, precision, mode, output_dir)
            except Exception as error:  # e.g. bf16 on a GPU without it: report (as failed), go on
                rows.append({"precision": precision, "mode": mode, "error": f"{type(error).__name__}: {error}"})
                continue
            finite = bool(torch.isfinite(grad).all())
            g, r = grad.double(), reference.double()  # float32 sums over millions of entries drift past 1
            cosine = float(g @ r / (g.norm() * r.norm())) if finite else float("nan")
            relative = float((g - r).norm() / r.norm()) if finite else float("nan")
            same = kept == reference_kept
            minimum = args.min_cosine_bf16 if precision == "bf16" else args.min_cosine_fp16
            if not finite or (same and cosine < minimum):
                status = "FAIL"
            else:
                status = "PASS" if same else "selection differs"
            rows.append({"precision": precision, "mode": mode, "cosine": cosine, "relative_error": relative,
                         "finite": finite, "same_selection": same, "loss_scale": scale, "overflow_retries": retries,
                         "min_cosine": minimum, "status": status})
    judge(rows)
    return rows


def judge(rows: list[dict[str, Any]]) -> None:
    """Set each row's `passed`: PASS passes; FAIL and errors fail; "selection differs" passes only
    if the SAM row of the same precision passes (see the module docstring)."""
    sam_passed = {r["precision"] for r in rows if r["mode"] == "sam" and r.get("status") == "PASS"}
    for row in rows:
        status = row.get("status")
        row["passed"] = status == "PASS" or (status == "selection differs" and row["precision"] in sam_passed)


# ----------------------------------------------------------------------------------------- 2. step times
class StepTimer(TrainerCallback):
    """Times each optimizer step of `Trainer.train()`, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.start = device, [], 0.0

    def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
        synchronize(self.device)
        self.start = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        synchronize(self.device)
        self.times.append(time.perf_counter() - self.start)


def time_steps(args: argparse.Namespace, model_name: str, output_dir: str) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    base = build_model(model_name, seq_len=args.seq_len, seed=args.seed, dropout=True)
    total = args.warmup + args.steps
    dataset = random_examples(total * args.batch_size, args.seq_len, base.config.vocab_size, args.seed + 2,
                              varied_lengths=True)
    rows = []
    for precision in args.precisions:
        for method in args.methods:
            timer = StepTimer(device)
            model = copy.deepcopy(base)
            try:
                trainer = KSAMTrainer(model=model, train_dataset=dataset, data_collator=collate, callbacks=[timer],
                                      args=config_for(args, output_dir, precision, METHODS[method], max_steps=total,
                                                      per_device_train_batch_size=args.batch_size,
                                                      logging_strategy="no", dataloader_num_workers=0))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                trainer.train()
            except Exception as error:
                rows.append({"method": method, "precision": precision, "error": f"{type(error).__name__}: {error}"})
                continue
            timed = timer.times[args.warmup:]
            rows.append({"method": method, "precision": precision, "steps": len(timed),
                         "median_ms": 1e3 * median(timed), "p10_ms": 1e3 * quantile(timed, 0.1),
                         "p90_ms": 1e3 * quantile(timed, 0.9),
                         "peak_memory_mib": torch.cuda.max_memory_allocated() / MIB if device.type == "cuda" else None})
            del trainer, model
    for row in rows:  # relative to AdamW at the same precision
        adamw = next((r for r in rows if r["method"] == "adamw" and r["precision"] == row["precision"]
                      and "median_ms" in r), None)
        if adamw is not None and "median_ms" in row:
            row["vs_adamw"] = row["median_ms"] / adamw["median_ms"]
    return rows


# ----------------------------------------------------------------------------------------- report
def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec)


def print_tables(results: dict[str, Any]) -> None:
    machine = results["machine"]
    print(f"\nK-SAM GPU check: {results['model']} on {machine.get('cuda_device') or machine['processor']}, batch "
          f"{results['batch_size']} x {results['seq_len']} tokens, k={results['k']} ({results['selection']}), "
          f"rho={results['rho']}, torch {machine['torch']}")
    print("\nGradient after one training_step, against fp32 (dropout off)")
    print(f"{'precision':<10}{'mode':<6}{'cosine':>12}{'rel. error':>12}{'same kept':>11}{'scale':>10}  status")
    for r in results["gradient_check"]:
        if "error" in r:
            print(f"{r['precision']:<10}{r['mode']:<6}  error: {r['error']} -> FAIL")
            continue
        verdict = f" -> {'PASS' if r['passed'] else 'FAIL'}" if r["status"] == "selection differs" else ""
        print(f"{r['precision']:<10}{r['mode']:<6}{fmt(r['cosine'], '.6f'):>12}{fmt(r['relative_error'], '.2e'):>12}"
              f"{str(r['same_selection']):>11}{fmt(r['loss_scale'], '.0f'):>10}  {r['status']}{verdict}")
    if results.get("timing"):
        print(f"\nOptimizer step time (median of {results['timing_steps']} after {results['timing_warmup']} warm-up)")
        print(f"{'method':<8}{'precision':<10}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'vs AdamW':>10}"
              f"{'peak MiB':>10}")
        for r in results["timing"]:
            if "error" in r:
                print(f"{r['method']:<8}{r['precision']:<10}  error: {r['error']}")
                continue
            print(f"{r['method']:<8}{r['precision']:<10}{r['median_ms']:>11.2f}{r['p10_ms']:>9.2f}{r['p90_ms']:>9.2f}"
                  f"{fmt(r.get('vs_adamw'), '.2f'):>10}{fmt(r['peak_memory_mib'], '.0f'):>10}")


def write_json(path: Optional[Path], results: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    print(f"\nwrote {path}")


def main(argv: Optional[list[str]] = None) -> int:
    """0 when every gradient check passed (or CUDA is absent: skipped), 1 otherwise."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        message = "gpu_check skipped: CUDA is not available on this machine (use --device cpu for a smoke test)"
        print(message)
        write_json(args.output, {"skipped": True, "reason": message, "torch": torch.__version__})
        return 0
    model_name = resolve_model_name(args)
    results: dict[str, Any] = {
        "skipped": False, "device": args.device, "model": model_name, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "k": args.k, "selection": args.selection, "rho": args.rho, "seed": args.seed,
        "machine": machine_info(torch.device(args.device)),
    }
    with tempfile.TemporaryDirectory() as output_dir:
        results["gradient_check"] = gradient_check(args, model_name, output_dir)
        if not args.no_timing:
            results["timing_steps"], results["timing_warmup"] = args.steps, args.warmup
            results["timing"] = time_steps(args, model_name, output_dir)
    print_tables(results)
    write_json(args.output, results)
    failed = [r for r in results["gradient_check"] if not r["passed"]]
    if failed:
        print(f"\n{len(failed)} gradient check(s) failed: "
              + ", ".join(f"{r['precision']} {r['mode']}" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
