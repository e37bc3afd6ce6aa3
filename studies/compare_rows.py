"""Your runs beside the committed runs of the same settings: does it reproduce here?

    python -m studies.compare_rows runs/quickstart/sst2-n1000-noise30 \
        docs/results/sam-wins/sst2-n1000-noise30 docs/results/frontier/tuning/sst2-n1000-noise30

For every run in the first folder's `results.jsonl`, the committed run with the same key (every
setting equal, seed included) from the other folders: held-out and dev scores, and the median step
time with its ratio to the AdamW run of the same seed and folder, for both. A run without a
committed twin shows "—". Scores match only up to the machine's arithmetic (another CPU or a GPU
sums in another order); step times are this machine's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from studies.rows import load_rows


def step_vs_adamw(row: dict, rows: list[dict]) -> Optional[float]:
    """The row's median step time over that of the AdamW run of the same seed in `rows`."""
    adamw = next((r for r in rows if r["method"] == "adamw" and r["seed"] == row["seed"]), None)
    step, base = row["results"].get("train_median_step_time"), (adamw or {}).get("results", {}).get("train_median_step_time")
    return step / base if step and base else None


def cells(row: Optional[dict], rows: list[dict]) -> list[str]:
    if row is None:
        return ["—"] * 4

    def score(value: Optional[float]) -> str:
        return "—" if value is None else f"{100 * value:.1f}"

    ratio = step_vs_adamw(row, rows)
    step = row["results"].get("train_median_step_time")
    return [score(row.get("heldout_score")), score(row["score"]), "—" if step is None else f"{step:.3f}",
            "—" if ratio is None else f"{ratio:.2f}"]


def compare(mine: list[dict], committed: list[list[dict]]) -> list[str]:
    lines = ["| method | seed | held-out: yours | committed | dev: yours | committed | step s: yours | committed "
             "| step / AdamW: yours | committed |", "|---" * 10 + "|"]
    for row in mine:
        source = next((rows for rows in committed if any(r["key"] == row["key"] for r in rows)), [])
        twin = next((r for r in source if r["key"] == row["key"]), None)
        yours, theirs = cells(row, mine), cells(twin, source)
        lines.append("| " + " | ".join([row["method"], str(row["seed"]),
                                         *(value for pair in zip(yours, theirs) for value in pair)]) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("yours", type=Path, help="a folder holding your results.jsonl")
    parser.add_argument("committed", type=Path, nargs="+", help="folders of committed results.jsonl files")
    args = parser.parse_args(argv)
    mine = load_rows(args.yours / "results.jsonl")
    if not mine:
        raise SystemExit(f"compare_rows: no runs in {args.yours / 'results.jsonl'}: run the grid first.")
    lines = compare(mine, [load_rows(folder / "results.jsonl") for folder in args.committed])
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
