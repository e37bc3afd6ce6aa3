"""GLUE metrics computed locally (scikit-learn, SciPy), under the key names of `evaluate`'s "glue".

`evaluate.load("glue", task)` needs the Hub; these give the same numbers offline, with the same
keys (`accuracy`, `f1`, `matthews_correlation`, `pearson`, `spearmanr`) plus the `combined_score`
(mean of the task's metrics when it has several) that the Transformers example `run_glue.py` adds.
The Trainer prefixes them with `eval_`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, mean_squared_error
from transformers import EvalPrediction

from .glue_data import glue_task

MAIN_METRIC = {"cola": "matthews_correlation", "stsb": "combined_score", "mrpc": "combined_score",
               "qqp": "combined_score", "sst2": "accuracy", "mnli": "accuracy", "qnli": "accuracy",
               "rte": "accuracy", "wnli": "accuracy"}
"""The metric a GLUE task is scored by (a run's score, the early-stopping criterion)."""


def glue_metrics(task: Optional[str], predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """The task's metrics of `predictions` (class ids, or scores for STS-B) against `references`.

    `task=None` (a dataset that is not GLUE) gives `accuracy`, or `mse` when the predictions are
    floats, as the Transformers example does for its own files.
    """
    predictions, references = np.asarray(predictions), np.asarray(references)
    if task is None:
        if np.issubdtype(predictions.dtype, np.floating):
            return {"mse": float(mean_squared_error(references, predictions))}
        return {"accuracy": float(accuracy_score(references, predictions))}
    name = glue_task(task).name
    if name == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    if name == "stsb":
        result = {"pearson": float(pearsonr(predictions, references)[0]),
                  "spearmanr": float(spearmanr(predictions, references)[0])}
    elif name in ("mrpc", "qqp"):
        result = {"accuracy": float(accuracy_score(references, predictions)),
                  "f1": float(f1_score(references, predictions))}
    else:
        return {"accuracy": float(accuracy_score(references, predictions))}
    result["combined_score"] = float(np.mean(list(result.values())))
    return result


def input_blind_baseline(task: str, labels: Sequence[float]) -> tuple[float, Optional[float]]:
    """What a model that ignores its input reaches on `labels` (a dev set): the lowest eval loss
    (classification: the entropy of the label frequencies, in nats, reached by predicting them;
    STS-B: the labels' variance, the squared error of predicting their mean) and the main score of
    predicting the majority class (None for STS-B: constant predictions have no correlation).

    The reference for a run's `eval_loss` (ln 2 only on balanced binary tasks; CoLA's is 0.618,
    MRPC's 0.624): well below it the model has learnt; near it, it may have learnt nothing, or be
    overconfident on its errors, which only the score tells apart."""
    labels = np.asarray(labels)
    if glue_task(task).is_regression:
        return float(labels.astype(np.float64).var()), None
    frequencies = np.bincount(labels.astype(np.int64)) / len(labels)
    present = frequencies[frequencies > 0]
    majority = np.full_like(labels, int(np.argmax(frequencies)))
    scores = glue_metrics(task, majority, labels)
    return float(-(present * np.log(present)).sum()), scores.get("combined_score", next(iter(scores.values())))


def predictions_from_logits(logits: np.ndarray | tuple, is_regression: bool) -> np.ndarray:
    """Model outputs -> predictions: the score of a regression head, the argmax of a classifier's logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    logits = np.asarray(logits)
    if is_regression:
        return logits.reshape(len(logits), -1)[:, 0]
    return np.argmax(logits, axis=-1)


def make_compute_metrics(task: Optional[str], is_regression: bool,
                         model_to_task: Optional[Sequence[int]] = None) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for the Trainer: logits -> predictions -> `glue_metrics`.

    `model_to_task[i]` is the task's id of the model's label `i`, for a checkpoint that orders the
    task's labels its own way. The Trainer hands over predictions and references in the model's ids;
    they are scored in the task's, since F1 (MRPC, QQP) is that of the task's class 1.
    """
    mapping = None if model_to_task is None else np.asarray(model_to_task)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predictions = predictions_from_logits(prediction.predictions, is_regression)
        references = prediction.label_ids
        if mapping is not None:
            predictions, references = mapping[predictions], mapping[np.asarray(references)]
        return glue_metrics(task, predictions, references)

    return compute_metrics
