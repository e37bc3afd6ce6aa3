"""Rows of issue 39's study as `run_glue.py` writes them, for the tests of its summary and its protocol."""

from __future__ import annotations

import json


def row(method: str, seed: int, heldout: float, last: float, drops: dict[str, float]) -> dict:
    """A run's row as run_glue writes it: each compression's drop and the score after it."""
    return {"task": "sst2", "method": method, "seed": seed, "metric": "accuracy", "heldout_score": heldout,
            "last_heldout_score": last, "results": {"train_median_step_time": 1.0 if method == "adamw" else 0.5,
                                                    **{f"heldout_{k}_drop_accuracy": v for k, v in drops.items()},
                                                    **{f"heldout_{k}_accuracy": heldout - v for k, v in drops.items()}}}


def write(folder, rows):
    folder.mkdir(parents=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
