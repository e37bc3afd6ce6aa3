"""run_glue.py's early-stopping split and `--eval_compressed`, end to end on real SST-2 rows with a
tiny random BERT (issue 39's controls and measurements)."""

from __future__ import annotations

import json

import pytest
import torch

from glue_scripts.run_glue import main
from glue_scripts.training_split import split_for_stopping
from tests.scripts.test_run_glue import run_args, tiny_model  # noqa: F401  (a fixture)
from tests.testing_utils import SHARED

pytestmark = pytest.mark.slow

GLUE = SHARED / "glue"
SETTINGS = ("--train_sample", "60", "--label_noise", "0.2", "--test_split_rows", "62349:62449",
            "--early_stopping_split", "0.25", "--num_train_epochs", "3", "--lr_scheduler_type", "constant",
            "--learning_rate", "3e-3", "--save_weights", "False")


def run(model, tmp_path, name: str, *extra: str) -> dict:
    if not (GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip("needs ../shared/glue")
    args = run_args(model, GLUE, tmp_path / name, "sst2", "adamw", *SETTINGS, *extra)
    args = [a for a in args if a not in ("--do_predict",)]
    drop = {"--max_train_samples", "--max_predict_samples"}
    args = [a for i, a in enumerate(args) if a not in drop and (i == 0 or args[i - 1] not in drop)]
    return main(args)


def test_the_split_is_seeded_disjoint_and_sized():
    from datasets import Dataset

    rows = Dataset.from_dict({"sentence": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    train, stop = split_for_stopping(rows, 0.25, seed=1)
    assert (len(train), len(stop)) == (30, 10)
    assert set(train["sentence"]).isdisjoint(stop["sentence"]) and len(set(train["sentence"]) | set(stop["sentence"])) == 40
    assert split_for_stopping(rows, 0.25, seed=1)[1]["sentence"] == stop["sentence"]
    assert split_for_stopping(rows, 0.25, seed=2)[1]["sentence"] != stop["sentence"]
    assert len(split_for_stopping(rows, 7, seed=1)[1]) == 7


def test_early_stopping_scores_the_best_model_and_the_last(tiny_model, tmp_path, caplog):  # noqa: F811
    with caplog.at_level("WARNING"):
        results = run(tiny_model, tmp_path, "stopped")
    assert results["early_stopping_rows"] == 15 and results["train_samples"] == 45
    assert results["early_stopping_flipped"] == 3  # 20 % of its 15 rows, as the training rows are noised
    state = json.loads((tmp_path / "stopped" / "trainer_state.json").read_text())
    scored = [(log["step"], log["eval_stop_accuracy"]) for log in state["log_history"] if "eval_stop_accuracy" in log]
    assert [step for step, _ in scored][:3] == [3, 6, 9]  # every half epoch (6 steps an epoch)
    best_step, best_score = max(scored, key=lambda item: (item[1], -item[0]))  # the first of the best
    assert (results["early_stopping_best_step"], results["early_stopping_best_score"]) == (best_step, best_score)
    assert {"last_heldout_accuracy", "heldout_accuracy", "last_eval_accuracy", "eval_accuracy"} <= set(results)
    assert results["heldout_predicted_classes"] in (1, 2) and results["last_heldout_predicted_classes"] in (1, 2)
    at_the_floor = results["early_stopping_best_score"] <= results["early_stopping_input_blind_score"]
    assert at_the_floor == ("no better than predicting the split's majority class" in caplog.text)
    assert best_step < results["train_steps"]  # here the best is not the last model...
    assert results["heldout_loss"] != results["last_heldout_loss"]  # ...and the scores are the best one's
    # The best model is the model of that step: a run stopped there (a constant learning rate, the same
    # data order) ends where this one's best was.
    again = run(tiny_model, tmp_path, "short", "--max_steps", str(best_step))
    for key in ("heldout_loss", "heldout_accuracy", "eval_loss", "eval_accuracy"):
        assert again[f"last_{key}"] == results[key], key


def test_the_compressed_scores_and_their_drops(tiny_model, tmp_path):  # noqa: F811
    results = run(tiny_model, tmp_path, "compressed", "--eval_compressed", "True")
    for variant in ("int8", "prune30", "prune50", "prune70", "noise0.01", "noise0.02", "noise0.05"):
        score = results[f"heldout_{variant}_accuracy"]
        assert 0 <= score <= 1, variant
        assert results[f"heldout_{variant}_drop_accuracy"] == pytest.approx(results["heldout_accuracy"] - score)


def test_predicted_classes_counts_the_classes_of_a_direct_forward(tiny_model, tmp_path):  # noqa: F811
    """The count the summaries flag a constant predictor by, from the Trainer's predictions, against the
    argmax of the model's own forward pass; a classifier bias that swamps the input leaves one class."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from glue_scripts.run_glue import predicted_classes
    from ksam_hf import KSAMConfig, KSAMTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sentences = [f"{word} film number {i}" for i, word in enumerate(["a fine", "an awful", "the dull", "our bright"] * 6)]
    encoded = tokenizer(sentences)
    dataset = Dataset.from_dict({**encoded, "label": [i % 2 for i in range(len(sentences))]})
    trainer = KSAMTrainer(model=model, args=KSAMConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                       per_device_eval_batch_size=5), processing_class=tokenizer)
    padded = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():  # the boundary at the median margin: inputs on both sides of it
        logits = model(**padded).logits
        model.classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median() + 1e-6
        direct = set(model(**padded).logits.argmax(-1).tolist())
    assert direct == {0, 1} and predicted_classes(trainer.predict(dataset).predictions) == 2
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 1e4]))
    assert predicted_classes(trainer.predict(dataset).predictions) == 1
