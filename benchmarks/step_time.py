"""Step time of AdamW, SAM and K-SAM as `KSAMTrainer` runs them, against the cost they cannot avoid.

For each method a `KSAMTrainer` (built with `KSAMConfig(..., use_cpu=...)` and `create_optimizer()`)
runs exactly what the Trainer does per optimizer step:

    trainer.training_step(model, batch)
    trainer.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)   # max_grad_norm = 1.0
    optimizer.step()
    model.zero_grad(set_to_none=True)

Next to each method a "bound" runs, in plain PyTorch on the same model, optimizer and batch, only
the passes the method cannot avoid:

    AdamW: one forward+backward over the batch, then clip + optimizer step
    SAM:   two forward+backward over the batch (the first with torch.autograd.grad), clip + step
    K-SAM: one forward without gradients over the batch (per-example losses, top-k, the kept rows
           with their trailing padding trimmed by ksam_hf.selection), two forward+backward over
           the k kept rows (the first with torch.autograd.grad), clip + step. The ranking forward
           runs in eval mode, as KSAMTrainer's does by default (train mode for the dropout_rank
           variant; none for previous_loss).

measured / bound - 1 is what the library adds on top (its bookkeeping, the perturbation's vector
maths, copies, syncs). All runners (methods and bounds) are interleaved in one process: each round
runs one step of every runner, in an order rotated from round to round; after `--warmup` rounds,
`--steps` rounds are timed and the median is reported. Peak memory is measured afterwards, one
extra step per runner on the same (longest) batch. See docs/performance.md.

    python benchmarks/step_time.py --model minilm --inputs fixed
    python benchmarks/step_time.py --model minilm --inputs rte
    python benchmarks/step_time.py --model bert-base-shaped --layers 4 --inputs fixed
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from ksam_hf import KSAMConfig, KSAMTrainer  # noqa: E402
from ksam_hf.config import resolve_k  # noqa: E402
from ksam_hf.selection import select_rows, top_k_indices, trim_padding  # noqa: E402

MINILM_PATH = Path(os.environ.get("KSAM_BENCH_MINILM", "/work/shared/models/all-MiniLM-L6-v2"))
RTE_PATH = Path(os.environ.get("KSAM_BENCH_RTE", "/work/shared/glue/RTE/train.tsv"))
RTE_LABELS = {"entailment": 0, "not_entailment": 1}
MAX_GRAD_NORM = 1.0
BOUND_LIMIT = 1.05  # K-SAM measured / bound
KSAM_VS_ADAMW_LIMIT = 0.85  # K-SAM at k = 25 % / AdamW
KSAM_VS_ADAMW_K = 0.25
SAM_VS_ADAMW_LIMIT = 2.0
VARIANTS = {"dropout_rank": {"ksam_rank_without_dropout": False},
            "previous_loss": {"ksam_selection": "previous_loss"}}
"""K-SAM options other than the default ranking, timed at k = KSAM_VS_ADAMW_K."""
MEMORY_SLACK = 0.01  # of the parameters' bytes: small tensors (losses, indices) differ between the steps
MIB = 2.0 ** 20


# ----------------------------------------------------------------------------------------- options
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=["minilm", "bert-base-shaped", "tiny"], default="minilm",
                   help="minilm: the pretrained all-MiniLM-L6-v2 (22.7M params); bert-base-shaped: a random "
                        "BERT with hidden 768 / 12 heads / FFN 3072 and --layers layers; tiny: a tiny random "
                        "BERT, for smoke tests only")
    p.add_argument("--layers", type=int, default=4, help="layers of bert-base-shaped (BERT-base has 12)")
    p.add_argument("--inputs", choices=["fixed", "rte"], default="fixed",
                   help="fixed: random token ids, batch-size x seq-len, every position attended; rte: GLUE RTE "
                        "train batches, MiniLM tokenizer, truncated to seq-len, dynamic padding")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=30, help="timed rounds (one step of every runner per round)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--ks", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="K-SAM k, fractions of the batch")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                   help="also time K-SAM at k=0.25 ranking in train mode as the paper does, with dropout "
                        "(dropout_rank: ksam_rank_without_dropout=False), and with "
                        "ksam_selection='previous_loss' (previous_loss: every example has a remembered loss, so "
                        "the step skips the ranking forward pass)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--no-bound", action="store_true", help="time the methods only (half the run time)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one K-SAM step (and one AdamW step) with torch.profiler; writes the top ops "
                        "and the time per K-SAM phase")
    p.add_argument("--profile-k", type=float, default=None, help="k of the profiled K-SAM step (default: 0.25 "
                   "if in --ks, else the first)")
    p.add_argument("--output-dir", type=Path, default=REPO / "docs" / "performance")
    p.add_argument("--tag", default=None, help="file-name stem (default: step_time_<model>_<inputs>_<device>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if any(not 0 < k <= 1 for k in args.ks):
        p.error("--ks are fractions of the batch in (0, 1]")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    return args


# ----------------------------------------------------------------------------------------- model and data
def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model every runner gets a copy of (dropout as the model's config has it)."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(args.seed)
    if args.model == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(str(MINILM_PATH), num_labels=2)
    if args.model == "bert-base-shaped":
        config = BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                            num_hidden_layers=args.layers, max_position_embeddings=max(512, args.seq_len),
                            num_labels=2)
    else:  # tiny: the MiniLM tokenizer's vocabulary, so that --inputs rte works too
        config = BertConfig(vocab_size=30522, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                            num_hidden_layers=2, max_position_embeddings=max(512, args.seq_len), num_labels=2)
    return BertForSequenceClassification(config)


def fixed_batches(args: argparse.Namespace, vocab_size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """Random token ids (no special ids), every position attended, random labels."""
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, args.seq_len)
    low = min(1000, vocab_size // 2)
    return [{"input_ids": torch.randint(low, vocab_size, shape, generator=generator),
             "token_type_ids": torch.zeros(shape, dtype=torch.long),
             "attention_mask": torch.ones(shape, dtype=torch.long),
             "labels": torch.randint(0, 2, (args.batch_size,), generator=generator)}
            for _ in range(count)]


def rte_batches(args: argparse.Namespace, count: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` batches of GLUE RTE train in a seeded shuffle (cycled when the set runs out),
    tokenized with the MiniLM tokenizer, truncated to seq-len, padded to each batch's longest row."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    with open(RTE_PATH, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, rows = rows[0], rows[1:]
    col = {name: header.index(name) for name in ("sentence1", "sentence2", "label")}
    tokenizer = AutoTokenizer.from_pretrained(str(MINILM_PATH))
    collator = DataCollatorWithPadding(tokenizer)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(args.seed)).tolist()
    per_epoch = len(rows) // args.batch_size  # drop the short last batch: every batch has batch-size rows
    batches = []
    for b in range(min(count, per_epoch)):
        chosen = [rows[i] for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
        encoded = tokenizer([r[col["sentence1"]] for r in chosen], [r[col["sentence2"]] for r in chosen],
                            truncation=True, max_length=args.seq_len)
        features = [{key: encoded[key][i] for key in encoded} | {"labels": RTE_LABELS[r[col["label"]]]}
                    for i, r in enumerate(chosen)]
        batches.append(dict(collator(features)))
    return batches


def make_batches(args: argparse.Namespace, model: torch.nn.Module, device: torch.device):
    count = args.warmup + args.steps
    if args.inputs == "fixed":
        batches = fixed_batches(args, model.config.vocab_size, min(count, 16))
    else:
        batches = rte_batches(args, count)
    size = args.batch_size
    return [{**{k: v.to(device) for k, v in b.items()}, "idx": torch.arange(i * size, (i + 1) * size, device=device)}
            for i, b in enumerate(batches)]


# ----------------------------------------------------------------------------------------- runners
def make_trainer(model: torch.nn.Module, mode: str, k: float, args: argparse.Namespace, output_dir: str,
                 **options: Any):
    config = KSAMConfig(output_dir=output_dir, sam_mode=mode, ksam_k=k, sam_rho=args.rho, **options,
                        max_grad_norm=MAX_GRAD_NORM, use_cpu=args.device == "cpu", report_to="none",
                        seed=args.seed, per_device_train_batch_size=args.batch_size, save_strategy="no",
                        logging_strategy="no", disable_tqdm=True)
    trainer = KSAMTrainer(model=model, args=config)
    trainer.create_optimizer()
    return trainer


class MethodRunner:
    """One optimizer step as the Trainer's loop does it (no gradient accumulation)."""

    kind = "method"

    def __init__(self, name: str, mode: str, k: Optional[float], trainer):
        self.name, self.mode, self.k = name, mode, k
        self.trainer, self.model, self.optimizer = trainer, trainer.model, trainer.optimizer
        if trainer.sam.selection == "previous_loss":
            self.ranking = "memory"  # no ranking pass
        else:
            self.ranking = "eval" if trainer.sam.rank_without_dropout else "train"

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        trainer = self.trainer
        if self.ranking == "memory":
            # What a later epoch sees: every example has a loss from its previous visit (the values do not
            # matter for the time; they are drawn once per example).
            ids = batch["idx"]
            if not bool(torch.isfinite(trainer._loss_memory.lookup(ids)).all()):
                trainer._loss_memory.update(ids, torch.rand(ids.numel(), generator=torch.Generator().manual_seed(
                    int(ids[0]))))
        else:
            batch = without_ids(batch)
        trainer.training_step(self.model, batch)
        trainer.accelerator.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.model.zero_grad(set_to_none=True)


def without_ids(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if key != "idx"}


class BoundRunner:
    """The passes a method cannot avoid, in plain PyTorch, on the method's model and optimizer."""

    kind = "bound"

    def __init__(self, method: MethodRunner):
        self.name, self.mode, self.k = f"bound:{method.name}", method.mode, method.k
        self.ranking, self.method = method.ranking, method
        self.model, self.optimizer = method.model, method.optimizer
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {key: value for key, value in batch.items() if key not in ("labels", "idx")}
        return F.cross_entropy(self.model(**inputs).logits.float(), batch["labels"])

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        self.model.train()
        if self.mode == "none":
            self._loss(batch).backward()
        else:
            if self.mode == "ksam":
                size = batch["labels"].shape[0]
                if self.ranking == "memory":
                    losses = self.method.trainer._loss_memory.lookup(batch["idx"])
                else:
                    self.model.train(self.ranking == "train")
                    with torch.no_grad():
                        inputs = {key: value for key, value in batch.items() if key not in ("labels", "idx")}
                        logits = self.model(**inputs).logits.float()
                        losses = F.cross_entropy(logits, batch["labels"], reduction="none")
                    self.model.train()
                indices = top_k_indices(losses, torch.ones_like(losses), resolve_k(self.k, size))
                batch = trim_padding(select_rows(batch, indices.to(batch["labels"].device), size),
                                     decoder_labels=False)
            grads = torch.autograd.grad(self._loss(batch), self.params)
            del grads
            self._loss(batch).backward()
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_runners(args: argparse.Namespace, base: torch.nn.Module, device: torch.device, output_dir: str):
    """AdamW, SAM, K-SAM at each k (each on its own copy of the model), and their bounds."""
    specs = [("adamw", "none", None), ("sam", "sam", None)] + [(f"ksam@{k:g}", "ksam", k) for k in args.ks]
    methods = []
    for name, mode, k in specs:
        model = copy.deepcopy(base).to(device)
        methods.append(MethodRunner(name, mode, k, make_trainer(model, mode, k if k is not None else 0.25,
                                                                args, output_dir)))
    for variant in args.variants:
        model = copy.deepcopy(base).to(device)
        k = KSAM_VS_ADAMW_K
        methods.append(MethodRunner(f"ksam@{k:g}+{variant}", "ksam", k,
                                    make_trainer(model, "ksam", k, args, output_dir, **VARIANTS[variant])))
    bounds = [] if args.no_bound else [BoundRunner(m) for m in methods]
    return methods, bounds


# ----------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


def timed_step(runner, batch, device: torch.device) -> tuple[float, int]:
    """Seconds of one step, the device synchronised before and after; and the process's minor page
    faults during it (fresh memory touched for the first time: on CPU, large tensors that the
    allocator maps anew every step)."""
    _sync(device)
    faults = _minor_faults()
    start = time.perf_counter()
    runner.step(batch)
    _sync(device)
    return time.perf_counter() - start, _minor_faults() - faults


def run_rounds(runners: list, batches: list, args: argparse.Namespace, device: torch.device,
               log: Callable[[str], None]) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Round-robin: one step of every runner per round, the order rotated each round; warm-up rounds
    first (untimed). The garbage collector runs between rounds, not inside them."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    faults: dict[str, list[int]] = {r.name: [] for r in runners}
    total = args.warmup + args.steps
    started = time.perf_counter()
    for round_index in range(total):
        batch = batches[round_index % len(batches)]
        shift = round_index % len(runners)
        order = runners[shift:] + runners[:shift]
        gc.collect()
        gc.disable()
        try:
            for runner in order:
                seconds, page_faults = timed_step(runner, batch, device)
                if round_index >= args.warmup:
                    times[runner.name].append(seconds)
                    faults[runner.name].append(page_faults)
        finally:
            gc.enable()
        elapsed = time.perf_counter() - started
        eta = elapsed / (round_index + 1) * (total - round_index - 1)
        log(f"round {round_index + 1}/{total} ({'warm-up' if round_index < args.warmup else 'timed'}) "
            f"elapsed {elapsed:.0f}s, left ~{eta:.0f}s")
    return times, faults


# ----------------------------------------------------------------------------------------- memory
def cpu_step_peak(step: Callable[[], None]) -> float:
    """Peak, over one step, of the bytes allocated by torch's CPU allocator during that step and not yet
    freed (live bytes at the step's start, e.g. weights and optimizer state, are not counted): the
    running sum of the profiler's allocation / free events. oneDNN/MKL scratch memory that does not go
    through torch's allocator is not seen."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = _memory_events(prof)
    live = peak = 0
    for _, nbytes in sorted(events):
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def _memory_events(prof) -> list[tuple[int, int]]:
    """(time, signed bytes) of every CPU allocation and free the profiler saw: from the profiler's
    event list (a private API), else from its exported Chrome trace."""
    try:
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
        if events:
            return events
    except Exception:  # noqa: BLE001 - private API
        pass
    return _trace_memory_events(prof)


def _trace_memory_events(prof) -> list[tuple[int, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    return [(e["ts"], int(e["args"]["Bytes"])) for e in trace.get("traceEvents", [])
            if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0]


def cuda_step_peak(step: Callable[[], None], device: torch.device) -> float:
    """Peak bytes allocated on the device during one step, above what was allocated at its start."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - start)


def measure_memory(runners: list, batch: dict, device: torch.device) -> dict[str, float]:
    peaks = {}
    for runner in runners:
        gc.collect()
        step = functools.partial(runner.step, batch)
        peaks[runner.name] = cuda_step_peak(step, device) if device.type == "cuda" else cpu_step_peak(step)
    return peaks


# ----------------------------------------------------------------------------------------- profiling
@contextlib.contextmanager
def labelled_phases(trainer):
    """Label the phases of ksam_hf's step for the profiler (benchmark-side wrappers; the library is untouched)."""
    import ksam_hf.trainer as kt
    from torch.profiler import record_function

    def wrap(fn, label):
        @functools.wraps(fn)
        def wrapped(*a, **kw):
            with record_function(label):
                return fn(*a, **kw)
        return wrapped

    module_names = ["ascent_norm", "perturbation_", "perturb_weights_", "restore_weights_",
                    "select_rows", "trim_padding", "top_k_indices"]
    saved_module = {n: getattr(kt, n) for n in module_names if hasattr(kt, n)}
    instance_names = {"_select_top_k": "ksam/1 rank: no-grad forward + top-k + trim",
                      "_per_example_losses": "ksam/forward (model + per-example loss)",
                      "_descend": "ksam/3 descent: forward + backward at w+e"}
    original_grad = torch.autograd.grad
    try:
        for n, fn in saved_module.items():
            setattr(kt, n, wrap(fn, f"ksam/vec {n}" if n in module_names[:4] else f"ksam/sel {n}"))
        for n, label in instance_names.items():
            setattr(trainer, n, wrap(getattr(trainer, n), label))
        torch.autograd.grad = wrap(original_grad, "ksam/2 ascent backward (autograd.grad)")
        yield
    finally:
        torch.autograd.grad = original_grad
        for n, fn in saved_module.items():
            setattr(kt, n, fn)
        for n in instance_names:
            trainer.__dict__.pop(n, None)


def profiled_step(runner, batch) -> Callable[[], None]:
    from torch.profiler import record_function

    if getattr(runner, "ranking", "forward") != "memory":
        batch = without_ids(batch)

    def step():
        trainer, model = runner.trainer, runner.model
        with record_function("step/training_step"):
            trainer.training_step(model, batch)
        with record_function("step/clip_grad_norm"):
            trainer.accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        with record_function("step/optimizer.step"):
            runner.optimizer.step()
        with record_function("step/zero_grad"):
            model.zero_grad(set_to_none=True)
    return step


def profile_steps(methods: list, batch: dict, args: argparse.Namespace, device: torch.device,
                  stem: str) -> dict[str, Any]:
    """Profile one step each of K-SAM (at --profile-k) and AdamW; write their top-op tables."""
    from torch.profiler import ProfilerActivity, profile

    k = args.profile_k if args.profile_k is not None else (
        KSAM_VS_ADAMW_K if KSAM_VS_ADAMW_K in args.ks else args.ks[0])
    by_name = {m.name: m for m in methods}
    chosen = [by_name.get(f"ksam@{k:g}"), by_name["adamw"]]
    if chosen[0] is None:  # a k that is not among --ks: a trainer of its own, on a copy of AdamW's model
        model = copy.deepcopy(by_name["adamw"].model)
        chosen[0] = MethodRunner(f"ksam@{k:g}", "ksam", k, make_trainer(model, "ksam", k, args,
                                                                         by_name["adamw"].trainer.args.output_dir))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    results: dict[str, Any] = {}
    for runner in chosen:
        step = profiled_step(runner, batch)
        for _ in range(2):  # warm
            step()
        _sync(device)
        context = labelled_phases(runner.trainer) if runner.mode == "ksam" else contextlib.nullcontext()
        with context, profile(activities=activities, record_shapes=False) as prof:
            step()
            _sync(device)
        averages = prof.key_averages()
        table = averages.table(sort_by=sort_by, row_limit=40, max_name_column_width=60)
        phases = {e.key: {"cpu_total_ms": e.cpu_time_total / 1e3, "count": e.count}
                  for e in averages if e.key.startswith(("ksam/", "step/"))}
        def self_time(e):
            return getattr(e, "self_device_time_total", 0) if device.type == "cuda" else e.self_cpu_time_total

        ops = [{"op": e.key, "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                "cpu_total_ms": e.cpu_time_total / 1e3}
               | ({"self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3} if device.type == "cuda" else {})
               for e in sorted(averages, key=lambda e: -self_time(e))
               if not e.key.startswith(("ksam/", "step/"))][:40]
        path = args.output_dir / f"{stem}_profile_{runner.name.replace('@', '_k')}.txt"
        with open(path, "w") as f:
            f.write(f"# torch.profiler, one {runner.name} step, {args.model} {args.inputs} "
                    f"{args.batch_size}x{args.seq_len} on {device.type} (profiler overhead included)\n\n")
            f.write("## phases (inclusive CPU time; record_function labels set by the benchmark)\n\n")
            for key, value in sorted(phases.items()):
                f.write(f"{key:<60} {value['cpu_total_ms']:10.2f} ms  x{value['count']}\n")
            f.write("\n## top ops by self time\n\n" + table + "\n")
        results[runner.name] = {"file": path.name, "phases": phases, "top_ops": ops}
    return results


def vector_ops_time(model: torch.nn.Module, device: torch.device, repeats: int = 7) -> dict[str, float]:
    """Median ms of SAM's per-step vector maths over all trainable parameters: ksam_hf.sharpness's
    norm + scale + save copy + w+e + restore, and a minimal alternative (norm, w += a g, w -= a g)."""
    from ksam_hf.sharpness import ascent_norm, perturb_weights_, perturbation_, restore_weights_

    params = [p for p in model.parameters() if p.requires_grad]
    backup = [p.detach().clone() for p in params]

    def library():
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        _sync(device)
        start = time.perf_counter()
        norm = float(ascent_norm(grads, params, False))
        perturbation_(grads, params, 0.05, norm, False)
        saved = [p.data for p in params]
        perturb_weights_(params, grads)
        restore_weights_(params, saved)
        _sync(device)
        return time.perf_counter() - start

    @torch.no_grad()
    def minimal():
        grads = [torch.randn_like(p) * 1e-3 for p in params]
        _sync(device)
        start = time.perf_counter()
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2))))
        scale = 0.05 / (norm + 1e-12)
        torch._foreach_add_(params, grads, alpha=scale)
        torch._foreach_add_(params, grads, alpha=-scale)
        _sync(device)
        return time.perf_counter() - start

    try:
        out = {}
        for name, fn in (("library_ms", library), ("minimal_ms", minimal)):
            fn()
            out[name] = 1e3 * statistics.median(fn() for _ in range(repeats))
        return out
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, backup)


# ----------------------------------------------------------------------------------------- report
def machine_info(device: torch.device) -> dict[str, Any]:
    import transformers

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "device": device.type}
    try:
        import accelerate
        info["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        model_name = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")]
        info["cpu_model"] = model_name[0] if model_name else None
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ksam_hf"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        info["git_commit"] = commit or None
        info["ksam_hf_modified"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(methods, bounds, times, faults, peaks, param_bytes, args) -> tuple[list[dict], list[dict]]:
    """One row per method (with its bound); the targets, each PASS / FAIL."""
    median = {name: statistics.median(values) for name, values in times.items()}
    adamw = median["adamw"]
    adamw_peak = peaks.get("adamw")
    rows, targets = [], []
    for m in methods:
        values = times[m.name]
        bound_name = f"bound:{m.name}"
        row = {"method": m.name, "mode": m.mode, "k": m.k if m.k is not None else "",
               "k_examples": resolve_k(m.k, args.batch_size) if m.k is not None else args.batch_size,
               "median_ms": 1e3 * median[m.name], "p25_ms": 1e3 * quantile(values, 0.25),
               "p75_ms": 1e3 * quantile(values, 0.75), "ratio_to_adamw": median[m.name] / adamw,
               "bound_ms": 1e3 * median[bound_name] if bound_name in median else "",
               "measured_over_bound": median[m.name] / median[bound_name] if bound_name in median else "",
               "overhead_ms": 1e3 * (median[m.name] - median[bound_name]) if bound_name in median else "",
               "peak_step_mib": peaks[m.name] / MIB,
               "bound_peak_step_mib": peaks[bound_name] / MIB if bound_name in peaks else "",
               "peak_over_adamw_mib": (peaks[m.name] - adamw_peak) / MIB,
               "params_mib": param_bytes / MIB,
               "page_faults": statistics.median(faults[m.name]),
               "bound_page_faults": statistics.median(faults[bound_name]) if bound_name in faults else ""}
        checks = []
        if m.mode == "ksam" and bound_name in median:
            checks.append(("measured/bound", row["measured_over_bound"], BOUND_LIMIT))
        if m.mode == "ksam" and math.isclose(m.k, KSAM_VS_ADAMW_K):
            checks.append(("x AdamW", row["ratio_to_adamw"], KSAM_VS_ADAMW_LIMIT))
        if m.mode == "sam":
            checks.append(("x AdamW", row["ratio_to_adamw"], SAM_VS_ADAMW_LIMIT))
        if m.mode != "none":
            checks.append(("peak MiB", row["peak_step_mib"], (adamw_peak + (1 + MEMORY_SLACK) * param_bytes) / MIB))
        verdicts = []
        for what, value, limit in checks:
            ok = bool(value <= limit)
            targets.append({"method": m.name, "target": f"{what} <= {limit:.4g}", "value": value,
                            "limit": limit, "pass": ok})
            verdicts.append(f"{what} {value:.3f}<={limit:.3g} {'PASS' if ok else 'FAIL'}"
                            if what != "peak MiB" else f"mem {value:.0f}<={limit:.0f}MiB {'PASS' if ok else 'FAIL'}")
        row["targets"] = "; ".join(verdicts)
        rows.append(row)
    return rows, targets


def format_table(rows: list[dict]) -> str:
    def fmt(value, spec):
        if isinstance(value, (int, float)):
            return format(value, spec)
        width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
        return format("-", f"<{width}" if spec.startswith("<") else f">{width}")

    head = (f"{'method':<10} {'k':>3} {'median ms':>10} {'IQR ms':>15} {'xAdamW':>7} {'bound ms':>9} "
            f"{'/bound':>7} {'peak MiB':>9} {'faults':>7} {'bd flt':>7}  targets")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<10} {r['k_examples']:>3} {fmt(r['median_ms'], '10.1f')} "
                     f"{fmt(r['p25_ms'], '7.1f')}-{fmt(r['p75_ms'], '<7.1f')} {fmt(r['ratio_to_adamw'], '7.3f')} "
                     f"{fmt(r['bound_ms'], '9.1f')} {fmt(r['measured_over_bound'], '7.3f')} "
                     f"{fmt(r['peak_step_mib'], '9.1f')} {fmt(r['page_faults'], '7.0f')} "
                     f"{fmt(r['bound_page_faults'], '7.0f')}  {r['targets']}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_mode = {r["method"]: r for r in rows}
    ksam = sorted((r for r in rows if r["mode"] == "ksam"), key=lambda r: r["k"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [r["k"] for r in ksam]
    ax.errorbar(xs, [r["median_ms"] for r in ksam],
                yerr=[[r["median_ms"] - r["p25_ms"] for r in ksam], [r["p75_ms"] - r["median_ms"] for r in ksam]],
                fmt="o-", color="C2", capsize=3, label="K-SAM (median, IQR)")
    if all(isinstance(r["bound_ms"], float) for r in ksam):
        ax.plot(xs, [r["bound_ms"] for r in ksam], "--", color="C2", alpha=0.7, label="K-SAM bound")
    for name, color, label in (("adamw", "C0", "AdamW"), ("sam", "C3", "SAM")):
        r = by_mode[name]
        ax.axhline(r["median_ms"], color=color, label=label)
        if isinstance(r["bound_ms"], float):
            ax.axhline(r["bound_ms"], color=color, linestyle=":", alpha=0.7, label=f"{label} bound")
    ax.set_xlabel("k (fraction of the batch kept by K-SAM)")
    ax.set_ylabel("step time (ms, median)")
    ax.set_xlim(0, max(xs + [0.5]) * 1.08)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


# ----------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"step_time_{args.model}{args.layers if args.model == 'bert-base-shaped' else ''}" \
                       f"_{args.inputs}_{args.device}"
    started = _dt.datetime.now(_dt.timezone.utc)

    base = build_model(args)
    batches = make_batches(args, base, device)
    param_bytes = sum(p.numel() * p.element_size() for p in base.parameters() if p.requires_grad)
    log(f"{args.model}: {sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters; {len(batches)} "
        f"{args.inputs} batches of {args.batch_size} (padded lengths "
        f"{sorted({int(b['input_ids'].shape[1]) for b in batches})}); device {device}; "
        f"{torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory(prefix="ksam_bench_") as output_dir:
        methods, bounds = build_runners(args, base, device, output_dir)
        del base
        runners = methods + bounds
        times, faults = run_rounds(runners, batches, args, device, log)
        memory_batch = max(batches, key=lambda b: b["input_ids"].shape[1])
        log("memory: one more step per runner on the longest batch")
        peaks = measure_memory(runners, memory_batch, device)
        vector_ops = vector_ops_time(methods[0].model, device)
        profiles = profile_steps(methods, memory_batch, args, device, stem) if args.profile else None

    rows, targets = summarise(methods, bounds, times, faults, peaks, param_bytes, args)
    title = (f"{args.model}{f' ({args.layers} layers)' if args.model == 'bert-base-shaped' else ''}, "
             f"{args.inputs} {args.batch_size}x{args.seq_len}, {device.type}, {torch.get_num_threads()} threads")
    table = format_table(rows)
    print(f"\n{title}; median of {args.steps} interleaved steps after {args.warmup} warm-up rounds\n{table}")
    print(f"SAM vector maths per step (all {param_bytes / MIB:.0f} MiB of parameters): ksam_hf.sharpness "
          f"{vector_ops['library_ms']:.1f} ms, minimal (norm, w+=ae, w-=ae) {vector_ops['minimal_ms']:.1f} ms")
    failed = [t for t in targets if not t["pass"]]
    print(f"targets: {len(targets) - len(failed)}/{len(targets)} PASS"
          + (": FAIL " + ", ".join(f"{t['method']} {t['target']}" for t in failed) if failed else ""))

    csv_path, json_path, png_path = (args.output_dir / f"{stem}.{ext}" for ext in ("csv", "json", "png"))
    write_csv(rows, csv_path)
    plot(rows, png_path, title)
    result = {
        "benchmark": "benchmarks/step_time.py", "started_utc": started.isoformat(timespec="seconds"),
        "command": "python benchmarks/step_time.py " + " ".join(sys.argv[1:] if argv is None else argv),
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
        "peak_step_bytes": peaks,
        "step_times_s": times,  # per runner, in timed-round order
        "step_minor_page_faults": faults,
        "runner_order": [r.name for r in runners],
        "profile": profiles,
    }
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {csv_path}, {json_path}, {png_path}" + (
        ", " + ", ".join(p["file"] for p in profiles.values()) if profiles else ""))
    return result


if __name__ == "__main__":
    main()
