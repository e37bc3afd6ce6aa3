"""End-to-end runs of `glue_scripts/run_glue.py` on real GLUE data with a tiny random BERT."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import accelerate
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from glue_scripts import run_glue
from glue_scripts.glue_data import load_glue_tsv
from glue_scripts.run_glue import given_options, main, parse_args
from ksam_hf import KSAMConfig
from tests.testing_utils import REPO, SHARED

pytestmark = pytest.mark.slow  # end-to-end: real processes / real data (CI runs them)

TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"
RTE_LABELS = {"entailment", "not_entailment"}


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
    assert on_disk["train_median_step_time"] > 0 and on_disk["train_mean_step_time"] > 0
    assert on_disk["train_runtime"] > 0
    assert on_disk["train_samples"] == 48 and on_disk["train_steps"] == 6
    assert on_disk["eval_samples"] == 24
    train = read_json(output_dir / "train_results.json")
    assert train["train_median_step_time"] == on_disk["train_median_step_time"]
    assert "eval_loss" in read_json(output_dir / "eval_results.json")
    assert read_json(output_dir / "trainer_state.json")["global_step"] == 6
    return on_disk


@pytest.mark.parametrize("optimizer, extra", [("momentum", ["--sam_every_n_steps", "2"]),
                                              ("ksam", ["--ksam_selection", "random_ascent"])])
def test_the_cheap_rules_run_end_to_end(tiny_model, glue_dir, tmp_path, optimizer, extra):
    results = main(run_args(tiny_model, glue_dir, tmp_path / "out", "rte", optimizer, *extra))
    assert results["optimizer"] == optimizer and results["sam_mode"] == optimizer
    assert math.isfinite(results["train_loss"]) and results["train_steps"] == 6
    assert {key: results[key] for key in ("sam_every_n_steps", "ksam_selection")} == {
        "sam_every_n_steps": 2 if optimizer == "momentum" else 1,
        "ksam_selection": "random_ascent" if optimizer == "ksam" else "top_k_ascent"}


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
    ("ksam", "ksam", "adamw_torch"), ("momentum", "momentum", "adamw_torch"),
    ("random_direction", "random_direction", "adamw_torch")])
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
    (["--optimizer", "lion"], "--optimizer 'lion' is unknown: use one of adamw, sgd, ksam, sam"),
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
    with pytest.raises(ValueError, match="--max_seq_length 1024 is longer than the model's maximum 128"):
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


# ----------------------------------------------------------------------------- output directory and resuming
CHECKPOINTING = ("--save_strategy", "steps", "--save_steps", "2")
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json", "trainer_state.json",
                "predict_results_rte.txt")


@pytest.fixture(scope="module")
def finished_run(tiny_model, glue_dir, tmp_path_factory) -> Path:
    """An AdamW run on RTE that finished its 6 steps, with checkpoints at steps 2, 4 and 6."""
    output_dir = tmp_path_factory.mktemp("finished") / "run"
    main(run_args(tiny_model, glue_dir, output_dir, "rte", "adamw", *CHECKPOINTING))
    return output_dir


def copy_of(run: Path, tmp_path: Path, keep_results: bool = True) -> Path:
    """A copy of `run` to resume in; without its results, as a run killed during training leaves it."""
    target = tmp_path / "run"
    shutil.copytree(run, target)
    if not keep_results:
        for path in target.iterdir():
            if path.is_file():
                path.unlink()
    return target


def rte_adamw(tiny_model, glue_dir, output_dir, *extra) -> list[str]:
    return run_args(tiny_model, glue_dir, output_dir, "rte", "adamw", *CHECKPOINTING, *extra)


def eval_only_args(model: Path, glue_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue_dir),
            "--output_dir", str(output_dir), "--do_eval", "--max_eval_samples", "8", "--max_seq_length", "32",
            "--report_to", "none", "--use_cpu", "--log_level", "warning", *extra]


def test_every_checkpoint_records_the_run_settings(finished_run, tiny_model):
    for step in (2, 4, 6):
        settings = read_json(finished_run / f"checkpoint-{step}" / "run_settings.json")
        assert settings["task_name"] == "rte" and settings["optimizer"] == "adamw"
        assert settings["model_name_or_path"] == str(tiny_model)
        assert settings["learning_rate"] == 1e-3 and settings["seed"] == 3
        assert settings["per_device_train_batch_size"] == 8 and settings["num_train_epochs"] == 1
        assert settings["max_train_samples"] == 48 and settings["max_seq_length"] == 64
        assert set(KSAMConfig.sam_field_names()) <= settings.keys()
        assert settings["sam_mode"] == "none"
    assert not list(finished_run.glob("**/*.tmp"))


def test_resume_with_other_settings_is_refused(finished_run, tiny_model, glue_dir, tmp_path):
    """The bug: a K-SAM run at lr 0.5 picked up an AdamW run's finished checkpoint, trained 0 steps and
    reported the AdamW model's score as K-SAM's."""
    output_dir = copy_of(finished_run, tmp_path)
    before = read_json(output_dir / "all_results.json")
    with pytest.raises(ValueError) as error:
        main(run_args(tiny_model, glue_dir, output_dir, "rte", "ksam", *CHECKPOINTING, "--learning_rate", "0.5"))
    message = str(error.value)
    assert f"{output_dir / 'checkpoint-6'} was written with other settings" in message
    assert "optimizer: adamw -> ksam" in message and "learning_rate: 0.001 -> 0.5" in message
    assert "sam_mode: none -> ksam" in message
    assert "--overwrite_output_dir" in message and "\n" not in message
    assert read_json(output_dir / "all_results.json") == before  # nothing trained, nothing written


def test_resume_of_a_finished_run_says_so(finished_run, tiny_model, glue_dir, tmp_path, caplog):
    output_dir = copy_of(finished_run, tmp_path)
    (output_dir / "all_results.json").write_text('{"stale": 1}')
    with caplog.at_level("WARNING"):
        results = main(rte_adamw(tiny_model, glue_dir, output_dir))
    assert results["resumed_finished_run"] is True
    assert results["resumed_from_checkpoint"] == str(output_dir / "checkpoint-6")
    assert "stale" not in results and "train_loss" not in results  # no 0-step loss reported as trained
    assert results["train_steps"] == 6 and 0.0 <= results["eval_accuracy"] <= 1.0
    assert re.search(r"checkpoint-6 is of a run that had already finished \(step 6 of 6\)", caplog.text)


def test_interrupted_run_resumes_from_its_last_checkpoint(finished_run, tiny_model, glue_dir, tmp_path):
    output_dir = copy_of(finished_run, tmp_path, keep_results=False)
    shutil.rmtree(output_dir / "checkpoint-6")
    results = main(rte_adamw(tiny_model, glue_dir, output_dir))
    assert results["resumed_from_checkpoint"] == str(output_dir / "checkpoint-4")
    assert results["resumed_finished_run"] is False and results["train_steps"] == 6
    assert read_json(output_dir / "trainer_state.json")["global_step"] == 6
    assert (output_dir / "checkpoint-6" / "run_settings.json").is_file()


def test_fresh_run_records_no_resume(tiny_model, glue_dir, tmp_path):
    results = main(eval_only_args(tiny_model, glue_dir, tmp_path / "out"))
    assert results["resumed_from_checkpoint"] is None and results["resumed_finished_run"] is False


def test_checkpoint_without_run_settings_needs_an_explicit_choice(finished_run, tiny_model, glue_dir, tmp_path):
    output_dir = copy_of(finished_run, tmp_path, keep_results=False)
    for path in output_dir.glob("checkpoint-*/run_settings.json"):
        path.unlink()
    with pytest.raises(ValueError, match=r"checkpoint-6 has no run_settings.json.*--overwrite_output_dir.*"
                                         r"--resume_from_checkpoint"):
        main(rte_adamw(tiny_model, glue_dir, output_dir))
    results = main(rte_adamw(tiny_model, glue_dir, output_dir, "--resume_from_checkpoint",
                             str(output_dir / "checkpoint-4")))
    assert results["resumed_from_checkpoint"] == str(output_dir / "checkpoint-4") and results["train_steps"] == 6
    results = main(rte_adamw(tiny_model, glue_dir, output_dir, "--overwrite_output_dir"))
    assert results["resumed_from_checkpoint"] is None
    assert read_json(output_dir / "trainer_state.json")["global_step"] == 6 and "train_loss" in results
    assert (output_dir / "checkpoint-2" / "run_settings.json").is_file()  # trained afresh from step 0


def test_explicit_resume_with_other_settings_is_recorded(finished_run, tiny_model, glue_dir, tmp_path, caplog):
    output_dir = copy_of(finished_run, tmp_path, keep_results=False)
    with caplog.at_level("WARNING"):
        results = main(rte_adamw(tiny_model, glue_dir, output_dir, "--learning_rate", "2e-3",
                                 "--resume_from_checkpoint", str(output_dir / "checkpoint-4")))
    assert results["resumed_with_changed_settings"] == ["learning_rate: 0.001 -> 0.002"]
    assert "learning_rate: 0.001 -> 0.002" in caplog.text


def test_resume_from_a_missing_checkpoint(tiny_model, glue_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint .*nowhere: no such directory"):
        main(rte_adamw(tiny_model, glue_dir, tmp_path / "out", "--resume_from_checkpoint", str(tmp_path / "nowhere")))


def test_non_empty_output_dir_is_refused(tiny_model, glue_dir, tmp_path):
    """The bug: a run in a folder of old results merged them into its own all_results.json."""
    (tmp_path / "all_results.json").write_text('{"eval_accuracy": 0.99, "stale": true}')
    (tmp_path / "predict_results_rte.txt").write_text("index\tprediction\n")
    with pytest.raises(ValueError, match=rf"--output_dir {re.escape(str(tmp_path))} is not empty \(all_results.json, "
                                         r"predict_results_rte.txt\).*--overwrite_output_dir"):
        main(eval_only_args(tiny_model, glue_dir, tmp_path))
    assert read_json(tmp_path / "all_results.json")["stale"] is True


def test_overwrite_output_dir_clears_the_old_run(finished_run, tiny_model, glue_dir, tmp_path):
    output_dir = copy_of(finished_run, tmp_path)
    (output_dir / "all_results.json").write_text('{"stale": true}')
    (output_dir / "notes.txt").write_text("mine")
    results = main(eval_only_args(tiny_model, glue_dir, output_dir, "--overwrite_output_dir"))
    assert "stale" not in results and "train_loss" not in results
    assert read_json(output_dir / "all_results.json") == results
    assert not list(output_dir.glob("checkpoint-*"))
    for name in ("predict_results_rte.txt", "train_results.json", "trainer_state.json", "model.safetensors"):
        assert not (output_dir / name).exists(), name
    assert (output_dir / "notes.txt").read_text() == "mine"  # not a run output: kept


def test_overwrite_output_dir_never_deletes_the_model_it_loads(finished_run, tiny_model, glue_dir, tmp_path):
    output_dir = copy_of(finished_run, tmp_path)
    for model in (output_dir, output_dir / "checkpoint-4"):
        with pytest.raises(ValueError, match=r"--overwrite_output_dir would delete --model_name_or_path"):
            main(eval_only_args(model, glue_dir, output_dir, "--overwrite_output_dir"))
    assert (output_dir / "checkpoint-4" / "model.safetensors").is_file()


def test_unwritable_output_dir_fails_before_anything_loads(tiny_model, glue_dir, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the output directory was checked")

    monkeypatch.setattr(run_glue, "load_raw_datasets", no_loading)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=rf"--output_dir {re.escape(str(blocker / 'out'))} cannot be written"):
        main(eval_only_args(tiny_model, glue_dir, blocker / "out"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_dir_fails_before_anything_loads(tiny_model, glue_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_glue, "load_raw_datasets", lambda *a, **k: pytest.fail("data loaded"))
    tmp_path.joinpath("ro").mkdir(mode=0o500)
    with pytest.raises(ValueError, match="cannot be written"):
        main(eval_only_args(tiny_model, glue_dir, tmp_path / "ro"))


@pytest.mark.parametrize("removed", ["trainer_state.json", "model.safetensors"])
def test_half_written_checkpoint_is_skipped(finished_run, tiny_model, glue_dir, tmp_path, caplog, removed):
    output_dir = copy_of(finished_run, tmp_path, keep_results=False)
    (output_dir / "checkpoint-6" / removed).unlink()
    (output_dir / "checkpoint-6" / "run_settings.json").unlink()  # written last: a kill leaves none
    with caplog.at_level("WARNING"):
        results = main(rte_adamw(tiny_model, glue_dir, output_dir))
    assert results["resumed_from_checkpoint"] == str(output_dir / "checkpoint-4")
    assert read_json(output_dir / "trainer_state.json")["global_step"] == 6
    assert re.search(rf"{re.escape(str(output_dir / 'checkpoint-6'))} is incomplete \(no {removed}\)", caplog.text)


def test_only_a_half_written_checkpoint_is_refused(finished_run, tiny_model, glue_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(finished_run / "checkpoint-2", output_dir / "checkpoint-2")
    (output_dir / "checkpoint-2" / "trainer_state.json").unlink()
    with pytest.raises(ValueError, match=r"checkpoint-2 is incomplete \(no trainer_state.json\) and there is no "
                                         r"complete checkpoint to resume.*--overwrite_output_dir"):
        main(rte_adamw(tiny_model, glue_dir, output_dir))


# ----------------------------------------------------------------------------- results under DDP
def test_all_results_is_replaced_atomically(tmp_path, monkeypatch):
    """A reader never sees a half-written all_results.json: the new one is renamed over the old."""
    path = tmp_path / "all_results.json"
    path.write_text(json.dumps({"eval_accuracy": 0.5}))
    replaced = []
    real_replace = os.replace

    def watching_replace(source, target):
        assert read_json(Path(target)) == {"eval_accuracy": 0.5}  # the old file, whole, until the rename
        assert Path(source).parent == tmp_path and read_json(Path(source))["optimizer"] == "ksam"
        replaced.append(Path(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", watching_replace)
    run_glue.record_settings(str(tmp_path), {"optimizer": "ksam"})
    assert replaced == [path]
    assert read_json(path) == {"eval_accuracy": 0.5, "optimizer": "ksam"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all_results.json"]


def test_other_ranks_read_results_after_rank_zero_wrote_them(tiny_model, glue_dir, tmp_path, monkeypatch):
    """A process that is not rank 0 writes nothing and must wait for rank 0 before reading
    all_results.json; here "rank 0" writes it during the wait."""
    output_dir = tmp_path / "out"
    written = {"eval_accuracy": 0.25, "written_by": "rank 0"}

    def rank_zero_writes_meanwhile(self):
        output_dir.joinpath("all_results.json").write_text(json.dumps(written))

    monkeypatch.setattr(accelerate.Accelerator, "wait_for_everyone", rank_zero_writes_meanwhile)
    monkeypatch.setattr(run_glue.KSAMTrainer, "is_world_process_zero", lambda self: False)
    assert main(eval_only_args(tiny_model, glue_dir, output_dir)) == written


# ----------------------------------------------------------------------------- label order of the model
def test_mrpc_f1_is_scored_in_the_task_label_space(tiny_model, glue_dir, tmp_path):
    """A checkpoint whose label ids are the task's reversed (equivalent = 0), and which always predicts
    `equivalent`: F1 is that of MRPC's positive class, `equivalent`, whatever the model's ids."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        label2id={"equivalent": 0, "not_equivalent": 1},
                        id2label={0: "equivalent", 1: "not_equivalent"})
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([3.0, -3.0]))  # always model id 0
    model_dir = tmp_path / "reversed"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    results = main(["--model_name_or_path", str(model_dir), "--task_name", "mrpc", "--glue_dir", str(glue_dir),
                    "--output_dir", str(tmp_path / "out"), "--do_eval", "--max_eval_samples", "40",
                    "--max_seq_length", "32", "--report_to", "none", "--use_cpu", "--log_level", "warning"])
    labels = load_glue_tsv(glue_dir, "mrpc", ["validation"])["validation"]["label"][:40]
    positives = sum(labels)  # every prediction is `equivalent` (task id 1): precision p/n, recall 1
    assert 0 < positives < 40
    assert results["eval_accuracy"] == pytest.approx(positives / 40)
    assert results["eval_f1"] == pytest.approx(2 * positives / (positives + 40))


# ----------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("extra, match", [
    (["--max_seq_length", "0"], "--max_seq_length 0 is too short: give at least 4"),
    (["--max_seq_length", "-3"], "--max_seq_length -3 is too short: give at least 4"),
    (["--max_seq_length", "3"], "--max_seq_length 3 is too short: give at least 4"),  # [CLS] a [SEP] b [SEP]
    (["--max_seq_length", "256"], r"--max_seq_length 256 is longer than the model's maximum 128 "
                                  r"\(config.max_position_embeddings\): pass --max_seq_length 128 or less"),
])
def test_max_seq_length_must_fit_the_model(tiny_model, glue_dir, tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        main(run_args(tiny_model, glue_dir, tmp_path, "rte", "adamw", *extra))


def test_empty_training_split_is_refused(tiny_model, glue_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--max_train_samples 0: give at least 1"):
        main(run_args(tiny_model, glue_dir, tmp_path / "a", "rte", "adamw", "--max_train_samples", "0"))
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    for split in ("train", "dev", "test"):  # a train file of its header alone
        lines = (glue_dir / "RTE" / f"{split}.tsv").read_text().splitlines(keepends=True)
        (tmp_path / "glue" / "RTE" / f"{split}.tsv").write_text("".join(lines[:1 if split == "train" else 5]))
    with pytest.raises(ValueError, match=r"the training split is empty: .*RTE/train.tsv has no rows"):
        main(run_args(tiny_model, tmp_path / "glue", tmp_path / "b", "rte", "adamw"))


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "glue_scripts" / "run_glue.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["unknown_task", "bad_ksam_k", "missing_glue_file", "bad_stsb_row"])
def test_input_errors_exit_2_with_one_line(tiny_model, glue_dir, tmp_path, case):
    """As argparse's own errors: one line on stderr, exit status 2, no traceback."""
    stsb = tmp_path / "glue" / "STS-B"
    stsb.mkdir(parents=True)
    (stsb / "train.tsv").write_text("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                                    "sentence2\tscore\n0\tmain\tMSRvid\t2012\t1\tnone\tnone\tA man runs.\t"
                                    "A man is running.\tnan\n")
    extra, expected = {
        "unknown_task": (["--task_name", "glue"], "--task_name 'glue' is unknown"),
        "bad_ksam_k": (["--optimizer", "ksam", "--ksam_k", "-1"], "`ksam_k`=-1.0"),
        "missing_glue_file": (["--task_name", "qnli"], "QNLI/train.tsv"),
        "bad_stsb_row": (["--task_name", "stsb", "--glue_dir", str(tmp_path / "glue"), "--do_eval", "False",
                          "--do_predict", "False"], f"{stsb / 'train.tsv'}:2: score 'nan' is not a finite number"),
    }[case]
    args = run_args(tiny_model, glue_dir, tmp_path / "out", "rte", "adamw")
    done = run_script(*args, *extra, cwd=tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("run_glue.py: error: ") and expected in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize("extra, expected", [
    (["--sam_rho", "-1", "--optimizer", "sam"], "`sam_rho`=-1.0 must be a finite number >= 0"),
    (["--max_seq_length", "0"], "--max_seq_length 0 is too short"),
    (["--max_train_samples", "0"], "--max_train_samples 0: give at least 1"),
    (["--sam_mode", "ksam"], "--sam_mode ksam conflicts with --optimizer adamw"),
    (["--optimizer", "sam", "--sam_every_n_steps", "0"], "`sam_every_n_steps`=0 must be a whole number >= 1"),
    (["--optimizer", "momentum", "--sam_step_share", "1.5"], "`sam_step_share`=1.5 must be a number in (0, 1]"),
    (["--optimizer", "ksam", "--sam_start_fraction", "1"], "`sam_start_fraction`=1.0 must be in [0, 1)"),
    (["--optimizer", "sam", "--ksam_selection", "random_ascent"], "`ksam_selection`='random_ascent' needs `sam_mode`='ksam'"),
])
def test_cli_reports_input_errors_in_one_line(tiny_model, glue_dir, tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as stop:
        run_glue.cli(run_args(tiny_model, glue_dir, tmp_path / "out", "rte", "adamw", *extra))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_glue.py: error: ") and expected in lines[0]


def test_cli_reports_an_absent_split(tiny_model, tmp_path, capsys):
    (tmp_path / "train.csv").write_text("sentence,label\na,pos\nb,neg\n")
    (tmp_path / "dev.csv").write_text("sentence,label\na,pos\n")
    with pytest.raises(SystemExit) as stop:
        run_glue.cli(["--model_name_or_path", str(tiny_model), "--train_file", str(tmp_path / "train.csv"),
                      "--validation_file", str(tmp_path / "dev.csv"), "--output_dir", str(tmp_path / "out"),
                      "--do_predict", "--report_to", "none", "--use_cpu"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "run_glue.py: error: --do_predict without --task_name needs --test_file.\n"


def test_real_bugs_keep_their_traceback(tiny_model, glue_dir, tmp_path, monkeypatch):
    """Only input problems become one-line errors: a ValueError from training itself is a bug."""
    def broken_train(self, *args, **kwargs):
        raise ValueError("a bug inside training")

    monkeypatch.setattr(run_glue.KSAMTrainer, "train", broken_train)
    with pytest.raises(ValueError, match="a bug inside training"):
        run_glue.cli(run_args(tiny_model, glue_dir, tmp_path / "out", "rte", "adamw"))
    monkeypatch.setattr(run_glue, "load_raw_datasets", lambda *a, **k: {}["train"])
    with pytest.raises(KeyError):
        run_glue.cli(run_args(tiny_model, glue_dir, tmp_path / "out2", "rte", "adamw"))


# ----------------------------------------------------------------------------- the SAM-wins protocol's options
def protocol_args(model: Path, glue_dir: Path, output_dir: Path, optimizer: str, *extra: str) -> list[str]:
    """run_args on SST-2 without `--max_train_samples` (the options below cut the training set)."""
    args = run_args(model, glue_dir, output_dir, "sst2", optimizer, *extra)
    position = args.index("--max_train_samples")
    return args[:position] + args[position + 2:]


def test_sample_noise_and_held_out_block_end_to_end(tiny_model, glue_dir, tmp_path):
    output_dir = tmp_path / "out"
    results = main(protocol_args(tiny_model, glue_dir, output_dir, "sam", "--train_sample", "40", "--label_noise",
                                 "0.25", "--test_split_rows", "67000:67349", "--eval_strategy", "epoch",
                                 "--num_train_epochs", "2", "--save_weights", "False"))
    assert results["train_samples"] == 40 and results["label_noise_flipped"] == 10  # round(0.25 * 40)
    assert results["eval_samples"] == 24  # the dev set is cut as asked, nothing else
    assert results["heldout_rows"] == "67000:67349"
    assert results["heldout_samples"] + results["heldout_dropped_contained"] == 349
    assert 0 < results["heldout_dropped_contained"] < 349 and 0 <= results["heldout_accuracy"] <= 1
    epochs = [log for log in read_json(output_dir / "trainer_state.json")["log_history"] if "eval_accuracy" in log]
    assert [log["epoch"] for log in epochs] == [1.0, 2.0]  # the dev score after every epoch
    assert not (output_dir / "model.safetensors").exists() and (output_dir / "trainer_state.json").is_file()


def test_a_ranking_rule_logs_the_share_of_flipped_labels_among_the_examples_it_keeps(tiny_model, glue_dir, tmp_path):
    """40 examples, 10 flipped, batches of 8, one epoch, a log per step: the batch means of the marked
    column average to 10 / 40 exactly (every example seen once); the kept rows' share is logged beside."""
    output_dir = tmp_path / "out"
    results = main(protocol_args(tiny_model, glue_dir, output_dir, "ksam", "--train_sample", "40", "--label_noise",
                                 "0.25", "--logging_steps", "1", "--ksam_k", "0.25", "--save_weights", "False",
                                 "--do_predict", "False"))
    logs = [log for log in read_json(output_dir / "trainer_state.json")["log_history"] if "loss" in log]
    assert len(logs) == 5 and sum(log["sam_batch_label_flipped"] for log in logs) / 5 == pytest.approx(0.25)
    kept = [log["sam_kept_label_flipped"] for log in logs]
    assert all(share in (0.0, 0.5, 1.0) for share in kept)  # 2 kept of 8
    assert results["train_mean_kept_label_flipped"] == pytest.approx(sum(kept) / 5, abs=1e-4)


def test_the_stopping_splits_floor_is_its_noisy_majority_and_a_best_model_at_it_is_flagged(glue_dir, caplog):
    """MRPC scores accuracy and F1: predicting its majority class (paraphrase, 1) on a share p of 1s
    scores accuracy p and F1 2p / (1 + p) (precision p, recall 1), counted here on the split's noised labels."""
    _, data_args, training_args = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--task_name", "mrpc",
                                              "--seed", "2", "--train_sample", "300", "--label_noise", "0.3",
                                              "--early_stopping_split", "0.2"])
    raw = load_glue_tsv(glue_dir, "mrpc", ["train"])
    record = run_glue.shape_training_split(raw, data_args, training_args, run_glue.glue_task("mrpc"), [0, 1])
    labels = raw["stop"]["label"]
    p = labels.count(1) / len(labels)
    assert p > 0.5 and record["early_stopping_flipped"] == 18  # 30 % of the split's 60 rows
    assert record["early_stopping_input_blind_score"] == pytest.approx((p + 2 * p / (1 + p)) / 2)
    clean = load_glue_tsv(glue_dir, "mrpc", ["train"])["train"].select(raw["stop"]["idx"])["label"]
    assert clean.count(1) != labels.count(1)  # so the floor above is the noised split's, not the file's

    best = run_glue.BestWeights("eval_stop_combined_score", higher=True)
    best.score, best.epoch = record["early_stopping_input_blind_score"], 0.48
    with caplog.at_level("WARNING"):
        run_glue.warn_if_stopped_at_the_floor(best, record["early_stopping_input_blind_score"])
    assert "no better than predicting the split's majority class" in caplog.text and "epoch 0.48" in caplog.text
    caplog.clear()
    best.score += 0.01
    with caplog.at_level("WARNING"):
        run_glue.warn_if_stopped_at_the_floor(best, record["early_stopping_input_blind_score"])
        run_glue.warn_if_stopped_at_the_floor(best, None)  # a dataset that is not GLUE: no floor, no line
    assert caplog.text == ""


def test_every_method_of_a_seed_trains_on_the_same_noisy_sample_and_the_dev_set_is_untouched(glue_dir):
    shaped = {}
    for optimizer in ("adamw", "sam", "ksam"):
        _, data_args, training_args = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--task_name",
                                                  "sst2", "--optimizer", optimizer, "--seed", "5", "--train_sample",
                                                  "300", "--label_noise", "0.3", "--test_split_rows", "67000:67349"])
        raw = load_glue_tsv(glue_dir, "sst2", ["train", "validation"])
        dev_before = raw["validation"]["label"]
        record = run_glue.shape_training_split(raw, data_args, training_args, run_glue.glue_task("sst2"), [0, 1])
        assert raw["validation"]["label"] == dev_before and record["label_noise_flipped"] == 90
        held_out_labels = raw["heldout"]["label"]  # SST-2 scores accuracy: the majority class's share
        majority = max(held_out_labels.count(0), held_out_labels.count(1)) / len(held_out_labels)
        assert record["heldout_input_blind_score"] == pytest.approx(majority)
        shaped[optimizer] = (raw["train"]["idx"], raw["train"]["label"], raw["heldout"]["idx"],
                             raw["train"][run_glue.FLIPPED_COLUMN])
    assert shaped["adamw"] == shaped["sam"] == shaped["ksam"]
    indices, labels, heldout, marked = shaped["adamw"]
    truth = load_glue_tsv(glue_dir, "sst2", ["train"])["train"].select(indices)["label"]
    assert sum(a != b for a, b in zip(labels, truth)) == 90  # flipped against the file's own labels
    assert marked == [int(a != b) for a, b in zip(labels, truth)]  # the column the trainer watches
    assert all(i < 67000 for i in indices) and all(67000 <= i < 67349 for i in heldout)


@pytest.mark.parametrize("extra, expected", [
    (["--label_noise", "1.0"], "--label_noise 1.0: give a share in [0, 1)"),
    (["--label_noise", "-0.2"], "--label_noise -0.2: give a share in [0, 1)"),
    (["--train_sample", "0"], "--train_sample 0: give at least 1"),
    (["--train_sample", "10", "--max_train_samples", "10"], "--train_sample and --max_train_samples both"),
    (["--test_split_rows", "9:3"], "--test_split_rows '9:3' is not A:B"),
])
def test_bad_protocol_options_are_refused_in_one_line(tiny_model, glue_dir, tmp_path, capsys, extra, expected):
    with pytest.raises(SystemExit) as stop:
        run_glue.cli(protocol_args(tiny_model, glue_dir, tmp_path / "out", "adamw", *extra))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_glue.py: error: ") and expected in lines[0], lines


def test_label_noise_on_a_regression_task_is_refused(tiny_model, glue_dir, tmp_path, capsys):
    args = run_args(tiny_model, glue_dir, tmp_path / "out", "stsb", "adamw", "--label_noise", "0.1")
    with pytest.raises(SystemExit):
        run_glue.cli(args)
    (line,) = capsys.readouterr().err.splitlines()
    assert "--label_noise 0.1: this task is a regression" in line and "drop --label_noise" in line


def test_the_noise_is_a_share_of_the_first_n_when_max_train_samples_cuts(glue_dir):
    _, data_args, training_args = parse_args(["--model_name_or_path", "m", "--output_dir", "o", "--task_name",
                                              "rte", "--max_train_samples", "50", "--label_noise", "0.3"])
    raw = load_glue_tsv(glue_dir, "rte", ["train"])
    truth = raw["train"].select(range(50))["label"]
    record = run_glue.shape_training_split(raw, data_args, training_args, run_glue.glue_task("rte"), [0, 1])
    assert record["label_noise_flipped"] == 15 and len(raw["train"]) == 50
    assert sum(a != b for a, b in zip(raw["train"]["label"], truth)) == 15


def test_the_readmes_single_run_command_parses_to_the_sam_wins_settings():
    """The README's one-run command is the grid's run of the SAM-wins cell: it must keep parsing."""
    import shlex

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    command = readme.split("One run alone", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    _, data_args, training_args = parse_args(shlex.split(command)[2:])
    assert (data_args.task_name, data_args.train_sample, data_args.label_noise, data_args.test_split_rows) == \
        ("sst2", 1000, 0.3, "62349:67349")
    assert (training_args.sam_mode, training_args.sam_rho, training_args.per_device_train_batch_size,
            training_args.num_train_epochs) == ("sam", 0.1, 32, 10.0)


def test_the_step_timer_reports_a_schedules_mean_beside_the_median():
    """SAM on every 2nd step alternates a 2-pass and a 1-pass step: the median is one of them, the mean the cost."""
    timer = run_glue.StepTimer()
    timer.durations = [1.0, 2.0, 1.0, 2.0, 1.0]
    assert (timer.median, timer.mean) == (1.0, 1.4)
