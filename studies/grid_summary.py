"""The summary of one grid folder: `results.csv` (a line per run), `results.md` (score, loss, paired
difference to the baseline, cost) and the plots, from the rows recorded with the grid's settings."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Optional

import pandas as pd

from glue_scripts.glue_data import glue_task
from studies.plots import plot_curves, plot_score_vs_time
from studies.stats import difference_cell, paired_differences, paired_ratio
from studies.tasks import MAIN_METRIC, TASK_ORDER, UNIFORM_LOSS_TOLERANCE, at_uniform_predictor, input_blind_baselines

MACHINE_NOT_RECORDED = "not recorded"
"""The machine of a row written before rows named theirs."""

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


def summarize(rows: list[dict], results_dir: Path, methods: list[str], baseline: str,
              glue_dir: Optional[str]) -> pd.DataFrame:
    """Write results.csv (one line per run), results.md (score, loss, paired difference to the
    baseline, cost), score_vs_time.png and curves.png; return the per-run table."""
    table = per_run_table(rows)
    table.to_csv(results_dir / "results.csv", index=False)
    if table.empty:
        return table
    # The grid's methods in its order, then any other method recorded with the grid's settings.
    recorded = list(dict.fromkeys(table.method))
    methods = [m for m in methods if m in recorded] + [m for m in recorded if m not in methods]
    tasks = [t for t in TASK_ORDER if t in set(table.task)]
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
    blind = input_blind_baselines(glue_dir, tasks)
    if blind:
        score_lines.append(line("*input-blind: the majority class*", [
            "—" if blind.get(t, (None, None))[1] is None else f"{100 * blind[t][1]:.1f}" for t in tasks]
            + [""] * average_columns))
        loss_lines.append(line("*input-blind optimum*", [
            f"{blind[t][0]:.3f}" if t in blind else "—" for t in tasks]))
    text = [
        "Written by `python -m studies.grid` from `results.jsonl` (every run recorded with this",
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
    plot_curves(rows, tasks, methods, results_dir / "curves.png",
                {task: loss for task, (loss, _) in input_blind_baselines(glue_dir, tasks, train=True).items()})
    return table


