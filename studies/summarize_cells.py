"""The summary of a grid run from a spec (`python -m studies.grid --spec`): one table over its cells.

Each cell (`<results_dir>/<cell>/results.jsonl`) is one training setting (task, data size, label
noise, epochs). Per cell and method: the mean dev and held-out scores and losses over seeds, and the
paired difference to the baseline with its 95 % t-interval, on the held-out block (the larger test
set, where a cell has one) and on the dev set. Writes `cells.md` (the table), `gap.png` (each SAM
method's held-out gap against the training-set size, one panel per noise level, one line per task
and method) and `epochs.png` (dev score per epoch and training loss of the chosen cells).

    python -m studies.summarize_cells docs/results/sam-wins [--curves CELL ...]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studies.methods import short_name
from studies.rows import load_rows
from studies.stats import difference_cell, interval
from studies.tasks import UNIFORM_LOSS_TOLERANCE, run_input_blind


@dataclass(frozen=True)
class Cell:
    """One cell's setting, read from its rows."""

    name: str
    task: str
    train_size: str
    noise: float
    epochs: str


def cell_of(name: str, rows: list[dict]) -> Cell:
    settings = rows[0]["settings"]
    return Cell(name, rows[0]["task"], settings.get("train_sample", settings.get("max_train_samples", "all")),
                float(settings.get("label_noise", 0.0)), settings["num_train_epochs"])


def paired(rows: list[dict], method: str, baseline: str, key: str, baseline_key: Optional[str] = None) -> list[float]:
    """`key` of `method` minus the baseline's (its `baseline_key`, default `key`), per seed both have
    (None-valued rows skipped)."""
    other = baseline_key or key
    by_seed = {(r["method"], r["seed"]): r for r in rows}
    return [by_seed[method, s][key] - by_seed[baseline, s][other] for (m, s) in by_seed
            if m == method and (baseline, s) in by_seed
            and by_seed[method, s].get(key) is not None and by_seed[baseline, s].get(other) is not None]


def flat(row: dict) -> dict:
    """The row's scores and losses at the top level (held-out ones None where the cell has none)."""
    results = row["results"]
    return {**row, "eval_loss": results.get("eval_loss"), "heldout_loss": results.get("heldout_loss"),
            "step": results.get("train_median_step_time"),
            "best_epoch_score": max((e["score"] for e in row.get("epochs") or []), default=None)}


def mean(values: list[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def cell_table(cells: dict[str, tuple[Cell, list[dict]]], baseline: str) -> list[str]:
    lines = ["| cell | task | n | noise | epochs | method | seeds | input-blind | held-out | dev | held-out loss | dev loss "
             "| held-out diff | dev diff | dev - baseline's best epoch | step / baseline |", "|---" * 16 + "|"]
    for name, (cell, rows) in cells.items():
        methods = list(dict.fromkeys(r["method"] for r in rows))
        methods = [baseline] + [m for m in methods if m != baseline] if baseline in methods else methods
        for method in methods:
            own = [r for r in rows if r["method"] == method]

            def fmt(value: Optional[float], scale: float = 100, digits: int = 1) -> str:
                return "—" if value is None else f"{scale * value:.{digits}f}"

            ratios = [r["step"] / b["step"] for r in own for b in rows
                      if b["method"] == baseline and b["seed"] == r["seed"] and r.get("step") and b.get("step")
                      and r.get("machine") == b.get("machine")]
            lines.append(" | ".join([
                f"| {name}", cell.task, cell.train_size, f"{cell.noise:g}", cell.epochs, method, str(len(own)),
                str(sum(run_input_blind(r) for r in own) or ""),
                fmt(mean([r.get("heldout_score") for r in own])), fmt(mean([r["score"] for r in own])),
                fmt(mean([r.get("heldout_loss") for r in own]), 1, 3), fmt(mean([r.get("eval_loss") for r in own]), 1, 3),
                "" if method == baseline else difference_cell(paired(rows, method, baseline, "heldout_score")),
                "" if method == baseline else difference_cell(paired(rows, method, baseline, "score")),
                fmt(mean([r["best_epoch_score"] for r in own])) + " (best epoch)" if method == baseline else
                difference_cell(paired(rows, method, baseline, "score", "best_epoch_score")),
                f"{statistics.median(ratios):.2f}" if ratios and method != baseline else ""]) + " |")
    return lines


def plot_gap(cells: dict[str, tuple[Cell, list[dict]]], baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noises = sorted({cell.noise for cell, _ in cells.values()})
    fig, axes = plt.subplots(1, len(noises), figsize=(4.2 * len(noises), 3.6), squeeze=False, sharey=True)
    series: dict[tuple[float, str, str], list[tuple[float, float, float, float]]] = {}
    for cell, rows in cells.values():
        if not cell.train_size.isdigit():
            continue
        for method in dict.fromkeys(r["method"] for r in rows):
            diffs = paired(rows, method, baseline, "heldout_score") or paired(rows, method, baseline, "score")
            if method == baseline or not diffs:
                continue
            middle, low, high = interval(diffs)
            series.setdefault((cell.noise, cell.task, method), []).append(
                (int(cell.train_size), 100 * middle, 100 * (low if low is not None else middle),
                 100 * (high if high is not None else middle)))
    for (noise, task, method), points in sorted(series.items()):
        ax = axes[0][noises.index(noise)]
        points.sort()
        x, y, low, high = zip(*points)
        line, = ax.plot(x, y, marker="o", label=f"{task} {short_name(method)}")
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12)
    for ax, noise in zip(axes[0], noises):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"label noise {noise:g}")
        ax.set_xlabel("training examples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"held-out score - {baseline}, x 100\n(mean, 95 % interval over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_epochs(cells: dict[str, tuple[Cell, list[dict]]], names: list[str], path: Path) -> None:
    """Per cell: the dev score after every epoch (top) and the logged training loss (bottom), one
    line per run, a colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6), squeeze=False)
    for column, name in enumerate(names):
        cell, rows = cells[name]
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for r in rows:
            color = f"C{methods.index(r['method'])}"
            label = short_name(r["method"]) if r["seed"] == min(x["seed"] for x in rows) else None
            if r.get("epochs"):
                axes[0][column].plot([e["epoch"] for e in r["epochs"]], [100 * e["score"] for e in r["epochs"]],
                                     color=color, marker=".", lw=0.9, label=label)
            curve = r.get("curve", [])
            axes[1][column].plot([log["epoch"] for log in curve], [log["loss"] for log in curve],
                                 color=color, lw=0.8)
        axes[0][column].set_title(f"{name}")
        axes[0][column].legend(fontsize=7)
        axes[1][column].set_xlabel("epoch")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev score x 100")
    axes[1][0].set_ylabel("training loss (on the labels trained on)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_cells(results_dir: Path) -> dict[str, tuple[Cell, list[dict]]]:
    cells = {}
    for path in sorted(results_dir.glob("*/results.jsonl")):
        rows = [flat(r) for r in load_rows(path)]
        if rows:
            cells[path.parent.name] = (cell_of(path.parent.name, rows), rows)
    return cells


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--baseline", default="adamw")
    parser.add_argument("--curves", nargs="*", default=None,
                        help="cells whose per-epoch curves to plot (default: every cell)")
    args = parser.parse_args(argv)
    cells = load_cells(args.results_dir)
    if not cells:
        raise SystemExit(f"summarize_cells: no <cell>/results.jsonl under {args.results_dir}")
    text = ["Written by `python -m studies.summarize_cells` from each cell's `results.jsonl`.", "",
            f"Scores x 100 (mean over seeds); diff: the paired difference to {args.baseline} (same seed, same "
            "data draw), mean [95 % t-interval], \"(n=1)\" for one seed. Held-out: the block of the training "
            "file no run trains on; dev: the GLUE dev set. Dev - baseline's best epoch: the final model's dev "
            f"score against {args.baseline}'s best dev score after any epoch (early stopping by an oracle that "
            "reads the dev set it is scored on: the baseline's most flattering control). Input-blind: runs "
            f"whose best or last model ended at the uniform predictor's dev loss (ln classes, within "
            f"{UNIFORM_LOSS_TOLERANCE}) or predicts one class for every held-out row: their scores measure nothing learnt.", "",
            *cell_table(cells, args.baseline), ""]
    (args.results_dir / "cells.md").write_text("\n".join(text))
    plot_gap(cells, args.baseline, args.results_dir / "gap.png")
    plot_epochs(cells, args.curves or list(cells), args.results_dir / "epochs.png")
    print("\n".join(text))


if __name__ == "__main__":
    main()
