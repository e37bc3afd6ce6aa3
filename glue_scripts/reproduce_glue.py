"""Reproduce the paper's GLUE comparison: tasks x methods x seeds through `run_glue.py`.

Each run is a subprocess of `glue_scripts/run_glue.py`; its `all_results.json` becomes one row of
`results.jsonl` (raw, appended as runs finish). A run already in that file (same task, method,
seed and hyper-parameters) is skipped, so the script can be stopped and started again. After
every run it rewrites the summary: `results.csv`, `results.md` (mean +- std per task and method,
average over tasks, training time relative to AdamW) and `score_vs_time.png`.

    python glue_scripts/reproduce_glue.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \
        --glue_dir ../shared/glue --tasks rte mrpc cola stsb sst2 --methods adamw sam ksam --seeds 1 2 3

A method is `adamw`, `sgd`, `sam` or `ksam`, optionally with overrides after `@`:
`ksam@k=0.1@rho=0.1@selection=previous_loss` (k = `ksam_k`, rho = `sam_rho`, selection =
`ksam_selection`, adaptive = `sam_adaptive`, rank_without_dropout = `ksam_rank_without_dropout`).
Used for the sweep of k and rho, too.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
from transformers import HfArgumentParser

RUN_GLUE = Path(__file__).resolve().parent / "run_glue.py"
MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "combined_score", "mrpc": "combined_score",
               "qqp": "combined_score", "sst2": "accuracy", "mnli": "accuracy", "qnli": "accuracy",
               "rte": "accuracy", "wnli": "accuracy"}
METHOD_KEYS = {"k": "ksam_k", "rho": "sam_rho", "selection": "ksam_selection", "adaptive": "sam_adaptive",
               "rank_without_dropout": "ksam_rank_without_dropout"}


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
    sam_rho: float = 0.05
    ksam_k: str = "0.25"
    max_train_samples: list[str] = field(
        default_factory=list,
        metadata={"help": "Per-task caps on the training set, as task=N (e.g. sst2=8000); default: full."})
    baseline: str = field(default="adamw", metadata={"help": "Method that times are relative to."})
    summarize_only: bool = field(default=False, metadata={"help": "Rewrite the summary from results.jsonl."})


def method_settings(method: str, args: ReproductionArguments) -> dict[str, str]:
    """run_glue.py arguments of a method spec such as `ksam@k=0.1@rho=0.1`."""
    name, *overrides = method.split("@")
    if name not in ("adamw", "sgd", "sam", "ksam"):
        raise ValueError(f"--methods: unknown method {name!r} in {method!r}: use adamw, sgd, sam or ksam.")
    settings = {"optimizer": name}
    if name in ("sam", "ksam"):
        settings["sam_rho"] = str(args.sam_rho)
    if name == "ksam":
        settings["ksam_k"] = args.ksam_k
    for override in overrides:
        key, _, value = override.partition("=")
        if key not in METHOD_KEYS or not value:
            raise ValueError(f"--methods: {override!r} in {method!r} is not one of "
                             f"{', '.join(k + '=VALUE' for k in METHOD_KEYS)}.")
        settings[METHOD_KEYS[key]] = value
    return settings


def task_caps(args: ReproductionArguments) -> dict[str, int]:
    caps = {}
    for item in args.max_train_samples:
        task, _, count = item.partition("=")
        if not count.isdigit():
            raise ValueError(f"--max_train_samples: {item!r} is not task=N (e.g. sst2=8000).")
        caps[task] = int(count)
    return caps


def run_settings(task: str, method: str, seed: int, args: ReproductionArguments) -> dict[str, str]:
    """Every run_glue.py argument of one run except the output directory."""
    settings = {
        "model_name_or_path": args.model_name_or_path, "task_name": task,
        "max_seq_length": str(args.max_seq_length), "pad_to_max_length": "False",
        "per_device_train_batch_size": str(args.per_device_train_batch_size),
        "per_device_eval_batch_size": "64", "learning_rate": str(args.learning_rate),
        "num_train_epochs": str(args.num_train_epochs), "warmup_steps": str(args.warmup_ratio),  # < 1: a ratio (Transformers 5)
        "weight_decay": str(args.weight_decay), "seed": str(seed), "report_to": "none",
        "save_strategy": "no", "eval_strategy": "no", "logging_steps": "50",
        **method_settings(method, args),
    }
    if args.glue_dir:
        settings["glue_dir"] = args.glue_dir
    cap = task_caps(args).get(task)
    if cap:
        settings["max_train_samples"] = str(cap)
    return settings


def run_key(settings: dict[str, str]) -> str:
    """A stable id of a run's settings (so a changed hyper-parameter is a new run)."""
    text = json.dumps({k: v for k, v in settings.items() if k != "glue_dir"}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(task: str, method: str, seed: int, settings: dict[str, str], args: ReproductionArguments) -> dict:
    output_dir = Path(args.runs_dir) / task / method.replace("@", "_").replace("=", "-") / f"seed{seed}"
    command = [sys.executable, str(RUN_GLUE), "--do_train", "--do_eval", "--output_dir", str(output_dir)]
    for key, value in settings.items():
        command += [f"--{key}", value]
    print(f"[reproduce_glue] {task} {method} seed {seed}: {' '.join(command)}", flush=True)
    started = time.time()
    log_path = output_dir.parent / f"seed{seed}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    results = json.loads((output_dir / "all_results.json").read_text())
    return {"task": task, "method": method, "seed": seed, "key": run_key(settings),
            "metric": MAIN_METRIC[task], "score": results[f"eval_{MAIN_METRIC[task]}"],
            "wall_seconds": round(time.time() - started, 1), "settings": settings, "results": results}


def current_rows(rows: list[dict], args: ReproductionArguments) -> list[dict]:
    """The rows of this grid, with this grid's hyper-parameters (older settings are left out)."""
    return [r for r in rows if r["task"] in args.tasks and r["method"] in args.methods and r["seed"] in args.seeds
            and r["key"] == run_key(run_settings(r["task"], r["method"], r["seed"], args))]


def summarize(rows: list[dict], args: ReproductionArguments) -> pd.DataFrame:
    """Write results.csv, results.md and score_vs_time.png; return the per-run table."""
    results_dir = Path(args.results_dir)
    rows = current_rows(rows, args)
    table = pd.DataFrame([{
        "task": r["task"], "method": r["method"], "seed": r["seed"], "metric": r["metric"], "score": r["score"],
        "train_runtime": r["results"].get("train_runtime"),
        "median_step_time": r["results"].get("train_median_step_time"),
        "train_steps": r["results"].get("train_steps", r["results"].get("global_step")),
    } for r in rows])
    table.to_csv(results_dir / "results.csv", index=False)
    if table.empty:
        return table
    grouped = table.groupby(["task", "method"])
    stats = grouped.agg(mean=("score", "mean"), std=("score", "std"), n=("score", "size"),
                        runtime=("train_runtime", "mean"), step=("median_step_time", "mean")).reset_index()
    base = stats[stats.method == args.baseline].set_index("task")
    stats["time_vs_base"] = [row.runtime / base.runtime.get(row.task, float("nan")) for row in stats.itertuples()]
    stats["step_vs_base"] = [row.step / base.step.get(row.task, float("nan")) for row in stats.itertuples()]
    methods = [m for m in dict.fromkeys(table.method)]
    tasks = [t for t in dict.fromkeys(table.task)]
    lines = ["| method | " + " | ".join(f"{t} ({MAIN_METRIC[t]})" for t in tasks)
             + " | average | train time (s), mean over tasks | time / " + args.baseline
             + " | median step / " + args.baseline + " |",
             "|---" * (len(tasks) + 5) + "|"]
    summary = {}
    for method in methods:
        cells, means, times, ratios, step_ratios = [], [], [], [], []
        for task in tasks:
            row = stats[(stats.method == method) & (stats.task == task)]
            if row.empty:
                cells.append("—")
                continue
            row = row.iloc[0]
            spread = "" if pd.isna(row["std"]) else f" ± {100 * row['std']:.1f}"
            cells.append(f"{100 * row['mean']:.1f}{spread} (n={row['n']})")
            means.append(row["mean"])
            times.append(row["runtime"])
            ratios.append(row["time_vs_base"])
            step_ratios.append(row["step_vs_base"])
        complete = len(means) == len(tasks)
        average = f"{100 * sum(means) / len(means):.1f}" if complete else "—"
        summary[method] = {"average": sum(means) / len(means) if complete else None,
                           "time_vs_base": sum(ratios) / len(ratios) if ratios else None}
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {average} | "
                     + (f"{sum(times) / len(times):.0f}" if times else "—") + " | "
                     + (f"{sum(ratios) / len(ratios):.2f}" if ratios else "—") + " | "
                     + (f"{sum(step_ratios) / len(step_ratios):.2f}" if step_ratios else "—") + " |")
    (results_dir / "results.md").write_text(
        "Dev-set score x 100, mean ± std over seeds (n = number of seeds). Written by "
        "`glue_scripts/reproduce_glue.py` from `results.jsonl`.\n\n" + "\n".join(lines) + "\n")
    plot_score_vs_time(stats, tasks, results_dir / "score_vs_time.png", args.baseline)
    return table


def plot_score_vs_time(stats: pd.DataFrame, tasks: list[str], path: Path, baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {method: f"C{i}" for i, method in enumerate(dict.fromkeys(stats.method))}
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in stats[stats.task == task].itertuples():
            ax.errorbar(row.time_vs_base, 100 * row.mean, yerr=0 if pd.isna(row.std) else 100 * row.std,
                        fmt="o", capsize=3, color=colors[row.method], label=row.method)
        ax.set_title(f"{task} ({MAIN_METRIC[task]})")
        ax.set_xlabel(f"training time / {baseline}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev score x 100")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=color) for color in colors.values()]
    fig.legend(handles, list(colors), loc="lower center", ncol=len(colors), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    parser = HfArgumentParser(ReproductionArguments)
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        (args,) = parser.parse_json_file(sys.argv[1])
    else:
        (args,) = parser.parse_args_into_dataclasses(argv)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    raw = results_dir / "results.jsonl"
    (results_dir / "reproduction_arguments.json").write_text(json.dumps(asdict(args), indent=2) + "\n")
    if not args.summarize_only:
        for method in args.methods:
            method_settings(method, args)  # refuse a bad method before hours of runs
        for seed in args.seeds:  # seeds outermost and methods innermost: a method's runs interleave
            for task in args.tasks:  # with the others', so the machine's drift touches all alike
                for method in args.methods:
                    settings = run_settings(task, method, seed, args)
                    done = {(r["task"], r["method"], r["seed"], r["key"]) for r in load_rows(raw)}
                    if (task, method, seed, run_key(settings)) in done:
                        continue
                    row = run_one(task, method, seed, settings, args)
                    with open(raw, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    summarize(load_rows(raw), args)
    summarize(load_rows(raw), args)


if __name__ == "__main__":
    main()
