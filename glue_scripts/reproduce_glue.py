"""Reproduce the paper's GLUE comparison: tasks x methods x seeds through `run_glue.py`.

Each run is a subprocess of `glue_scripts/run_glue.py`; its `all_results.json` becomes one row of
`results.jsonl` (raw, appended as runs finish). A run already in that file (same task, method,
seed and hyper-parameters) is skipped, so the script can be stopped and started again. After
every run it rewrites the summary: `results.csv`, `results.md` (mean +- std per task and method,
average over tasks, step and training time relative to AdamW) and `score_vs_time.png`.

    python glue_scripts/reproduce_glue.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \
        --glue_dir ../shared/glue --tasks rte mrpc cola stsb sst2 --methods adamw sam ksam --seeds 1 2 3

A method is `adamw`, `sgd`, `sam` or `ksam`, optionally with overrides after `@`:
`ksam@k=0.1@rho=0.1@selection=previous_loss` (k = `ksam_k`, rho = `sam_rho`, selection =
`ksam_selection`, adaptive = `sam_adaptive`, rank_without_dropout = `ksam_rank_without_dropout`).
Used for the sweep of k and rho, too.

A grid of several settings (data size, label noise, epochs) is a spec file run cell by cell,
`--spec glue_scripts/grids/sam_wins_pilot.json` (see `run_spec`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from scipy import stats
from transformers import HfArgumentParser

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from ksam_hf import KSAMConfig  # noqa: E402
from glue_scripts.glue_data import glue_task, load_glue_tsv  # noqa: E402
from glue_scripts.glue_metrics import input_blind_baseline  # noqa: E402

TASK_ORDER = ("rte", "mrpc", "cola", "stsb", "sst2", "qnli", "mnli", "qqp", "wnli")
"""The order of the tables' columns."""
RUN_GLUE = Path(__file__).resolve().parent / "run_glue.py"
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "combined_score", "mrpc": "combined_score",
               "qqp": "combined_score", "sst2": "accuracy", "mnli": "accuracy", "qnli": "accuracy",
               "rte": "accuracy", "wnli": "accuracy"}


@dataclass
class ReproductionArguments:
    """What to run, and the hyper-parameters shared by every run."""

    model_name_or_path: str = field(metadata={"help": "Pretrained model (Hub name or local directory)."})
    glue_dir: Optional[str] = field(default=None, metadata={"help": "Original GLUE TSV release (offline)."})
    tasks: list[str] = field(default_factory=lambda: ["rte", "mrpc", "cola", "stsb", "sst2"])
    methods: list[str] = field(default_factory=lambda: ["adamw", "sam", "ksam"])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    results_dir: str = field(default="docs/results", metadata={"help": "Where results.jsonl/csv/md/png go."})
    runs_dir: str = field(default="runs/glue", metadata={"help": "Per-run output directories (not committed)."})
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 32
    num_train_epochs: float = 3.0
    warmup_ratio: float = field(default=0.1, metadata={"help": "Warm-up, as a fraction of the steps."})
    weight_decay: float = 0.01
    max_seq_length: int = 128
    group_by_length: bool = field(
        default=True, metadata={"help": "Batches of examples of similar length (less padding; what the grid uses)."})
    sam_rho: float = 0.05
    ksam_k: str = "0.25"
    max_train_samples: list[str] = field(
        default_factory=list,
        metadata={"help": "Per-task caps on the training set, as task=N (e.g. sst2=8000); default: full."})
    train_sample: Optional[int] = field(
        default=None, metadata={"help": "Train on N examples drawn at random (seeded by the run's seed: the same "
                                        "N for every method of a seed)."})
    label_noise: float = field(
        default=0.0, metadata={"help": "Flip this share of the training labels (seeded by the run's seed)."})
    test_split_rows: list[str] = field(
        default_factory=list,
        metadata={"help": "Per-task held-out blocks of the training file, as task=A:B (e.g. sst2=62349:67349): "
                          "never trained on, scored after training (`heldout_score` in the row)."})
    eval_every_epoch: bool = field(
        default=False, metadata={"help": "Score the dev set after every epoch (`epochs` in the row); the row's "
                                         "score stays the final model's."})
    keep_weights: bool = field(
        default=False, metadata={"help": "Keep each run's model in its run folder (by default a run keeps its "
                                         "logs, metrics and trainer state only: ~90 MB a MiniLM run)."})
    min_free_gb: float = field(
        default=5.0, metadata={"help": "Refuse to start a run with less free disk than this (GB) under --runs_dir."})
    baseline: str = field(default="adamw", metadata={"help": "Method that times are relative to."})
    reuse_runs_from: list[str] = field(
        default_factory=list,
        metadata={"help": "Other results.jsonl files, read in order: their runs whose settings are exactly those of a "
                          "run of this grid are recorded here under this grid's method name (marked `reused_from`) "
                          "instead of being run again."})
    summarize_only: bool = field(default=False, metadata={"help": "Rewrite the summary from results.jsonl."})
    plan_only: bool = field(
        default=False,
        metadata={"help": "List the grid's runs in the order they run, each done, reused or to run, and stop."})


METHODS = ("adamw", "sgd", "sam", "ksam", "momentum", "random_direction")
"""Method names: run_glue.py's `--optimizer` values."""
KEYED_SAM_FIELDS = ("sam_rho", "ksam_k", "ksam_selection", "ksam_uniform_mix", "ksam_loss_share", "sam_adaptive",
                    "ksam_rank_without_dropout", "sam_sync_ascent")
"""The `KSAMConfig` fields written out with their defaults into every SAM run's settings (those of the
committed grids); a field added since (the SAM schedules) is written only when a spec sets it, so
that the committed runs keep their keys."""

OVERRIDABLE_TRAINING_FIELDS = ("learning_rate", "num_train_epochs", "model_name_or_path")
"""Settings a method spec may set besides the `KSAMConfig` SAM fields: a learning-rate grid is a list
of methods (`adamw@learning_rate=5e-5`), a warm start another model and fewer epochs."""


def normalized(value: str) -> str:
    """A number as the grid writes it (`1e-4` and `0.0001` are one setting); other text as given."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and number >= 1 else str(number)


def method_settings(method: str, args: ReproductionArguments) -> dict[str, str]:
    """run_glue.py arguments of a method spec such as `ksam@ksam_k=0.1@sam_rho=0.01`.

    SAM methods get every `KSAMConfig` field that applies to them written out (the grid's
    `sam_rho`/`ksam_k`, the library's defaults for the rest, then the spec's overrides), so that a
    run's key does not change when a library default does. A grid that must outlive a change of
    default names the field in its specs.
    """
    name, *overrides = method.split("@")
    if name not in METHODS:
        raise ValueError(f"--methods: unknown method {name!r} in {method!r}: use {', '.join(METHODS)}.")
    settings = {"optimizer": name}
    sam_fields = {f.name: f.default for f in dataclasses.fields(KSAMConfig)
                  if f.name in KSAMConfig.sam_field_names() and f.name != "sam_mode"}
    if name not in ("adamw", "sgd"):
        for field_name, default in sam_fields.items():
            if field_name in KEYED_SAM_FIELDS and (name == "ksam" or not field_name.startswith("ksam_")):
                settings[field_name] = normalized(str(default))
        settings["sam_rho"] = normalized(str(args.sam_rho))
        if name == "ksam":
            settings["ksam_k"] = normalized(args.ksam_k)
    allowed = list(sam_fields) + list(OVERRIDABLE_TRAINING_FIELDS)
    for override in overrides:
        key, _, value = override.partition("=")
        if key not in allowed or not value:
            raise ValueError(f"--methods: {override!r} in {method!r} is not FIELD=VALUE for one of "
                             f"{', '.join(allowed)}.")
        settings[key] = normalized(value)
    return {key: value for key, value in settings.items() if value != "None"}


def task_caps(max_train_samples: list[str]) -> dict[str, int]:
    """`["sst2=20000"]` -> `{"sst2": 20000}`: the first N training examples of a task."""
    return {task: int(count) for task, count in per_task(max_train_samples, "--max_train_samples", "TASK=N",
                                                          "sst2=20000", str.isdigit).items()}


def per_task(items: list[str], option: str, form: str, example: str, valid=bool) -> dict[str, str]:
    """`["sst2=62349:67349"]` -> `{"sst2": "62349:67349"}`; a one-line error for an item not `form`."""
    values = {}
    for item in items:
        task, _, value = item.partition("=")
        if not valid(value):
            raise ValueError(f"{option}: {item!r} is not {form} (e.g. {example}).")
        values[task] = value
    return values


def run_settings(task: str, method: str, seed: int, args: ReproductionArguments) -> dict[str, str]:
    """Every run_glue.py argument of one run except the output directory."""
    settings = {
        "model_name_or_path": args.model_name_or_path, "task_name": task,
        "max_seq_length": str(args.max_seq_length), "pad_to_max_length": "False",
        "per_device_train_batch_size": str(args.per_device_train_batch_size),
        "per_device_eval_batch_size": "64", "learning_rate": normalized(str(args.learning_rate)),
        "num_train_epochs": str(args.num_train_epochs), "warmup_steps": str(args.warmup_ratio),  # < 1: a ratio (Transformers 5)
        "weight_decay": str(args.weight_decay), "seed": str(seed), "report_to": "none",
        "save_strategy": "no", "eval_strategy": "no", "logging_steps": "25",
        **method_settings(method, args),
    }
    if args.group_by_length:
        settings["train_sampling_strategy"] = "group_by_length"
    if args.glue_dir:
        settings["glue_dir"] = args.glue_dir
    cap = task_caps(args.max_train_samples).get(task)
    if cap:
        settings["max_train_samples"] = str(cap)
    # The SAM-wins protocol's options, written only when used: the keys of earlier grids' runs stay.
    if args.train_sample is not None:
        settings["train_sample"] = str(args.train_sample)
    if args.label_noise:
        settings["label_noise"] = normalized(str(args.label_noise))
    block = per_task(args.test_split_rows, "--test_split_rows", "TASK=A:B", "sst2=62349:67349").get(task)
    if block:
        settings["test_split_rows"] = block
    if args.eval_every_epoch:
        settings["eval_strategy"] = "epoch"
    return settings


def run_key(settings: dict[str, str]) -> str:
    """A stable id of a run's settings (so a changed hyper-parameter is a new run)."""
    text = json.dumps({k: v for k, v in settings.items() if k != "glue_dir"}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_rows(path: Path) -> list[dict]:
    """The rows of a results file; a line that is not a JSON row (a run killed while writing) is
    reported with its file and line, and skipped."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            print(f"[reproduce_glue] {path}:{number}: skipped, not a JSON row ({error})", file=sys.stderr)
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one row and flush it to disk: a later crash cannot take a finished run with it."""
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def run_dir(task: str, method: str, seed: int, args: ReproductionArguments) -> Path:
    """Where a run writes (its model, logs): the run's key in the name, so that runs that differ in any
    setting never share a folder."""
    name = method.replace("@", "_").replace("=", "-").replace("/", "-")
    return Path(args.runs_dir) / task / name / f"seed{seed}-{run_key(run_settings(task, method, seed, args))}"


def machine_description() -> str:
    """The CPU model, its logical CPU count and the GPU, recorded in every row: the step-time ratios
    pair runs of one machine only, and a grid that spans sessions can span machines."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}"


def run_one(task: str, method: str, seed: int, settings: dict[str, str], args: ReproductionArguments) -> dict:
    output_dir = run_dir(task, method, seed, args)
    # A folder left by a crashed attempt at this very run (same settings, same key) is started afresh.
    command = [sys.executable, str(RUN_GLUE), "--do_train", "--do_eval", "--output_dir", str(output_dir),
               "--overwrite_output_dir", "--save_weights", str(args.keep_weights)]
    for key, value in settings.items():
        command += [f"--{key}", value]
    print(f"[reproduce_glue] {task} {method} seed {seed}: {' '.join(command)}", flush=True)
    started = time.time()
    log_path = output_dir.with_name(output_dir.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    results = json.loads((output_dir / "all_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    curve = [log for log in state["log_history"] if "loss" in log]
    metric = MAIN_METRIC[task]
    epochs = [{"epoch": log["epoch"], "score": log[f"eval_{metric}"], "eval_loss": log.get("eval_loss")}
              for log in state["log_history"] if f"eval_{metric}" in log]
    return {"curve": curve, "epochs": epochs, "task": task, "method": method, "seed": seed, "key": run_key(settings),
            "metric": metric, "score": results[f"eval_{metric}"], "heldout_score": results.get(f"heldout_{metric}"),
            "wall_seconds": round(time.time() - started, 1), "machine": machine_description(),
            "settings": settings, "results": results}


def current_rows(rows: list[dict], args: ReproductionArguments) -> list[dict]:
    """Every recorded run made with this grid's shared hyper-parameters, whatever its task, method
    and seed (a call for some tasks does not drop the others from the summary)."""
    return [r for r in rows if r["task"] in MAIN_METRIC
            and r["key"] == run_key(run_settings(r["task"], r["method"], r["seed"], args))]


MACHINE_NOT_RECORDED = "not recorded"
"""The machine of a row written before rows named theirs."""

UNIFORM_LOSS_TOLERANCE = 0.002
"""A classifier's dev loss this close to ln(classes) is the 50/50 (uniform) predictor's."""


def at_uniform_predictor(task: str, eval_loss: Optional[float]) -> bool:
    """Whether a run ended at the loss of predicting every class equally for every input."""
    spec = glue_task(task)
    return (not spec.is_regression and eval_loss is not None
            and abs(eval_loss - math.log(spec.num_labels)) < UNIFORM_LOSS_TOLERANCE)


def per_run_table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "task": r["task"], "method": r["method"], "seed": r["seed"], "metric": r["metric"], "score": r["score"],
        "eval_loss": r["results"].get("eval_loss"), "train_loss": r["results"].get("train_loss"),
        "at_uniform": at_uniform_predictor(r["task"], r["results"].get("eval_loss")),
        "last_mean_max_prob": next((log["sam_mean_max_prob"] for log in reversed(r.get("curve", []))
                                    if "sam_mean_max_prob" in log), None),
        "train_runtime": r["results"].get("train_runtime"),
        "median_step_time": r["results"].get("train_median_step_time"),
        "train_steps": r["results"].get("train_steps", r["results"].get("global_step")),
        "machine": r.get("machine", MACHINE_NOT_RECORDED),
    } for r in rows])


def interval(differences: list[float]) -> tuple[float, Optional[float], Optional[float]]:
    """Mean and two-sided 95 % t-interval of paired differences (no interval for fewer than 2)."""
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, None, None
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half


def difference_cell(differences: list[float]) -> str:
    """A paired-difference cell, x 100: mean [95 % t-interval], "(n=1)" for one seed, "—" for none."""
    if not differences:
        return "—"
    mean, low, high = interval(differences)
    return f"{100 * mean:+.1f}" + (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if low is not None else " (n=1)")


def paired_differences(table: pd.DataFrame, method: str, baseline: str, tasks: list[str],
                       averaged: Optional[list[str]] = None) -> dict[str, list[float]]:
    """Per task, and for the average over `averaged` (default: `tasks`; seeds that have each of
    them), score(method) - score(baseline) for each seed both have."""
    averaged = tasks if averaged is None else averaged
    scores = table.set_index(["task", "method", "seed"])["score"]
    out: dict[str, list[float]] = {}
    by_seed: dict[int, list[float]] = {}
    for task in tasks:
        seeds = sorted(set(table[(table.task == task) & (table.method == method)].seed)
                       & set(table[(table.task == task) & (table.method == baseline)].seed))
        out[task] = [scores[task, method, s] - scores[task, baseline, s] for s in seeds]
        if task in averaged:
            for s, d in zip(seeds, out[task]):
                by_seed.setdefault(s, []).append(d)
    out["average"] = [sum(ds) / len(ds) for ds in by_seed.values() if len(ds) == len(averaged)]
    return out


def paired_ratio(values: dict[tuple[str, str, int, str], float], task: str, method: str, baseline: str) -> float:
    """Median over the seeds both have of the method's value (a step time, a runtime) / the baseline's
    on the same seed and machine (`values`: (task, method, seed, machine) -> value): paired, so that a
    run slowed by other work on the machine moves one ratio, not the cell, and a seed whose runs were
    made on two machines gives no ratio."""
    ratios = [value / values[task, baseline, seed, machine] for (t, m, seed, machine), value in values.items()
              if (t, m) == (task, method) and (task, baseline, seed, machine) in values]
    return statistics.median(ratios) if ratios else math.nan


def summarize(rows: list[dict], args: ReproductionArguments) -> pd.DataFrame:
    """Write results.csv (one line per run), results.md (score, loss, paired difference to the
    baseline, cost), score_vs_time.png and curves.png; return the per-run table."""
    results_dir = Path(args.results_dir)
    table = per_run_table(current_rows(rows, args))
    table.to_csv(results_dir / "results.csv", index=False)
    if table.empty:
        return table
    # The grid's methods in its order, then any other method recorded with the grid's settings.
    recorded = list(dict.fromkeys(table.method))
    methods = [m for m in args.methods if m in recorded] + [m for m in recorded if m not in args.methods]
    tasks = [t for t in TASK_ORDER if t in set(table.task)]
    baseline = args.baseline
    grouped = table.groupby(["task", "method"])
    stats_table = grouped.agg(mean=("score", "mean"), std=("score", "std"), n=("score", "size"),
                              loss=("eval_loss", "mean"), at_uniform=("at_uniform", "sum")).reset_index()
    for column, source in (("step_vs_base", "median_step_time"), ("time_vs_base", "train_runtime")):
        timed = table.dropna(subset=[source])
        values = dict(zip(zip(timed.task, timed.method, timed.seed, timed.machine), timed[source]))
        stats_table[column] = [paired_ratio(values, r.task, r.method, baseline) for r in stats_table.itertuples()]
    cell = {(r.task, r.method): r for r in stats_table.itertuples()}
    # The average covers the tasks every method has run on every seed run there: a task still under
    # way would make the average of one method that of other tasks than another's.
    seeds_run = table.groupby("task").seed.agg(set)

    def has_every_seed(task: str, method: str) -> bool:
        return set(table[(table.task == task) & (table.method == method)].seed) == seeds_run[task]

    averaged = [t for t in tasks if all(has_every_seed(t, m) for m in methods)]
    average_name = "average" if averaged == tasks or not averaged else "average of " + ", ".join(averaged)
    # While a task is under way, the methods that have run every task on every seed also get the
    # average over all of them: comparable with one another, and the first figure a grid reports.
    complete = [m for m in methods if all(has_every_seed(t, m) for t in tasks)]
    full_name = f"average of all {len(tasks)} (methods that have them)" \
        if averaged != tasks and baseline in complete and len(complete) > 1 else None
    extra_header = f" | {full_name}" if full_name else ""
    average_columns = 2 if full_name else 1
    header = "| method | " + " | ".join(f"{t} ({MAIN_METRIC[t]})" for t in tasks)

    def line(method: str, values: list[str]) -> str:
        return f"| {method} | " + " | ".join(values) + " |"

    score_lines, loss_lines, diff_lines, cost_lines = [], [], [], []
    for method in methods:
        cells, means = [], []
        for task in tasks:
            r = cell.get((task, method))
            if r is None:
                cells.append("—")
                continue
            spread = "" if pd.isna(r.std) else f" ± {100 * r.std:.1f}"
            collapsed = f"; {r.at_uniform} at ln {glue_task(task).num_labels}" if r.at_uniform else ""
            cells.append(f"{100 * r.mean:.1f}{spread} (n={r.n}{collapsed})")
            if task in averaged:
                means.append(r.mean)
        average = f"{100 * sum(means) / len(means):.1f}" if averaged and len(means) == len(averaged) else "—"
        full = [] if not full_name else [
            f"{100 * sum(cell[t, method].mean for t in tasks) / len(tasks):.1f}" if method in complete else "—"]
        score_lines.append(line(method, cells + [average] + full))
        loss_lines.append(line(method, ["—" if (t, method) not in cell else f"{cell[t, method].loss:.3f}"
                                        for t in tasks]))
        if method != baseline:
            diffs = paired_differences(table, method, baseline, tasks, averaged)
            columns = [diffs[key] for key in tasks + ["average"]]
            if full_name:
                columns.append(paired_differences(table, method, baseline, tasks)["average"]
                               if method in complete else [])
            diff_lines.append(line(method, [difference_cell(values) for values in columns]))
        # A cell without a same-machine pair is NaN: shown as "—" and left out of the medians.
        ratios = [cell[t, method].step_vs_base for t in tasks
                  if (t, method) in cell and not math.isnan(cell[t, method].step_vs_base)]
        times = [cell[t, method].time_vs_base for t in tasks
                 if (t, method) in cell and not math.isnan(cell[t, method].time_vs_base)]
        cost_lines.append(line(method, [f"{cell[t, method].step_vs_base:.2f}" if (t, method) in cell
                                        and not math.isnan(cell[t, method].step_vs_base) else "—"
                                        for t in tasks]
                               + [f"{statistics.median(ratios):.2f}" if ratios else "—",
                                  f"{statistics.median(times):.2f}" if times else "—"]))
    rule = "|---" * (len(tasks) + 1) + "|"
    blind = input_blind_baselines(args.glue_dir, tasks)
    if blind:
        score_lines.append(line("*input-blind: the majority class*", [
            "—" if blind.get(t, (None, None))[1] is None else f"{100 * blind[t][1]:.1f}" for t in tasks]
            + [""] * average_columns))
        loss_lines.append(line("*input-blind optimum*", [
            f"{blind[t][0]:.3f}" if t in blind else "—" for t in tasks]))
    text = [
        "Written by `glue_scripts/reproduce_glue.py` from `results.jsonl` (every run recorded with this",
        "grid's shared hyper-parameters; `reproduction_arguments.json` holds them).", "",
        "Runs per machine: " + "; ".join(f"{machine}: {count}" for machine, count in table.machine.value_counts(
            sort=False).items()) + ".", "",
        "## Dev score x 100, mean ± std over seeds (n = seeds)", "",
        "\"k at ln 2\": k of the runs ended at the dev loss of the 50/50 predictor (within "
        f"{UNIFORM_LOSS_TOLERANCE}): their scores are those of a model that learnt nothing it is sure of.", "",
        header + f" | {average_name}{extra_header} |", rule + "---|" * average_columns, *score_lines, "",
        "## Dev loss (`eval_loss`), mean over seeds", "",
        "The input-blind optimum is the lowest dev loss of a model that ignores its input (the entropy of",
        "the dev labels; STS-B: their variance): ln 2 = 0.693 on a balanced binary task, less on an",
        "unbalanced one. A loss well below it shows learning; one near or above it can be a model that",
        "learnt nothing or an overconfident one that ranks well: read it with the score (beside the",
        "majority class's) and the curves.", "",
        header + " |", rule, *loss_lines, "",
        f"## Paired difference to {baseline} (same seed), x 100: mean [95 % t-interval]", "",
        "A method is worse than the baseline where the whole interval is below 0. The average column",
        "pairs each seed's average over the tasks every method has run on every seed (all, once a grid is",
        "complete); while a task is under way, the next column averages all the tasks for the methods that",
        "have run them all.", "",
        header + f" | {average_name}{extra_header} |", rule + "---|" * average_columns, *diff_lines, "",
        f"## Cost: median optimizer-step time / {baseline}'s, per task", "",
        f"Each cell: the median over seeds of the ratio to {baseline}'s run of the same seed on the same machine",
        "(a run slowed by other work on the machine moves one ratio, not the cell; a seed whose two runs were",
        "made on different machines gives none). Training time: `train_runtime`'s ratio, paired the same",
        "way, median over tasks.", "",
        header + f" | median over tasks | training time / {baseline} |", rule + "---|---|", *cost_lines, "",
    ]
    (results_dir / "results.md").write_text("\n".join(text))
    plot_score_vs_time(stats_table, tasks, results_dir / "score_vs_time.png", baseline)
    plot_curves(current_rows(rows, args), tasks, methods, results_dir / "curves.png",
                {task: loss for task, (loss, _) in input_blind_baselines(args.glue_dir, tasks, train=True).items()})
    return table


def input_blind_baselines(glue_dir: Optional[str], tasks: list[str],
                          train: bool = False) -> dict[str, tuple[float, Optional[float]]]:
    """Task -> (lowest loss, majority-class score) of a model that ignores its input, from the dev
    labels under `glue_dir` (`train`: the training labels; tasks without the file are left out)."""
    baselines = {}
    for task in tasks if glue_dir else []:
        try:
            baselines[task] = task_input_blind_baseline(glue_dir, task, train)
        except FileNotFoundError:
            continue
    return baselines


@functools.lru_cache(maxsize=None)
def task_input_blind_baseline(glue_dir: str, task: str, train: bool) -> tuple[float, Optional[float]]:
    """One task's input-blind baseline, read once per process (the summary is rewritten after every run)."""
    split = "train" if train else glue_task(task).eval_splits[0]
    return input_blind_baseline(task, load_glue_tsv(glue_dir, task, [split])[split]["label"])


def short_name(method: str) -> str:
    """A method spec as a plot label: `ksam@ksam_selection=top_k@sam_rho=0.01` -> `ksam top_k rho=0.01`."""
    name, *overrides = method.split("@")
    shorter = {"ksam_selection": "", "sam_rho": "rho", "learning_rate": "lr", "ksam_uniform_mix": "mix",
               "ksam_loss_share": "share", "ksam_k": "k", "num_train_epochs": "epochs", "model_name_or_path": "from"}
    parts = [name]
    for override in overrides:
        key, _, value = override.partition("=")
        label = shorter.get(key, key)
        if key == "model_name_or_path":
            value = Path(value).parent.name
        parts.append(value if label == "" else f"{label}={value}")
    return " ".join(parts)


def label_colors(methods: list[str]) -> dict[str, object]:
    """Plot label -> colour, one per label: methods that differ only in a per-task path (a warm
    start) share one; past ten labels, tab20's twenty colours keep them apart."""
    from matplotlib import colormaps

    labels = list(dict.fromkeys(short_name(m) for m in methods))
    palette = [f"C{i}" for i in range(10)] if len(labels) <= 10 else list(colormaps["tab20"].colors)
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def save_with_legend(fig, colors: dict[str, object], handles: list, path: Path) -> None:
    """The labels' legend under the panels, two columns, the figure grown to hold it; saved with
    bbox_inches="tight", so that long labels are not cut at the edges, then closed."""
    import matplotlib.pyplot as plt

    rows = (len(colors) + 1) // 2
    fig.set_figheight(fig.get_figheight() + 0.22 * rows)
    fig.legend(handles, list(colors), loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.22 * rows / fig.get_figheight() + 0.02, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_score_vs_time(stats_table: pd.DataFrame, tasks: list[str], path: Path, baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = label_colors(list(dict.fromkeys(stats_table.method)))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in stats_table[stats_table.task == task].itertuples():
            ax.errorbar(row.step_vs_base, 100 * row.mean, yerr=0 if pd.isna(row.std) else 100 * row.std,
                        fmt="o", capsize=3, color=colors[short_name(row.method)])
        ax.set_title(f"{task} ({MAIN_METRIC[task]})")
        ax.set_xlabel(f"median step time / {baseline}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev score x 100")
    save_with_legend(fig, colors, [plt.Line2D([], [], marker="o", linestyle="", color=c) for c in colors.values()], path)


def plot_curves(rows: list[dict], tasks: list[str], methods: list[str], path: Path,
                input_blind: dict[str, float]) -> None:
    """Training loss (top; dotted: `input_blind[task]`, the loss of predicting the training labels'
    frequencies, else ln classes) and, for SAM methods on classification, the batch's mean top-class
    probability (bottom) against the step, one line per run (seeds in the same colour). K-SAM logs
    its ranking pass's loss, without dropout by default: a little below a train-mode loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = label_colors(methods)
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks), 5.6), squeeze=False)
    for column, task in enumerate(tasks):
        for r in rows:
            if r["task"] != task or not r.get("curve"):
                continue
            steps = [log["step"] for log in r["curve"]]
            color = colors[short_name(r["method"])]
            axes[0][column].plot(steps, [log["loss"] for log in r["curve"]], color=color, lw=0.8)
            confidence = [(log["step"], log["sam_mean_max_prob"]) for log in r["curve"] if "sam_mean_max_prob" in log]
            if confidence:
                axes[1][column].plot(*zip(*confidence), color=color, lw=0.8)
        axes[0][column].set_title(task)
        if task in input_blind or not glue_task(task).is_regression:
            reference = input_blind.get(task, math.log(glue_task(task).num_labels))
            axes[0][column].axhline(reference, color="grey", ls=":", lw=0.8)
        axes[1][column].set_xlabel("step")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("mean top-class prob. (SAM / K-SAM)")
    save_with_legend(fig, colors, [plt.Line2D([], [], color=c) for c in colors.values()], path)


def reusable_rows(source: Path, raw: Path, args: ReproductionArguments) -> list[dict]:
    """The runs of `source` that this grid would repeat exactly (same settings, hence same key) and
    has not recorded, as rows of this grid."""
    done = {(r["task"], r["seed"], r["key"]) for r in load_rows(raw)}
    reused = []
    for row in load_rows(source):
        for method in args.methods:
            if row["task"] in args.tasks and row["seed"] in args.seeds and (row["task"], row["seed"], row["key"]) \
                    not in done and row["key"] == run_key(run_settings(row["task"], method, row["seed"], args)):
                reused.append({**row, "method": method, "reused_from": f"{source}: {row['method']}"})
                done.add((row["task"], row["seed"], row["key"]))
    return reused


def spec_argument_list(arguments: dict) -> list[str]:
    """A spec's `{"seeds": [1, 2], "keep_weights": false}` as `--seeds 1 2 --keep_weights False`."""
    argv = []
    for name, value in arguments.items():
        values = value if isinstance(value, list) else [value]
        argv += [f"--{name}", *(str(item) for item in values)]
    return argv


def run_spec(argv: list[str]) -> None:
    """`--spec FILE [--cells NAME ...] [ARGUMENT ...]`: a grid spec, a JSON file of `arguments` shared by
    every cell and `cells` (name -> the arguments that make the cell), each cell a grid of its own in
    `<results_dir>/<name>`. Arguments on the command line override the spec's (`--seeds 4 5`,
    `--plan_only`). Seeds run outermost, then cells: every cell has seed 1 before any has seed 2.
    Ends with the table over the cells, `<results_dir>/cells.md` (`summarize_cells.py`)."""
    position = argv.index("--spec")
    path = Path(argv[position + 1])
    rest = argv[:position] + argv[position + 2:]
    wanted: Optional[list[str]] = None
    if "--cells" in rest:
        start = rest.index("--cells")
        stop = next((i for i in range(start + 1, len(rest)) if rest[i].startswith("--")), len(rest))
        wanted, rest = rest[start + 1:stop], rest[:start] + rest[stop:]
    spec = json.loads(path.read_text())
    cells = spec["cells"]
    unknown = [name for name in wanted or [] if name not in cells]
    if unknown:
        raise SystemExit(f"reproduce_glue.py: error: --cells {' '.join(unknown)}: not in {path}; its cells are "
                         f"{', '.join(cells)}.")
    cell_argvs = {}
    for name in wanted or list(cells):
        shared = dict(spec["arguments"])
        shared["results_dir"] = str(Path(shared.get("results_dir", "docs/results")) / name)
        cell_argvs[name] = spec_argument_list({**shared, **cells[name]}) + rest
    (first,) = HfArgumentParser(ReproductionArguments).parse_args_into_dataclasses(next(iter(cell_argvs.values())))
    for seed in first.seeds:
        for name, cell_argv in cell_argvs.items():
            print(f"[reproduce_glue] cell {name}, seed {seed}", flush=True)
            main(cell_argv + ["--seeds", str(seed)])
    if not first.plan_only:  # the table over the cells (glue_scripts/summarize_cells.py)
        from glue_scripts import summarize_cells

        summarize_cells.main([str(Path(first.results_dir).parent), "--baseline", first.baseline])


def main(argv: Optional[list[str]] = None) -> None:
    if "--spec" in (sys.argv[1:] if argv is None else argv):
        run_spec(list(sys.argv[1:] if argv is None else argv))
        return
    parser = HfArgumentParser(ReproductionArguments)
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        (args,) = parser.parse_json_file(sys.argv[1])
    else:
        (args,) = parser.parse_args_into_dataclasses(argv)
    results_dir = Path(args.results_dir)
    raw = results_dir / "results.jsonl"
    if args.plan_only:
        print_plan(raw, args)
        return
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "reproduction_arguments.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    if not args.summarize_only:
        for method in args.methods:
            method_settings(method, args)  # refuse a bad method before hours of runs
        check_free_disk(Path(args.runs_dir), args.min_free_gb)
        for source in args.reuse_runs_from:
            for row in reusable_rows(Path(source), raw, args):
                append_row(raw, row)
        for task, method, seed in grid_runs(args):
            settings = run_settings(task, method, seed, args)
            if (task, method, seed, run_key(settings)) not in recorded_runs(raw):
                append_row(raw, run_one(task, method, seed, settings, args))
                summarize(load_rows(raw), args)
    summarize(load_rows(raw), args)


def check_free_disk(runs_dir: Path, min_free_gb: float) -> None:
    """Print the free disk under `runs_dir`; stop with one line below `min_free_gb` (a full disk breaks
    git, pip and the runs themselves)."""
    existing = next(folder for folder in [runs_dir, *runs_dir.resolve().parents] if folder.exists())
    free_gb = shutil.disk_usage(existing).free / 1e9
    print(f"[reproduce_glue] free disk under {existing}: {free_gb:.1f} GB", flush=True)
    if free_gb < min_free_gb:
        raise SystemExit(f"reproduce_glue.py: error: {free_gb:.1f} GB free under {existing}, less than "
                         f"--min_free_gb {min_free_gb:g}: delete finished runs' weights (runs/**/model.safetensors) "
                         "or pass a smaller --min_free_gb.")


def grid_runs(args: ReproductionArguments) -> list[tuple[str, str, int]]:
    """(task, method, seed) in the order they run: seeds outermost and methods innermost, so that a
    method's runs interleave with the others' and the machine's drift touches all alike."""
    return [(task, method, seed) for seed in args.seeds for task in args.tasks for method in args.methods]


def recorded_runs(raw: Path) -> set[tuple[str, str, int, str]]:
    """(task, method, seed, key) of every run in `raw`."""
    return {(r["task"], r["method"], r["seed"], r["key"]) for r in load_rows(raw)}


def print_plan(raw: Path, args: ReproductionArguments) -> None:
    """One line per run of the grid, in the order they run: `done`, `reused` (recorded by
    `--reuse_runs_from` when the grid starts) or `to run`; then the counts. Writes nothing."""
    lent = {(r["task"], r["method"], r["seed"]) for source in args.reuse_runs_from
            for r in reusable_rows(Path(source), raw, args)}
    recorded, states = recorded_runs(raw), []
    for task, method, seed in grid_runs(args):
        state = "done" if (task, method, seed, run_key(run_settings(task, method, seed, args))) in recorded else \
            "reused" if (task, method, seed) in lent else "to run"
        states.append(state)
        print(f"{state:<7} seed {seed} {task} {method}")
    print(", ".join(f"{states.count(state)} {state}" for state in ("done", "reused", "to run")) + f" of {len(states)}")


if __name__ == "__main__":
    main()
