"""Print, as JSON, each SAM method's rho with the best mean dev score over the tuning tasks.

    python -m glue_scripts.pick_rho docs/results/glue-tuning    # -> {"sam": 0.01, "top_k": ..., ...}

A run's family is read from the settings it recorded (`optimizer`, `ksam_selection`,
`ksam_loss_share`), so a spec that leaves the selection to the library's default is placed too; only
rhos run on every tuning task compete; a tie goes to the smaller rho. Adaptive k (`ksam_loss_share`,
a variable k) takes the loss-sampled rho unless it was tuned itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from glue_scripts.reproduce_glue import load_rows


def family(settings: dict[str, str]) -> str | None:
    """`sam`, `adaptive_k`, or the K-SAM run's selection rule; None for the base optimizer."""
    if settings.get("optimizer") == "sam":
        return "sam"
    if settings.get("optimizer") != "ksam":
        return None
    if settings.get("ksam_loss_share") not in (None, "None"):
        return "adaptive_k"
    return settings["ksam_selection"]


def pick(rows: list[dict]) -> dict[str, float]:
    tasks = {r["task"] for r in rows}
    scores: dict[tuple[str, float], dict[str, float]] = {}
    for r in rows:
        name = family(r["settings"])
        if name is not None:
            scores.setdefault((name, float(r["settings"]["sam_rho"])), {})[r["task"]] = r["score"]
    best: dict[str, tuple[float, float]] = {}
    for (name, rho), by_task in sorted(scores.items(), key=lambda item: item[0][1]):
        if set(by_task) == tasks:
            mean = sum(by_task.values()) / len(by_task)
            if name not in best or mean > best[name][0]:
                best[name] = (mean, rho)
    picked = {name: rho for name, (_, rho) in best.items()}
    if "loss_sampled" in picked:
        picked.setdefault("adaptive_k", picked["loss_sampled"])  # the same rule with a variable k
    return picked


if __name__ == "__main__":
    print(json.dumps(pick(load_rows(Path(sys.argv[1]) / "results.jsonl")), indent=2))
