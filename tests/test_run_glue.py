"""End-to-end runs of `glue_scripts/run_glue.py` on real GLUE data with a tiny random BERT."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from glue_scripts import run_glue
from glue_scripts.run_glue import given_options, main, parse_args

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"
RTE_LABELS = {"entailment", "not_entailment"}


@pytest.fixture(scope="module")
def glue_dir() -> Path:
    for candidate in (SHARED / "glue", Path(os.environ.get("GLUE_DIR", "/nonexistent"))):
        if (candidate / "RTE" / "train.tsv").is_file():
            return candidate
    pytest.skip(f"no GLUE TSV release at {SHARED / 'glue'} or $GLUE_DIR")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT encoder (hidden 32, no head: each task adds its own, as on a
    pretrained checkpoint) with the real MiniLM tokenizer next to it."""
    if not (TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {TOKENIZER}")
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_args(model: Path, glue_dir: Path, output_dir: Path, task: str, optimizer: str, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--task_name", task, "--glue_dir", str(glue_dir),
            "--output_dir", str(output_dir), "--optimizer", optimizer,
            "--do_train", "--do_eval", "--do_predict",
            "--max_train_samples", "48", "--max_eval_samples", "24", "--max_predict_samples", "16",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--num_train_epochs", "1", "--max_seq_length", "64", "--learning_rate", "1e-3",
            "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--seed", "3",
            "--log_level", "warning", "--disable_tqdm", "True", *extra]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def prediction_lines(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction"
    return [line.split("\t") for line in lines[1:]]


def check_common_outputs(output_dir: Path, results: dict) -> dict:
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json",
                 "config.json", "model.safetensors", "tokenizer.json"):
        assert (output_dir / name).is_file(), name
    on_disk = read_json(output_dir / "all_results.json")
    assert on_disk == results
    assert math.isfinite(on_disk["train_loss"])
    assert on_disk["train_median_step_time"] > 0
    assert on_disk["train_runtime"] > 0
    assert on_disk["train_samples"] == 48 and on_disk["train_steps"] == 6
    assert on_disk["eval_samples"] == 24
    train = read_json(output_dir / "train_results.json")
    assert train["train_median_step_time"] == on_disk["train_median_step_time"]
    assert "eval_loss" in read_json(output_dir / "eval_results.json")
    assert read_json(output_dir / "trainer_state.json")["global_step"] == 6
    return on_disk


def test_rte_ksam_end_to_end(tiny_model, glue_dir, tmp_path):
    results = main(run_args(tiny_model, glue_dir, tmp_path, "rte", "ksam", "--ksam_k", "0.5", "--sam_rho", "0.1",
                            "--logging_steps", "2"))
    results = check_common_outputs(tmp_path, results)
    logs = [entry for entry in read_json(tmp_path / "trainer_state.json")["log_history"] if "loss" in entry]
    assert len(logs) == 3 and all(entry["sam_kept"] == 4 for entry in logs)  # the K-SAM step ran: 4 of 8 kept
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["optimizer"] == "ksam" and results["sam_mode"] == "ksam"
    assert results["sam_rho"] == 0.1 and results["ksam_k"] == 0.5 and results["optim"] == "adamw_torch"
    rows = prediction_lines(tmp_path / "predict_results_rte.txt")
    assert [row[0] for row in rows] == [str(i) for i in range(16)]
    assert {row[1] for row in rows} <= RTE_LABELS
    assert read_json(tmp_path / "config.json")["id2label"] == {"0": "entailment", "1": "not_entailment"}


def test_mrpc_adamw_with_dynamic_padding(tiny_model, glue_dir, tmp_path):
    results = main(run_args(tiny_model, glue_dir, tmp_path, "mrpc", "adamw", "--pad_to_max_length", "False"))
    results = check_common_outputs(tmp_path, results)
    assert results["optimizer"] == "adamw" and results["sam_mode"] == "none" and results["optim"] == "adamw_torch"
    for key in ("eval_accuracy", "eval_f1", "eval_combined_score"):
        assert 0.0 <= results[key] <= 1.0
    assert results["eval_combined_score"] == pytest.approx((results["eval_accuracy"] + results["eval_f1"]) / 2)
    rows = prediction_lines(tmp_path / "predict_results_mrpc.txt")
    assert len(rows) == 16 and {row[1] for row in rows} <= {"not_equivalent", "equivalent"}


def test_stsb_regression_with_sgd(tiny_model, glue_dir, tmp_path):
    results = main(run_args(tiny_model, glue_dir, tmp_path, "stsb", "sgd"))
    results = check_common_outputs(tmp_path, results)
    assert results["optim"] == "sgd" and results["sam_mode"] == "none"
    assert {"eval_pearson", "eval_spearmanr", "eval_combined_score"} <= results.keys()
    assert read_json(tmp_path / "config.json")["problem_type"] == "regression"
    rows = prediction_lines(tmp_path / "predict_results_stsb.txt")
    assert len(rows) == 16
    for _, score in rows:
        assert len(score.split(".")[1]) == 3 and math.isfinite(float(score))


def test_json_arguments_on_the_command_line(tiny_model, glue_dir, tmp_path):
    """The script itself, run as the README runs it, with all arguments in one JSON file."""
    output_dir = tmp_path / "out"
    arguments = {"model_name_or_path": str(tiny_model), "task_name": "rte", "glue_dir": str(glue_dir),
                 "output_dir": str(output_dir), "optimizer": "sam", "sam_rho": 0.02, "do_train": True,
                 "do_eval": True, "max_train_samples": 16, "max_eval_samples": 8, "max_seq_length": 32,
                 "per_device_train_batch_size": 8, "num_train_epochs": 1, "save_strategy": "no",
                 "report_to": "none", "use_cpu": True, "log_level": "warning", "disable_tqdm": True}
    config = tmp_path / "args.json"
    config.write_text(json.dumps(arguments))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "glue_scripts" / "run_glue.py"), str(config)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = read_json(output_dir / "all_results.json")
    assert results["optimizer"] == "sam" and results["sam_mode"] == "sam" and results["sam_rho"] == 0.02
    assert results["train_steps"] == 2 and results["eval_samples"] == 8
    assert not (output_dir / "predict_results_rte.txt").exists()


# ----------------------------------------------------------------------------- arguments
BASE = ["--model_name_or_path", "unused", "--output_dir", "unused", "--task_name", "rte"]


@pytest.mark.parametrize("optimizer, sam_mode, optim", [
    ("adamw", "none", "adamw_torch"), ("sgd", "none", "sgd"), ("sam", "sam", "adamw_torch"),
    ("ksam", "ksam", "adamw_torch")])
def test_optimizer_mapping(optimizer, sam_mode, optim):
    _, data_args, training_args = parse_args(BASE + ["--optimizer", optimizer])
    assert data_args.optimizer == optimizer
    assert training_args.sam_mode == sam_mode and training_args.optim.value == optim


def test_default_is_adamw_and_explicit_base_optimizer_is_kept():
    _, data_args, training_args = parse_args(BASE)
    assert data_args.optimizer == "adamw" and training_args.sam_mode == "none"
    _, _, training_args = parse_args(BASE + ["--optimizer", "ksam", "--optim", "sgd"])
    assert training_args.sam_mode == "ksam" and training_args.optim.value == "sgd"
    _, _, training_args = parse_args(BASE + ["--optimizer", "sam", "--sam_mode", "sam"])  # agreeing: fine
    assert training_args.sam_mode == "sam"


def test_given_options():
    assert given_options(["--sam-mode", "x", "--optim=sgd", "value", "-v"]) == {"sam_mode", "optim"}


@pytest.mark.parametrize("extra, match", [
    (["--optimizer", "lion"], "--optimizer 'lion' is unknown: use one of adamw, sgd, sam, ksam"),
    (["--sam_mode", "ksam"], "--sam_mode ksam conflicts with --optimizer adamw.*--optimizer ksam"),
    (["--optimizer", "ksam", "--sam_mode", "none"], "--sam_mode none conflicts with --optimizer ksam"),
    (["--optimizer", "sgd", "--optim", "adamw_torch"], "--optim adamw_torch conflicts with --optimizer sgd"),
    (["--optimizer", "adamw", "--optim", "sgd"], "--optim sgd conflicts with --optimizer adamw"),
])
def test_bad_optimizer_arguments(extra, match):
    with pytest.raises(ValueError, match=match):
        parse_args(BASE + extra)


def test_bad_data_arguments():
    with pytest.raises(ValueError, match="--task_name 'glue' is unknown: use one of cola, sst2"):
        parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--task_name", "glue"])
    with pytest.raises(ValueError, match="No data: give --task_name"):
        parse_args(["--model_name_or_path", "m", "--output_dir", "o"])
    with pytest.raises(ValueError, match="--train_file 'train.tsv' must be a .csv or .json"):
        parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--train_file", "train.tsv",
                    "--validation_file", "dev.csv"])


def test_task_name_is_lowercased():
    _, data_args, _ = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--task_name", "RTE"])
    assert data_args.task_name == "rte"


def test_glue_dir_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/some/glue")
    _, data_args, _ = parse_args(BASE)
    assert data_args.glue_dir == "/some/glue"
    monkeypatch.delenv("GLUE_DIR")
    _, data_args, _ = parse_args(BASE)
    assert data_args.glue_dir is None


def test_max_seq_length_beyond_the_model(tiny_model, glue_dir, tmp_path):
    with pytest.raises(ValueError, match="--max_seq_length 1024 is longer than the model's maximum 512"):
        main(run_args(tiny_model, glue_dir, tmp_path, "rte", "adamw", "--max_seq_length", "1024"))


def test_missing_train_split_is_explained(tiny_model, glue_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="QNLI/train.tsv.*nyu-mll/glue"):
        main(run_args(tiny_model, glue_dir, tmp_path, "qnli", "adamw"))


def test_eval_only_on_qnli_needs_no_train_file(tiny_model, glue_dir, tmp_path):
    results = main(["--model_name_or_path", str(tiny_model), "--task_name", "qnli", "--glue_dir", str(glue_dir),
                    "--output_dir", str(tmp_path), "--do_eval", "--max_eval_samples", "16",
                    "--max_seq_length", "64", "--report_to", "none", "--use_cpu", "--log_level", "warning"])
    assert results["eval_samples"] == 16 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["optimizer"] == "adamw"
    assert run_glue.OPTIMIZERS["adamw"] == "none"


def test_own_csv_files(tiny_model, tmp_path):
    """Data that is not GLUE: label names come from the training file, sorted."""
    rows = [("a fine film", "pos"), ("dull and long", "neg"), ("great cast", "pos"), ("a mess", "neg")] * 4
    header = "sentence,label\n"
    (tmp_path / "train.csv").write_text(header + "".join(f"{text},{label}\n" for text, label in rows))
    (tmp_path / "dev.csv").write_text(header + "".join(f"{text},{label}\n" for text, label in rows[:6]))
    (tmp_path / "test.csv").write_text("sentence\n" + "".join(f"{text}\n" for text, _ in rows[:5]))
    output_dir = tmp_path / "out"
    results = main(["--model_name_or_path", str(tiny_model), "--train_file", str(tmp_path / "train.csv"),
                    "--validation_file", str(tmp_path / "dev.csv"), "--test_file", str(tmp_path / "test.csv"),
                    "--output_dir", str(output_dir), "--do_train", "--do_eval", "--do_predict",
                    "--max_seq_length", "16", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
                    "--optimizer", "ksam",
                    "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--log_level", "warning",
                    "--cache_dir", str(tmp_path / "cache")])
    assert results["train_steps"] == 2 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert read_json(output_dir / "config.json")["label2id"] == {"neg": 0, "pos": 1}
    predictions = prediction_lines(output_dir / "predict_results_test.txt")
    assert len(predictions) == 5 and {label for _, label in predictions} <= {"neg", "pos"}


def test_ksam_previous_loss_ranks_from_glue_idx(tiny_model, glue_dir, tmp_path):
    """`ksam_selection=previous_loss` needs each example's id: GLUE's `idx` column reaches the trainer."""
    results = main(["--model_name_or_path", str(tiny_model), "--task_name", "wnli", "--glue_dir", str(glue_dir),
                    "--output_dir", str(tmp_path), "--do_train", "--max_train_samples", "16",
                    "--per_device_train_batch_size", "8", "--num_train_epochs", "2", "--max_seq_length", "32",
                    "--optimizer", "ksam", "--ksam_selection", "previous_loss", "--logging_steps", "1",
                    "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--log_level", "warning"])
    assert results["ksam_selection"] == "previous_loss" and results["train_steps"] == 4
    logs = [entry for entry in read_json(tmp_path / "trainer_state.json")["log_history"] if "loss" in entry]
    assert logs[-1].get("sam_ranked_from_memory", 0) >= 1  # second epoch: every example seen before
