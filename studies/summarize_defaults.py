"""The defaults check's table (`studies/specs/defaults_check.json`): every SAM rule beside AdamW on
the same command (task, batch) and seed.

Usage: python -m studies.summarize_defaults docs/results/defaults [GLUE_DIR]
(GLUE_DIR: the dev labels, for the input-blind reference of each task; the machine line is
RESULTS/machine.txt where there is one, else this project's 2-core CPU)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Optional

from studies.methods import parse, selects_rows
from studies.rows import load_rows
from studies.tasks import MAIN_METRIC, input_blind_baselines

METRIC = {task: f"eval_{MAIN_METRIC[task]}" for task in ("mrpc", "sst2")}
"""The defaults check's tasks and the all_results key each is scored by."""
SETTINGS = ("ksam_selection", "sam_rho", "ksam_k")


def variant_settings(row: dict) -> dict[str, str]:
    """A run's rule: its method's name and overrides and, for a rule that selects rows, the
    selection, rho and k it ran with (those left at their defaults included)."""
    name, overrides = parse(row["method"])
    settings = {"optimizer": name, **overrides}
    if selects_rows(name):
        settings.update({key: str(row["settings"][key]) for key in SETTINGS if key in row["settings"]})
    return settings


def command(row: dict) -> tuple[str, int, int]:
    """The check's command a run belongs to: task, batch, seed."""
    return row["task"], int(row["settings"]["per_device_train_batch_size"]), row["seed"]


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per (task, batch, seed, rule), AdamW's row beside it."""
    adamw = {command(r): r for r in rows if r["method"] == "adamw"}
    lines = ["| task | batch | seed | rule | settings | AdamW score | score | - AdamW | AdamW eval_loss | eval_loss | "
             "median step / AdamW |", "|---" * 11 + "|"]
    for row in sorted((r for r in rows if r["method"] != "adamw" and command(r) in adamw),
                      key=lambda r: (*command(r), r["method"])):
        (task, batch, seed), a, k = command(row), adamw[command(row)]["results"], row["results"]
        ran = variant_settings(row)
        shown = ", ".join(f"{name}={ran[name]}" for name in SETTINGS if name in ran) if selects_rows(ran["optimizer"]) \
            else ", ".join(f"{name}={value}" for name, value in ran.items())
        lines.append(f"| {task} | {batch} | {seed} | `{row['method']}` | {shown} | {100 * a[METRIC[task]]:.1f} | "
                     f"{100 * k[METRIC[task]]:.1f} | {100 * (k[METRIC[task]] - a[METRIC[task]]):+.1f} | "
                     f"{a['eval_loss']:.3f} | {k['eval_loss']:.3f} | "
                     f"{k['train_median_step_time'] / a['train_median_step_time']:.2f} |")
    return lines


def reference_line(glue_dir: Optional[str]) -> str:
    """What a model that ignores its input reaches on each task's dev set (empty without the data)."""
    blind = input_blind_baselines(glue_dir, list(METRIC))
    if not blind:
        return ""
    return ("A model that ignores its input reaches at best an eval_loss of " + ", ".join(
        f"{blind[t][0]:.3f} on {t}" for t in blind) + " (the dev labels' entropy), and scores " + ", ".join(
        f"{100 * blind[t][1]:.1f} on {t}" for t in blind) + " by predicting the majority class. ")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.summarize_defaults", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="the defaults check's folder (its results.jsonl)")
    parser.add_argument("glue_dir", nargs="?", help="the GLUE TSVs, for the input-blind reference of each task")
    args = parser.parse_args(argv)
    lines = table(load_rows(args.results_dir / "results.jsonl"))
    machine = (args.results_dir / "machine.txt").read_text().strip() if (args.results_dir / "machine.txt").exists() \
        else "2 CPU cores (AVX-512), no GPU (docs/machines/)"
    (args.results_dir / "results.md").write_text(
        "`python -m studies.grid --spec studies/specs/defaults_check.json`: run_glue.py's defaults plus `--optimizer` "
        "and each rule's SAM fields; AdamW beside every rule on the same command and seed. "
        f"ln 2 = {math.log(2):.3f}. {reference_line(args.glue_dir)}Machine: {machine}.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
