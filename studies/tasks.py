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
__all__ = ["MAIN_METRIC", "TASK_ORDER", "at_uniform_predictor", "input_blind_baselines", "replayed_heldout_floor",
           "run_at_uniform_predictor", "run_input_blind"]


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


SHAPING_OPTIONS = ("train_sample", "train_sample_seed", "max_train_samples", "label_noise", "label_noise_seed",
                   "test_split_rows", "early_stopping_split")
"""The `run_glue.py` options that decide which training rows a run holds out, samples and noises."""


def replayed_heldout_floor(glue_dir: Optional[str], row: dict) -> Optional[float]:
    """The majority class's score on the held-out rows a run kept, for a row written before `run_glue.py`
    recorded it (`heldout_input_blind_score`): the run's training split shaped again from the row's settings,
    by the run's own code (the same seeded sample and noise, the same check for held-out text inside a
    training row). None without the GLUE files, a held-out block or a classification task."""
    settings = row.get("settings") or {}
    task = settings.get("task_name")
    if not glue_dir or not task or "test_split_rows" not in settings or glue_task(task).is_regression:
        return None
    options = tuple((name, str(settings[name])) for name in SHAPING_OPTIONS if name in settings)
    try:
        return _replayed_floor(str(glue_dir), task, str(row["seed"]), options)
    except FileNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _replayed_floor(glue_dir: str, task: str, seed: str, options: tuple[tuple[str, str], ...]) -> float:
    from glue_scripts import run_glue  # the runner: Transformers, read only when a floor is replayed

    argv = ["--model_name_or_path", "none", "--output_dir", "none", "--task_name", task, "--seed", seed]
    for name, value in options:
        argv += [f"--{name}", value]
    _, data_args, training_args = run_glue.parse_args(argv)
    spec = glue_task(task)
    raw = load_glue_tsv(glue_dir, spec.name, ["train"])
    record = run_glue.shape_training_split(raw, data_args, training_args, spec, list(range(spec.num_labels)))
    return record["heldout_input_blind_score"]
