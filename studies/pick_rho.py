"""Print, as JSON, each SAM method's rho with the best mean score over the tuning tasks.

    python -m studies.pick_rho docs/results/glue-tuning    # -> {"sam": 0.01, "top_k": ..., ...}
    python -m studies.pick_rho docs/results/glue-tuning --learning_rate    # -> 1e-4 (AdamW's, stage 1)
    python -m studies.pick_rho docs/results/frontier/tuning/sst2-n1000-noise30 --by-method --score heldout_score
        # -> {"momentum": 0.2, "sam@sam_every_n_steps=2": 0.1, ...}: the methods of the frontier, rho left out

A run's family is read from the settings it recorded (`optimizer`, `ksam_selection`,
`ksam_loss_share`), so a spec that leaves the selection to the library's default is placed too; with
`--by-method` it is the run's method spec without its `sam_rho` (so that schedules and k's are rules
of their own). Only rhos run on every tuning task compete; a tie goes to the smaller rho. Adaptive k
(`ksam_loss_share`, a variable k) takes the loss-sampled rho unless it was tuned itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from studies.rows import load_rows


def family(settings: dict[str, str]) -> str | None:
    """`sam`, `adaptive_k`, or the K-SAM run's selection rule; None for the base optimizer."""
    if settings.get("optimizer") == "sam":
        return "sam"
    if settings.get("optimizer") != "ksam":
        return None
    if settings.get("ksam_loss_share") not in (None, "None"):
        return "adaptive_k"
    return settings["ksam_selection"]


def rule_of(row: dict) -> str | None:
    """The run's method spec without its `sam_rho` (None for a method without one: the base optimizer)."""
    if "sam_rho" not in row["settings"]:
        return None
    return "@".join(part for part in row["method"].split("@") if not part.startswith("sam_rho="))


def pick(rows: list[dict], score: str = "score", by_method: bool = False) -> dict[str, float]:
    tasks = {r["task"] for r in rows}
    scores: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        name = rule_of(r) if by_method else family(r["settings"])
        if name is not None and r.get(score) is not None:
            scores.setdefault((name, float(r["settings"]["sam_rho"])), {})[r["task"]] = r[score]
    best: dict[str, tuple[float, float]] = {}
    for (name, rho), by_task in sorted(scores.items(), key=lambda item: item[0][1]):
        if set(by_task) == tasks:
            mean = sum(by_task.values()) / len(by_task)
            if name not in best or mean > best[name][0]:
                best[name] = (mean, rho)
    picked = {name: rho for name, (_, rho) in best.items()}
    if "loss_sampled" in picked and not by_method:
        picked.setdefault("adaptive_k", picked["loss_sampled"])  # the same rule with a variable k
    return picked


def pick_learning_rate(rows: list[dict]) -> str:
    """The learning rate of the `adamw@learning_rate=X` run with the best mean score over the tasks
    (only rates run on every task compete), as the method spec writes it."""
    tasks = {r["task"] for r in rows}
    scores: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"].startswith("adamw@learning_rate="):
            scores.setdefault(r["method"].split("=", 1)[1], {})[r["task"]] = r["score"]
    return max((sum(v.values()) / len(v), rate) for rate, v in scores.items() if set(v) == tasks)[1]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--score", default="score", help="the row's key to maximise: score (dev) or heldout_score")
    parser.add_argument("--by-method", action="store_true", help="one rho per method spec, not per family")
    parser.add_argument("--learning_rate", action="store_true",
                        help="print AdamW's best learning rate instead (runs named adamw@learning_rate=X)")
    args = parser.parse_args(argv)
    if args.learning_rate:
        print(pick_learning_rate(load_rows(args.results_dir / "results.jsonl")))
        return
    print(json.dumps(pick(load_rows(args.results_dir / "results.jsonl"), args.score, args.by_method), indent=2))


if __name__ == "__main__":
    main()
