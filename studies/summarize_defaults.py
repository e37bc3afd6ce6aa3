"""The table of `defaults_check.sh`: every K-SAM variant beside AdamW on the same command and seed.

Usage: python -m studies.summarize_defaults docs/results/defaults [GLUE_DIR]
(GLUE_DIR: the dev labels, for the input-blind reference of each task; the machine line is
RESULTS/machine.txt where there is one, else this project's 2-core CPU)
"""

import argparse
import json
import math
from pathlib import Path
from typing import Optional

from studies.tasks import input_blind_baselines

METRIC = {"mrpc": "eval_combined_score", "sst2": "eval_accuracy"}
SETTINGS = ("ksam_selection", "sam_rho", "ksam_k")


def variant_settings(row: dict) -> dict[str, str]:
    """A run's rule: its flags (where one repeats, the last wins, as argparse reads them) and, unless
    they name another optimizer, the K-SAM settings its results recorded (those left at their
    defaults included: a SAM run records K-SAM's defaults too, which it does not use)."""
    flags = row.get("flags", "").split()
    settings = {flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2])}
    if settings.get("optimizer", "ksam") == "ksam":
        settings.update({name: str(row["results"][name]) for name in SETTINGS if name in row["results"]})
    return settings


def table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per (task, batch, seed, K-SAM variant), AdamW's row beside it."""
    cells = {(r["task"], r["batch"], r["seed"], r["variant"]): r for r in rows}
    lines = ["| task | batch | seed | variant | K-SAM settings | AdamW score | K-SAM score | K-SAM - AdamW | "
             "AdamW eval_loss | K-SAM eval_loss | K-SAM median step / AdamW |", "|---" * 11 + "|"]
    for (task, batch, seed, variant), row in sorted(cells.items()):
        if variant == "adamw" or (task, batch, seed, "adamw") not in cells:
            continue
        a, k = cells[task, batch, seed, "adamw"]["results"], row["results"]
        ran = variant_settings(row)
        settings = ", ".join(f"{name}={k[name]}" for name in SETTINGS if name in k) if ran.get("optimizer", "ksam") == \
            "ksam" else ", ".join(f"{name}={value}" for name, value in ran.items())
        lines.append(f"| {task} | {batch} | {seed} | {variant} | {settings} | {100 * a[METRIC[task]]:.1f} | "
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
    out, glue_dir = args.results_dir, args.glue_dir
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    lines = table(rows)
    machine = (out / "machine.txt").read_text().strip() if (out / "machine.txt").exists() else \
        "2 CPU cores (AVX-512), no GPU (docs/machines/2026-11-29-epyc.txt)"
    (out / "results.md").write_text(
        "`bash glue_scripts/defaults_check.sh`: run_glue.py's defaults plus `--optimizer`; the `ksam` variant "
        "is the library's defaults with no other flag, the others the candidates the defaults were chosen "
        f"from. ln 2 = {math.log(2):.3f}. {reference_line(glue_dir)}Machine: {machine}.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
