"""The grid runner: tasks x methods x seeds through `run_glue.py`, one row per finished run.

Each run is a subprocess of `python -m glue_scripts.run_glue`; its `all_results.json` becomes one row
of `results.jsonl` (`studies.rows`: appended as runs finish). A run already there (same task,
method, seed and settings) is skipped, so the grid can be stopped and started again. It prints its
plan first and a line as each run ends (score, done of total, elapsed, time left); after every run
it rewrites the folder's summary (`studies.grid_summary`).

    python -m studies.grid --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \
        --glue_dir ../shared/glue --tasks rte mrpc --methods adamw sam ksam --seeds 1 2 3

A method is a `run_glue.py --optimizer` value with overrides after `@` (`studies.methods`):
`ksam@ksam_selection=top_k@sam_rho=0.01`. A study is a spec file run cell by cell,
`python -m studies.grid --spec studies/specs/sam_wins_pilot.json` (see `run_spec`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import HfArgumentParser

from ksam_hf import KSAMConfig
from studies.grid_summary import summarize
from studies.methods import (KEYED_SAM_FIELDS, METHODS, OVERRIDABLE_TRAINING_FIELDS, PLAIN_METHODS, normalized,
                             selects_rows)
from studies.rows import append_row, load_rows
from studies.tasks import MAIN_METRIC

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Progress:
    """The runs a grid (or a whole spec) has to run, and a line as each ends: its score, done of
    total, elapsed, and the time left at the mean pace of the runs this call has made."""

    total: int
    done: int = 0
    started: float = field(default_factory=time.time)

    def finished(self, row: dict, seconds: float) -> str:
        self.done += 1
        elapsed = time.time() - self.started
        left = elapsed / self.done * (self.total - self.done)
        heldout = "" if row.get("heldout_score") is None else f", held-out {100 * row['heldout_score']:.1f}"
        return (f"[grid] {self.done}/{self.total} done: {row['task']} {row['method']} seed {row['seed']}: "
                f"{row['metric']} {100 * row['score']:.1f}{heldout}, {seconds / 60:.1f} min; elapsed "
                f"{elapsed / 60:.1f} min, about {left / 60:.0f} min left")


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
    early_stopping_split: Optional[float] = field(
        default=None, metadata={"help": "run_glue's --early_stopping_split: hold out this share of the training rows "
                                        "(noised as they are), keep the best model by it; the row's scores are its."})
    early_stopping_every: float = field(
        default=0.5, metadata={"help": "Epochs between two scorings of the early-stopping split."})
    eval_compressed: bool = field(
        default=False, metadata={"help": "run_glue's --eval_compressed: the held-out score after int8 quantization, "
                                         "magnitude pruning and weight noise, in the row's results."})
    lora_r: Optional[int] = field(
        default=None, metadata={"help": "run_glue's --lora_r: train LoRA adapters of this rank (query and value), the "
                                        "head whole; needed by the bi_lora and flat_lora methods."})
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
    per_device_eval_batch_size: int = 64
    summarize_only: bool = field(default=False, metadata={"help": "Rewrite the summary from results.jsonl."})
    write_summary: bool = field(
        default=True, metadata={"help": "Rewrite the folder's results.md/csv and plots after each run (False: a "
                                        "spec whose own summary writes that folder's results.md)."})
    plan_only: bool = field(
        default=False,
        metadata={"help": "List the grid's runs in the order they run, each done, reused or to run, and stop."})


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
    if name not in PLAIN_METHODS:
        for field_name, default in sam_fields.items():
            if field_name in KEYED_SAM_FIELDS and (selects_rows(name) or not field_name.startswith("ksam_")):
                settings[field_name] = normalized(str(default))
        settings["sam_rho"] = normalized(str(args.sam_rho))
        if selects_rows(name):
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
        "per_device_eval_batch_size": str(args.per_device_eval_batch_size), "learning_rate": normalized(str(args.learning_rate)),
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
    if args.early_stopping_split is not None:
        settings["early_stopping_split"] = normalized(str(args.early_stopping_split))
        settings["early_stopping_every"] = normalized(str(args.early_stopping_every))
    if args.eval_compressed:
        settings["eval_compressed"] = "True"
    if args.lora_r is not None:
        settings["lora_r"] = str(args.lora_r)
    return settings


def run_key(settings: dict[str, str]) -> str:
    """A stable id of a run's settings (so a changed hyper-parameter is a new run)."""
    text = json.dumps({k: v for k, v in settings.items() if k != "glue_dir"}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


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
    command = [sys.executable, "-m", "glue_scripts.run_glue", "--do_train", "--do_eval", "--output_dir", str(output_dir),
               "--overwrite_output_dir", "--save_weights", str(args.keep_weights)]
    for key, value in settings.items():
        command += [f"--{key}", value]
    print(f"[grid] {task} {method} seed {seed}: running (log: {output_dir}.log)", flush=True)
    started = time.time()
    log_path = output_dir.with_name(output_dir.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # The repository's root on the path of the run (run_glue imports glue_scripts), wherever the grid runs from.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    results = json.loads((output_dir / "all_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    curve = [log for log in state["log_history"] if "loss" in log]
    metric = MAIN_METRIC[task]
    epochs = [{"epoch": log["epoch"], "score": log[f"eval_{metric}"], "eval_loss": log.get("eval_loss")}
              for log in state["log_history"] if f"eval_{metric}" in log]
    return {"curve": curve, "epochs": epochs, "task": task, "method": method, "seed": seed, "key": run_key(settings),
            "metric": metric, "score": results[f"eval_{metric}"], "heldout_score": results.get(f"heldout_{metric}"),
            "last_heldout_score": results.get(f"last_heldout_{metric}"),
            "wall_seconds": round(time.time() - started, 1), "machine": machine_description(),
            "settings": settings, "results": results}


def current_rows(rows: list[dict], args: ReproductionArguments) -> list[dict]:
    """Every recorded run made with this grid's shared hyper-parameters, whatever its task, method
    and seed (a call for some tasks does not drop the others from the summary)."""
    return [r for r in rows if r["task"] in MAIN_METRIC
            and r["key"] == run_key(run_settings(r["task"], r["method"], r["seed"], args))]


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


def load_spec(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """A spec file with its `extends` resolved, so that a study's later specs do not copy its first.
    `{"extends": "pilot.json", "arguments": {...}, "cells": [...]}` takes the named spec's (a path beside
    this one) `arguments`, each replaced by its own (`null`: left out), its `summary` unless it has one,
    and the named spec's cells by name in the order listed (a list), or cells of its own (a dict)."""
    if path.resolve() in {earlier.resolve() for earlier in extended_by}:
        raise SystemExit(f"studies.grid: error: {path}: its `extends` leads back to itself; name a spec that does not.")
    if not path.is_file():
        raise SystemExit(f"studies.grid: error: {extended_by[-1] if extended_by else '--spec'}: no spec {path}; "
                         "name a JSON file (an `extends` path is relative to the spec that names it).")
    spec = json.loads(path.read_text())
    if "extends" not in spec:
        return spec
    parent = load_spec(path.parent / spec.pop("extends"), extended_by + (path,))
    cells = spec.get("cells", list(parent["cells"]))
    if isinstance(cells, list):
        unknown = [name for name in cells if name not in parent["cells"]]
        if unknown:
            raise SystemExit(f"studies.grid: error: {path}: cells {', '.join(unknown)}: not in the spec it extends; "
                             f"its cells are {', '.join(parent['cells'])}.")
        cells = {name: parent["cells"][name] for name in cells}
    inherited = {"summary": parent["summary"]} if "summary" in parent else {}
    arguments = {name: value for name, value in {**parent["arguments"], **spec.get("arguments", {})}.items()
                 if value is not None}
    return {**inherited, **spec, "arguments": arguments, "cells": cells}


def run_spec(argv: list[str]) -> None:
    """`--spec FILE [--cells NAME ...] [ARGUMENT ...]`: a study's spec, a JSON file of `arguments` shared
    by every cell and `cells` (name -> the arguments that make the cell), or one that `extends` another
    (`load_spec`); each cell a grid of its own in `<results_dir>/<name>` (or in the cell's own
    `results_dir`, where it names one). Arguments on the
    command line override the spec's (`--seeds 4 5`, `--plan_only`); `--results_dir` there names the
    study's folder, the cells' folders inside it (a lent GPU's rows kept apart). Seeds run outermost, then cells:
    every cell has seed 1 before any has seed 2. Prints the plan (runs, the spec's `budget`) first.
    Ends with the spec's `summary`, a module of `studies` and its arguments, `{results_dir}`,
    `{study_dir}` (its parent) and `{glue_dir}` standing for the first cell's (default: the table over the cells,
    `studies.summarize_cells <results_dir>`; an empty list: none)."""
    position = argv.index("--spec")
    path = Path(argv[position + 1])
    rest = argv[:position] + argv[position + 2:]
    wanted: Optional[list[str]] = None
    if "--cells" in rest:
        start = rest.index("--cells")
        stop = next((i for i in range(start + 1, len(rest)) if rest[i].startswith("--")), len(rest))
        wanted, rest = rest[start + 1:stop], rest[:start] + rest[stop:]
    study_dir: Optional[str] = None  # `--results_dir` on the command line: the study's folder, cells inside
    if "--results_dir" in rest:
        start = rest.index("--results_dir")
        study_dir, rest = rest[start + 1], rest[:start] + rest[start + 2:]
    spec = load_spec(path)
    cells = spec["cells"]
    unknown = [name for name in wanted or [] if name not in cells]
    if unknown:
        raise SystemExit(f"studies.grid: error: --cells {' '.join(unknown)}: not in {path}; its cells are "
                         f"{', '.join(cells)}.")
    cell_argvs = {}
    for name in wanted or list(cells):
        shared = dict(spec["arguments"])
        shared["results_dir"] = str(Path(study_dir or shared.get("results_dir", "docs/results")) / name)
        cell_argvs[name] = spec_argument_list({**shared, **cells[name]}) + rest
    parser = HfArgumentParser(ReproductionArguments)
    parsed = {name: parser.parse_args_into_dataclasses(cell_argv)[0] for name, cell_argv in cell_argvs.items()}
    first = next(iter(parsed.values()))
    states = [state for args in parsed.values() for state in run_states(args)]
    print(f"[grid] {path}: {len(cell_argvs)} cells, {plan_counts(states)}"
          + (f"; budget: {spec['budget']}" if spec.get("budget") else ""), flush=True)
    if first.plan_only:
        for name, args in parsed.items():
            print(f"[grid] cell {name}:")
            print_plan(args)
        return
    progress = Progress(states.count("to run"))
    for seed in first.seeds:
        for name, cell_argv in cell_argvs.items():
            print(f"[grid] cell {name}, seed {seed}", flush=True)
            main(cell_argv + ["--seeds", str(seed)], progress)
    default = ["studies.summarize_cells", str(Path(first.results_dir).parent), "--baseline", first.baseline]
    summary = [part.format(results_dir=first.results_dir, study_dir=Path(first.results_dir).parent,
                           glue_dir=first.glue_dir or "") for part in spec.get("summary", default)]
    if summary:
        importlib.import_module(summary[0]).main([part for part in summary[1:] if part])


UNITED_FIELDS = ("tasks", "methods", "seeds")
"""What a call may run a part of (`--methods`, `--seeds`): the folder's arguments keep every value run."""


def write_reproduction_arguments(path: Path, args: ReproductionArguments) -> None:
    """The grid's arguments, with the tasks, methods and seeds of earlier calls on the same folder
    kept (earlier values first): a call on a part of a grid does not hide the rest of its rows."""
    arguments = asdict(args)
    if path.exists():
        earlier = json.loads(path.read_text())
        for name in UNITED_FIELDS:
            arguments[name] = list(dict.fromkeys([*earlier.get(name, []), *arguments[name]]))
    path.write_text(json.dumps(arguments, indent=2) + "\n")


def main(argv: Optional[list[str]] = None, progress: Optional[Progress] = None) -> None:
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
        print_plan(args)
        return
    results_dir.mkdir(parents=True, exist_ok=True)
    write_reproduction_arguments(results_dir / "reproduction_arguments.json", args)
    if not args.summarize_only:
        for method in args.methods:
            method_settings(method, args)  # refuse a bad method before hours of runs
        check_free_disk(Path(args.runs_dir), args.min_free_gb)
        for source in args.reuse_runs_from:
            for row in reusable_rows(Path(source), raw, args):
                append_row(raw, row)
        if progress is None:
            states = run_states(args)
            print(f"[grid] {plan_counts(states)}", flush=True)
            progress = Progress(states.count("to run"))
        for task, method, seed in grid_runs(args):
            settings = run_settings(task, method, seed, args)
            if (task, method, seed, run_key(settings)) not in recorded_runs(raw):
                started = time.time()
                row = run_one(task, method, seed, settings, args)
                append_row(raw, row)
                print(progress.finished(row, time.time() - started), flush=True)
                if args.write_summary:
                    summarize_grid(raw, args)
    if args.write_summary or args.summarize_only:
        summarize_grid(raw, args)


def summarize_grid(raw: Path, args: ReproductionArguments) -> None:
    """The folder's summary from the rows made with this grid's settings."""
    summarize(current_rows(load_rows(raw), args), Path(args.results_dir), args.methods, args.baseline, args.glue_dir)


def check_free_disk(runs_dir: Path, min_free_gb: float) -> None:
    """Print the free disk under `runs_dir`; stop with one line below `min_free_gb` (a full disk breaks
    git, pip and the runs themselves)."""
    existing = next(folder for folder in [runs_dir, *runs_dir.resolve().parents] if folder.exists())
    free_gb = shutil.disk_usage(existing).free / 1e9
    print(f"[grid] free disk under {existing}: {free_gb:.1f} GB", flush=True)
    if free_gb < min_free_gb:
        raise SystemExit(f"studies.grid: error: {free_gb:.1f} GB free under {existing}, less than "
                         f"--min_free_gb {min_free_gb:g}: delete finished runs' weights (runs/**/model.safetensors) "
                         "or pass a smaller --min_free_gb.")


def grid_runs(args: ReproductionArguments) -> list[tuple[str, str, int]]:
    """(task, method, seed) in the order they run: seeds outermost and methods innermost, so that a
    method's runs interleave with the others' and the machine's drift touches all alike."""
    return [(task, method, seed) for seed in args.seeds for task in args.tasks for method in args.methods]


def recorded_runs(raw: Path) -> set[tuple[str, str, int, str]]:
    """(task, method, seed, key) of every run in `raw`."""
    return {(r["task"], r["method"], r["seed"], r["key"]) for r in load_rows(raw)}


def run_states(args: ReproductionArguments) -> list[str]:
    """Each run of the grid, in the order they run: `done`, `reused` (recorded by `--reuse_runs_from`
    when the grid starts) or `to run`. Writes nothing."""
    raw = Path(args.results_dir) / "results.jsonl"
    lent = {(r["task"], r["method"], r["seed"]) for source in args.reuse_runs_from
            for r in reusable_rows(Path(source), raw, args)}
    recorded = recorded_runs(raw)
    return ["done" if (task, method, seed, run_key(run_settings(task, method, seed, args))) in recorded else
            "reused" if (task, method, seed) in lent else "to run" for task, method, seed in grid_runs(args)]


def plan_counts(states: list[str]) -> str:
    return ", ".join(f"{states.count(state)} {state}" for state in ("done", "reused", "to run")) + \
        f" of {len(states)}"


def print_plan(args: ReproductionArguments) -> None:
    """One line per run of the grid, in the order they run, with its state; then the counts."""
    states = run_states(args)
    for (task, method, seed), state in zip(grid_runs(args), states):
        print(f"{state:<7} seed {seed} {task} {method}")
    print(plan_counts(states))


if __name__ == "__main__":
    main()
