"""The plots every grid writes: score against step time, and the training curves (with the ranking
pass's confidence), one colour per method label."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from glue_scripts.glue_data import glue_task
from studies.methods import short_name
from studies.tasks import MAIN_METRIC

def label_colors(methods: list[str]) -> dict[str, object]:
    """Plot label -> colour, one per label: methods that differ only in a per-task path (a warm
    start) share one; past ten labels, tab20's twenty colours keep them apart."""
    from matplotlib import colormaps

    labels = list(dict.fromkeys(short_name(m) for m in methods))
    palette = [f"C{i}" for i in range(10)] if len(labels) <= 10 else list(colormaps["tab20"].colors)
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def save_with_legend(fig, colors: dict[str, object], handles: list, path: Path) -> None:
    """The labels' legend under the panels, two columns, the figure grown to hold it; saved with
    bbox_inches="tight", so that long labels are not cut at the edges, then closed."""
    import matplotlib.pyplot as plt

    rows = (len(colors) + 1) // 2
    fig.set_figheight(fig.get_figheight() + 0.22 * rows)
    fig.legend(handles, list(colors), loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.22 * rows / fig.get_figheight() + 0.02, 1, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_score_vs_time(stats_table: pd.DataFrame, tasks: list[str], path: Path, baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = label_colors(list(dict.fromkeys(stats_table.method)))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in stats_table[stats_table.task == task].itertuples():
            ax.errorbar(row.step_vs_base, 100 * row.mean, yerr=0 if pd.isna(row.std) else 100 * row.std,
                        fmt="o", capsize=3, color=colors[short_name(row.method)])
        ax.set_title(f"{task} ({MAIN_METRIC[task]})")
        ax.set_xlabel(f"median step time / {baseline}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("dev score x 100")
    save_with_legend(fig, colors, [plt.Line2D([], [], marker="o", linestyle="", color=c) for c in colors.values()], path)


def plot_curves(rows: list[dict], tasks: list[str], methods: list[str], path: Path,
                input_blind: dict[str, float]) -> None:
    """Training loss (top; dotted: `input_blind[task]`, the loss of predicting the training labels'
    frequencies, else ln classes) and, for SAM methods on classification, the batch's mean top-class
    probability (bottom) against the step, one line per run (seeds in the same colour). K-SAM logs
    its ranking pass's loss, without dropout by default: a little below a train-mode loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = label_colors(methods)
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.2 * len(tasks), 5.6), squeeze=False)
    for column, task in enumerate(tasks):
        for r in rows:
            if r["task"] != task or not r.get("curve"):
                continue
            steps = [log["step"] for log in r["curve"]]
            color = colors[short_name(r["method"])]
            axes[0][column].plot(steps, [log["loss"] for log in r["curve"]], color=color, lw=0.8)
            confidence = [(log["step"], log["sam_mean_max_prob"]) for log in r["curve"] if "sam_mean_max_prob" in log]
            if confidence:
                axes[1][column].plot(*zip(*confidence), color=color, lw=0.8)
        axes[0][column].set_title(task)
        if task in input_blind or not glue_task(task).is_regression:
            reference = input_blind.get(task, math.log(glue_task(task).num_labels))
            axes[0][column].axhline(reference, color="grey", ls=":", lw=0.8)
        axes[1][column].set_xlabel("step")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("mean top-class prob. (SAM / K-SAM)")
    save_with_legend(fig, colors, [plt.Line2D([], [], color=c) for c in colors.values()], path)


