"""GLUE metrics against values derived by hand from their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from glue_scripts.glue_metrics import glue_metrics, input_blind_baseline, make_compute_metrics, predictions_from_logits

# A binary confusion matrix: TP = 3, TN = 2, FP = 1, FN = 2 (positive class 1).
REFERENCES = np.array([1, 1, 1, 0, 0, 0, 1, 1])
PREDICTIONS = np.array([1, 1, 1, 0, 0, 1, 0, 0])
TP, TN, FP, FN = 3, 2, 1, 2


def test_confusion_matrix_is_as_stated():
    assert int(((PREDICTIONS == 1) & (REFERENCES == 1)).sum()) == TP
    assert int(((PREDICTIONS == 0) & (REFERENCES == 0)).sum()) == TN
    assert int(((PREDICTIONS == 1) & (REFERENCES == 0)).sum()) == FP
    assert int(((PREDICTIONS == 0) & (REFERENCES == 1)).sum()) == FN


def test_cola_matthews_correlation():
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))  # 4 / sqrt(240)
    result = glue_metrics("cola", PREDICTIONS, REFERENCES)
    assert result.keys() == {"matthews_correlation"}
    assert result["matthews_correlation"] == pytest.approx(expected)
    assert result["matthews_correlation"] == pytest.approx(0.2581988897)


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_accuracy_f1_and_combined_score(task):
    accuracy = (TP + TN) / len(REFERENCES)  # 5 / 8
    f1 = 2 * TP / (2 * TP + FP + FN)  # 6 / 9
    result = glue_metrics(task, PREDICTIONS, REFERENCES)
    assert result.keys() == {"accuracy", "f1", "combined_score"}
    assert result["accuracy"] == pytest.approx(0.625)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["combined_score"] == pytest.approx((accuracy + f1) / 2)


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte", "wnli"])
def test_accuracy_only(task):
    result = glue_metrics(task, PREDICTIONS, REFERENCES)
    assert result == {"accuracy": pytest.approx(0.625)}


def test_mnli_three_classes():
    result = glue_metrics("mnli", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]))
    assert result == {"accuracy": pytest.approx(0.75)}


def test_stsb_pearson_and_spearman():
    # x = 1, 2, 3 and y = 1, 2, 4: deviations (-1, 0, 1) and (-4/3, -1/3, 5/3), so
    # r = 3 / sqrt(2 * 14/3) = sqrt(27/28); the ranks agree, so Spearman's rho = 1.
    result = glue_metrics("stsb", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert result.keys() == {"pearson", "spearmanr", "combined_score"}
    assert result["pearson"] == pytest.approx(math.sqrt(27 / 28))
    assert result["spearmanr"] == pytest.approx(1.0)
    assert result["combined_score"] == pytest.approx((math.sqrt(27 / 28) + 1) / 2)


def test_stsb_spearman_with_a_swapped_pair():
    # Ranks (1, 2, 3, 4) against (1, 3, 2, 4): sum d^2 = 2, rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8.
    result = glue_metrics("stsb", np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert result["spearmanr"] == pytest.approx(0.8)


def test_task_name_is_case_insensitive_and_checked():
    assert glue_metrics("RTE", PREDICTIONS, REFERENCES) == {"accuracy": pytest.approx(0.625)}
    with pytest.raises(ValueError, match="Unknown GLUE task 'glue'"):
        glue_metrics("glue", PREDICTIONS, REFERENCES)


def test_without_task_accuracy_or_mse():
    assert glue_metrics(None, PREDICTIONS, REFERENCES) == {"accuracy": pytest.approx(0.625)}
    # squared errors 0, 1, 4 -> mean 5/3
    assert glue_metrics(None, np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0])) == {"mse": pytest.approx(5 / 3)}


def test_compute_metrics_takes_argmax_of_logits():
    logits = np.eye(2)[PREDICTIONS] * 2.0 - 1.0  # the predicted class has the larger logit
    compute = make_compute_metrics("mrpc", is_regression=False)
    result = compute(EvalPrediction(predictions=logits, label_ids=REFERENCES))
    assert result["accuracy"] == pytest.approx(0.625)
    assert result["f1"] == pytest.approx(2 / 3)
    # a model that returns more than the logits: the first element is used
    assert compute(EvalPrediction(predictions=(logits, np.zeros((8, 3))), label_ids=REFERENCES)) == result


def test_compute_metrics_squeezes_regression_scores():
    scores = np.array([[1.0], [2.0], [3.0]])
    compute = make_compute_metrics("stsb", is_regression=True)
    result = compute(EvalPrediction(predictions=scores, label_ids=np.array([1.0, 2.0, 4.0])))
    assert result["pearson"] == pytest.approx(math.sqrt(27 / 28))


def test_predictions_from_logits_keeps_a_single_example():
    assert predictions_from_logits(np.array([[0.7]]), is_regression=True).tolist() == [pytest.approx(0.7)]
    assert predictions_from_logits(np.array([[0.1, 0.9]]), is_regression=False).tolist() == [1]


def test_compute_metrics_scores_in_the_task_label_space():
    """A model whose label ids are the task's reversed: F1 is still that of the task's positive class."""
    model_to_task = [1, 0]  # model id 0 is the task's class 1
    model_predictions, model_references = 1 - PREDICTIONS, 1 - REFERENCES
    logits = np.eye(2)[model_predictions]
    compute = make_compute_metrics("mrpc", is_regression=False, model_to_task=model_to_task)
    result = compute(EvalPrediction(predictions=logits, label_ids=model_references))
    assert result == glue_metrics("mrpc", PREDICTIONS, REFERENCES)
    assert result["f1"] == pytest.approx(2 / 3)
    assert glue_metrics("mrpc", model_predictions, model_references)["f1"] != pytest.approx(2 / 3)  # the wrong class


def test_input_blind_baseline_by_hand():
    # Labels 1, 1, 1, 0: predicting the frequencies (3/4, 1/4) costs -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623 nats;
    # the majority class (1) scores accuracy 3/4 and F1 2 * 3 / (2 * 3 + 1) = 6/7 on MRPC.
    loss, score = input_blind_baseline("mrpc", [1, 1, 1, 0])
    assert loss == pytest.approx(0.562335, abs=1e-6)
    assert score == pytest.approx((0.75 + 6 / 7) / 2)
    loss, score = input_blind_baseline("cola", [0, 1, 0, 1])  # balanced: ln 2; a constant scores MCC 0
    assert loss == pytest.approx(math.log(2)) and score == 0.0
    loss, score = input_blind_baseline("rte", [0, 0, 0])  # one class only: nothing to learn
    assert loss == 0.0 and score == 1.0
    loss, score = input_blind_baseline("stsb", [1.0, 2.0, 4.0, 5.0])  # squared error of the mean (3): 2.5
    assert loss == pytest.approx(2.5) and score is None
