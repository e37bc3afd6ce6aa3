"""The statistics every study reports: paired differences with 95 % t-intervals, paired ratios of
step times, and the share of SAM's gain a rule keeps with a paired bootstrap interval."""

from __future__ import annotations

import math
import statistics
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats

def bonferroni(comparisons: int) -> float:
    """The level of each of `comparisons` intervals that together keep 95 %: 1 - 0.05 / comparisons."""
    return 1 - 0.05 / comparisons


def half_width(sd: float, n: int, level: float = 0.95) -> float:
    """Half the two-sided t-interval at `level` of the mean of n paired differences of spread `sd`."""
    return float(stats.t.ppf(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n))


def interval(differences: list[float], level: float = 0.95) -> tuple[float, Optional[float], Optional[float]]:
    """Mean and two-sided t-interval (95 % unless `level` says otherwise; Bonferroni over c
    comparisons: `bonferroni(c)`) of paired differences (no interval for fewer than 2)."""
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return mean, None, None
    half = half_width(statistics.stdev(differences), n, level)
    return mean, mean - half, mean + half


def difference_cell(differences: list[float], level: float = 0.95) -> str:
    """A paired-difference cell, x 100: mean [t-interval at `level`], "(n=1)" for one seed, "—" for none."""
    if not differences:
        return "—"
    mean, low, high = interval(differences, level)
    return f"{100 * mean:+.1f}" + (f" [{100 * low:+.1f}, {100 * high:+.1f}]" if low is not None else " (n=1)")


def paired_differences(table: pd.DataFrame, method: str, baseline: str, tasks: list[str],
                       averaged: Optional[list[str]] = None) -> dict[str, list[float]]:
    """Per task, and for the average over `averaged` (default: `tasks`; seeds that have each of
    them), score(method) - score(baseline) for each seed both have."""
    averaged = tasks if averaged is None else averaged
    scores = table.set_index(["task", "method", "seed"])["score"]
    out: dict[str, list[float]] = {}
    by_seed: dict[int, list[float]] = {}
    for task in tasks:
        seeds = sorted(set(table[(table.task == task) & (table.method == method)].seed)
                       & set(table[(table.task == task) & (table.method == baseline)].seed))
        out[task] = [scores[task, method, s] - scores[task, baseline, s] for s in seeds]
        if task in averaged:
            for s, d in zip(seeds, out[task]):
                by_seed.setdefault(s, []).append(d)
    out["average"] = [sum(ds) / len(ds) for ds in by_seed.values() if len(ds) == len(averaged)]
    return out


def paired_ratio(values: dict[tuple[str, str, int, str], float], task: str, method: str, baseline: str) -> float:
    """Median over the seeds both have of the method's value (a step time, a runtime) / the baseline's
    on the same seed and machine (`values`: (task, method, seed, machine) -> value): paired, so that a
    run slowed by other work on the machine moves one ratio, not the cell, and a seed whose runs were
    made on two machines gives no ratio."""
    ratios = [value / values[task, baseline, seed, machine] for (t, m, seed, machine), value in values.items()
              if (t, m) == (task, method) and (task, baseline, seed, machine) in values]
    return statistics.median(ratios) if ratios else math.nan


def kept_share(rows: list[dict], method: str, baseline: str, sam: str, key: str = "heldout_score"
               ) -> tuple[Optional[float], Optional[float], Optional[float]]:
    """(rule - baseline) / (SAM - baseline) of the means over the seeds all three have, and its 95 %
    paired bootstrap interval (percentile; none for fewer than 3 seeds)."""
    by = {(r["method"], r["seed"]): r.get(key) for r in rows}
    seeds = sorted(s for (m, s) in by if m == method and None not in (by[m, s], by.get((baseline, s)), by.get((sam, s))))
    if not seeds:
        return None, None, None
    rule = np.array([by[method, s] - by[baseline, s] for s in seeds])
    gain = np.array([by[sam, s] - by[baseline, s] for s in seeds])
    if gain.mean() == 0:
        return None, None, None
    point = float(rule.mean() / gain.mean())
    if len(seeds) < 3:
        return point, None, None
    if np.allclose(rule, point * gain):  # every seed keeps the same share: no spread to resample
        return point, point, point
    found = stats.bootstrap((rule, gain), lambda a, b, axis=-1: a.mean(axis=axis) / b.mean(axis=axis), paired=True,
                            vectorized=True, n_resamples=9999, method="percentile", random_state=0)
    return point, float(found.confidence_interval.low), float(found.confidence_interval.high)
