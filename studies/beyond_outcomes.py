"""What one run of issue 39's study measures, and an arm's paired differences to the baseline: the held-out
score of the early-stopped model and of the last, and each compression's drop and the score after it (the
row fields `run_glue.py --early_stopping_split --eval_compressed` writes)."""

from __future__ import annotations

from typing import Optional

COMPRESSIONS = ("int8", "prune30", "prune50", "prune70", "noise0.01", "noise0.02", "noise0.05")

LAST_VS_STOPPED = "last-vs-stopped"
"""The arm's last model against AdamW's early-stopped one: whether the arm, trained to the end with no
validation split to stop on, does what early stopping does for AdamW (a secondary outcome, added after
the pilot's seed 2 showed the arms' early stopping on a 200-row noisy split pick poor models)."""

SCORED = " score"
"""A compression's name + SCORED: the compressed model's held-out score itself (what a user who ships it gets),
rather than its drop from the model's own score."""


def outcome(row: dict, name: str) -> Optional[float]:
    """`heldout`: the best model's held-out score; `last`: the last model's; a compression: its drop;
    a compression + `SCORED`: the score after it."""
    if name == "heldout":
        return row.get("heldout_score")
    if name == "last":
        return row.get("last_heldout_score")
    if name.endswith(SCORED):
        return row["results"].get(f"heldout_{name.removesuffix(SCORED)}_{row['metric']}")
    return row["results"].get(f"heldout_{name}_drop_{row['metric']}")


def paired(rows: list[dict], method: str, baseline: str, name: str) -> list[float]:
    """The arm's outcome minus the baseline's, per seed both have (`LAST_VS_STOPPED`: the arm's last
    model minus the baseline's early-stopped one)."""
    own, theirs = ("last", "heldout") if name == LAST_VS_STOPPED else (name, name)
    return paired_models(rows, method, own, baseline, theirs)


def paired_models(rows: list[dict], method: str, own: str, baseline: str, theirs: str,
                  leaving_out: frozenset[int] = frozenset()) -> list[float]:
    """The arm's outcome `own` minus the baseline's outcome `theirs`, per seed both have (but `leaving_out`)."""
    arm = {r["seed"]: outcome(r, own) for r in rows if r["method"] == method and r["seed"] not in leaving_out}
    base = {r["seed"]: outcome(r, theirs) for r in rows if r["method"] == baseline}
    return [arm[s] - base[s] for s in sorted(arm) if arm[s] is not None and base.get(s) is not None]
