"""GLUE tasks as the studies read them: their order in tables, the metric a run is scored by, and
what a model that ignores its input reaches (the reference every summary prints beside a score)."""

from __future__ import annotations

import functools
import math
from typing import Optional

from glue_scripts.glue_data import glue_task, load_glue_tsv
from glue_scripts.glue_metrics import MAIN_METRIC, input_blind_baseline

TASK_ORDER = ("rte", "mrpc", "cola", "stsb", "sst2", "qnli", "mnli", "qqp", "wnli")
"""The order of the tables' columns."""
__all__ = ["MAIN_METRIC", "TASK_ORDER", "at_uniform_predictor", "input_blind_baselines", "run_at_uniform_predictor",
           "run_input_blind"]


UNIFORM_LOSS_TOLERANCE = 0.002
"""A classifier's dev loss this close to ln(classes) is the 50/50 (uniform) predictor's."""


def at_uniform_predictor(task: str, eval_loss: Optional[float]) -> bool:
    """Whether a run ended at the loss of predicting every class equally for every input."""
    spec = glue_task(task)
    return (not spec.is_regression and eval_loss is not None
            and abs(eval_loss - math.log(spec.num_labels)) < UNIFORM_LOSS_TOLERANCE)


def run_at_uniform_predictor(row: dict) -> bool:
    """Whether a row's scored model (its best, or its last where it kept the best: `last_eval_loss`)
    ended at the uniform predictor's dev loss: such a score measures nothing learnt."""
    return any(at_uniform_predictor(row["task"], row["results"].get(key)) for key in ("eval_loss", "last_eval_loss"))


def run_input_blind(row: dict) -> bool:
    """Whether a row's best or last model learnt nothing the input says: it ends at the uniform predictor's
    dev loss, or predicts one class for every held-out row (`heldout_predicted_classes`), which a loss
    check misses on an imbalanced task (a loss near the class prior's entropy, not ln 2). Rows from
    before that count: a held-out Matthews correlation of exactly 0, scikit-learn's value when one class
    is predicted throughout."""
    results = row["results"]
    return run_at_uniform_predictor(row) or any(
        results.get(f"{prefix}heldout_predicted_classes") == 1
        or (f"{prefix}heldout_predicted_classes" not in results
            and results.get(f"{prefix}heldout_matthews_correlation") == 0.0)
        for prefix in ("", "last_"))


def input_blind_baselines(glue_dir: Optional[str], tasks: list[str],
                          train: bool = False) -> dict[str, tuple[float, Optional[float]]]:
    """Task -> (lowest loss, majority-class score) of a model that ignores its input, from the dev
    labels under `glue_dir` (`train`: the training labels; tasks without the file are left out)."""
    baselines = {}
    for task in tasks if glue_dir else []:
        try:
            baselines[task] = task_input_blind_baseline(glue_dir, task, train)
        except FileNotFoundError:
            continue
    return baselines


@functools.lru_cache(maxsize=None)
def task_input_blind_baseline(glue_dir: str, task: str, train: bool) -> tuple[float, Optional[float]]:
    """One task's input-blind baseline, read once per process (the summary is rewritten after every run)."""
    split = "train" if train else glue_task(task).eval_splits[0]
    return input_blind_baseline(task, load_glue_tsv(glue_dir, task, [split])[split]["label"])


