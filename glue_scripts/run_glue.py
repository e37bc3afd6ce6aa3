#!/usr/bin/env python
"""Fine-tune a sequence classifier on a GLUE task (or CSV/JSON files) with `KSAMTrainer`.

Modelled on the Transformers example `examples/pytorch/text-classification/run_glue.py`: the
same arguments, flow and output files (`train_results.json`, `eval_results.json`,
`all_results.json`, `trainer_state.json`, `predict_results_<task>.txt`), so that numbers from here
compare with the example's. On top of it:

* `--optimizer adamw|sgd|sam|ksam|momentum|random_direction` picks the method (see `OPTIMIZERS`), with the SAM knobs of
  `KSAMConfig` (`--sam_rho`, `--ksam_k`, ...);
* `--glue_dir` (default: `$GLUE_DIR`) reads the original GLUE TSV release offline instead of the Hub;
* metrics are computed locally (no `evaluate` download), in the task's label ids whatever order the
  checkpoint keeps its labels in; the train metrics gain the median optimizer-step time
  `train_median_step_time` and `train_steps`; `all_results.json` records the method, its settings
  and whether the run resumed a checkpoint (`resumed_from_checkpoint`, `resumed_finished_run`);
* the output directory is checked before anything is loaded (`run_safety.py`): a run resumes only a
  complete checkpoint written with its own settings (`run_settings.json` in each checkpoint), and
  refuses a folder holding another run's results unless `--overwrite_output_dir` (which deletes them);
* an input problem (argument, data file, output directory) ends with one line
  `run_glue.py: error: ...` and exit status 2, as argparse's own errors do.

    python glue_scripts/run_glue.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \
        --task_name rte --glue_dir ../shared/glue --do_train --do_eval --do_predict \
        --output_dir runs/rte-ksam --optimizer ksam --report_to none

A single `.json` argument is read as a file of all the arguments.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import datasets
import numpy as np
import torch
import transformers
from datasets import DatasetDict, load_dataset
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, EvalPrediction, HfArgumentParser, PretrainedConfig,
                          TrainerCallback, default_data_collator, set_seed)
from transformers.trainer_utils import IntervalStrategy
from transformers.training_args import OptimizerNames

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from glue_scripts.glue_data import GLUE_TASKS, glue_task, load_glue_hub, load_glue_tsv  # noqa: E402
from glue_scripts.glue_metrics import (MAIN_METRIC, input_blind_baseline, make_compute_metrics,  # noqa: E402
                                       predictions_from_logits)
from glue_scripts.training_split import (flip_labels, parse_row_range, seeded_sample,  # noqa: E402
                                         split_for_stopping, split_rows, without_contained)
from glue_scripts.run_safety import (InputError, RunSettingsRecorder, input_errors, plain,  # noqa: E402
                                     prepare_output_dir, write_json_atomic)
from ksam_hf import KSAMConfig, KSAMTrainer  # noqa: E402
from ksam_hf.compression import compressed_scores  # noqa: E402
from ksam_hf.cpu_memory import keep_freed_memory  # noqa: E402
from ksam_hf.config import validate_sam_fields  # noqa: E402
from ksam_hf.rules import PERTURBING_MODES  # noqa: E402

logger = logging.getLogger(__name__)

PLAIN_OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd"}
"""`--optimizer` values that train with the stock Trainer step, and the `--optim` each means."""
OPTIMIZERS: dict[str, str] = {**dict.fromkeys(PLAIN_OPTIMIZERS, "none"), **{mode: mode for mode in PERTURBING_MODES}}
"""`--optimizer` -> `sam_mode`, from the library's registry of step modes. adamw and sgd are the plain
Trainer step with that optimizer; the others wrap the base optimizer of `--optim` (AdamW unless given)."""
DEFAULT_OPTIM = {**PLAIN_OPTIMIZERS, **{mode: "adamw_torch" for mode in PERTURBING_MODES}}


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to fine-tune from."""

    model_name_or_path: str = field(
        metadata={"help": "Path to a pretrained model or its identifier on huggingface.co/models."})
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Pretrained config name or path, if not the same as model_name_or_path."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Pretrained tokenizer name or path, if not the same as model_name_or_path."})
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where to store models and datasets downloaded from the Hub."})
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use a fast (tokenizers-backed) tokenizer."})
    model_revision: str = field(
        default="main", metadata={"help": "Model version to use (branch name, tag name or commit id)."})
    token: Optional[str] = field(
        default=None, metadata={"help": "Hub token for private models (default: the one of `hf auth login`)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow models whose code lives on the Hub (run only code you trust)."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Load a checkpoint whose head has a different number of labels."})


@dataclass
class DataTrainingArguments:
    """Which data, how to preprocess it, which optimizer, and what to do with an earlier run's outputs."""

    task_name: Optional[str] = field(
        default=None, metadata={"help": "GLUE task: " + ", ".join(GLUE_TASKS) + "."})
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "A dataset on the Hub (instead of a GLUE task)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Its configuration name."})
    max_seq_length: int = field(
        default=128, metadata={"help": "Longest tokenized input; longer ones are truncated."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the cached preprocessed datasets."})
    pad_to_max_length: bool = field(
        default=True,
        metadata={"help": "Pad every input to max_seq_length; False pads each batch to its longest input."})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N training examples (debugging, quick runs)."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N evaluation examples."})
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N test examples."})
    train_file: Optional[str] = field(default=None, metadata={"help": "CSV or JSON file of training data."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "CSV or JSON file of validation data."})
    test_file: Optional[str] = field(default=None, metadata={"help": "CSV or JSON file of test data."})
    glue_dir: Optional[str] = field(
        default_factory=lambda: os.environ.get("GLUE_DIR"),
        metadata={"help": "Directory of the original GLUE TSV release (CoLA/, SST-2/, ...) to read "
                          "offline instead of the Hub (default: $GLUE_DIR)."})
    optimizer: str = field(
        default="adamw",
        metadata={"help": f"{' or '.join(PLAIN_OPTIMIZERS)} (plain Trainer step); {', '.join(PERTURBING_MODES)} "
                          "(KSAMTrainer step around the base optimizer of --optim, AdamW by default)."})
    train_sample: Optional[int] = field(
        default=None,
        metadata={"help": "Train on N training examples drawn at random (seeded by --train_sample_seed), the "
                          "same N for every method; --max_train_samples takes the first N instead."})
    train_sample_seed: Optional[int] = field(
        default=None, metadata={"help": "Seed of --train_sample's draw (default: --seed)."})
    label_noise: float = field(
        default=0.0,
        metadata={"help": "Flip this share of the training labels, in [0, 1), each to another class drawn "
                          "uniformly (seeded by --label_noise_seed); the training split only, after sampling."})
    label_noise_seed: Optional[int] = field(
        default=None, metadata={"help": "Seed of --label_noise's flips (default: --seed)."})
    test_split_rows: Optional[str] = field(
        default=None,
        metadata={"help": "A:B: rows A to B-1 of the training file become a held-out test set that no run "
                          "trains on (rows whose text a trainable row contains are dropped); evaluated after "
                          "training with --do_eval, as `heldout_*` metrics."})
    early_stopping_split: Optional[float] = field(
        default=None,
        metadata={"help": "Hold out this share (below 1) or count of the training rows, drawn at random (seeded by "
                          "--seed), their labels noised at --label_noise's rate as the training rows' are; score it "
                          "every --early_stopping_every epochs and keep the best model by it: the dev and held-out "
                          "scores are the best model's, `last_*` the last one's."})
    early_stopping_every: float = field(default=0.5, metadata={"help": "Epochs between two scorings of that split."})
    eval_compressed: bool = field(
        default=False,
        metadata={"help": "Also score the held-out block (else the dev set) after dynamic int8 quantization, global "
                          "magnitude pruning of the encoder's Linear weights (30, 50, 70 percent) and Gaussian noise of "
                          "relative size 0.01/0.02/0.05 (mean of 5 seeded draws), each also as a drop."})
    lora_r: Optional[int] = field(
        default=None,
        metadata={"help": "Train LoRA adapters of this rank (PEFT, `ksam-hf[trl]`) instead of the whole model; the "
                          "classification head is trained whole. Needed by --optimizer bi_lora / flat_lora."})
    lora_alpha: Optional[float] = field(default=None, metadata={"help": "LoRA's alpha (default: 2 x --lora_r)."})
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"], metadata={"help": "Its modules."})
    save_weights: bool = field(
        default=True,
        metadata={"help": "Save the trained model in --output_dir (False: only logs, metrics and the trainer "
                          "state; what a grid of hundreds of runs wants)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in a non-empty --output_dir: delete the checkpoints, results and model "
                          "files an earlier run wrote there (other files are kept). Without it, training resumes "
                          "the newest complete checkpoint there if it was written with the same settings, and "
                          "any other non-empty --output_dir is refused."})

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"--optimizer {self.optimizer!r} is unknown: use one of {', '.join(OPTIMIZERS)}.")
        if self.task_name is not None:
            self.task_name = self.task_name.lower()
            if self.task_name not in GLUE_TASKS:
                raise ValueError(f"--task_name {self.task_name!r} is unknown: use one of "
                                 f"{', '.join(GLUE_TASKS)}, or give --train_file/--validation_file.")
        elif self.dataset_name is None and (self.train_file is None or self.validation_file is None):
            raise ValueError("No data: give --task_name (a GLUE task), --dataset_name (a Hub dataset), "
                             "or both --train_file and --validation_file (CSV or JSON).")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is not None and path.split(".")[-1] not in ("csv", "json"):
                raise ValueError(f"--{name} {path!r} must be a .csv or .json file.")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "train_sample"):
            count = getattr(self, name)
            if count is not None and count < 1:
                raise ValueError(f"--{name} {count}: give at least 1, or leave it out to use the whole split.")
        if self.train_sample is not None and self.max_train_samples is not None:
            raise ValueError("--train_sample and --max_train_samples both cut the training set: give one "
                             "(--train_sample draws at random, --max_train_samples takes the first N).")
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f"--label_noise {self.label_noise}: give a share in [0, 1), e.g. 0.3 for 30 % "
                             "of the training labels.")
        if self.test_split_rows is not None:
            parse_row_range(self.test_split_rows)
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError(f"--lora_r {self.lora_r}: give a rank >= 1 (e.g. 8), or leave it out to train the whole model.")
        if self.early_stopping_split is not None and not self.early_stopping_split > 0:
            raise ValueError(f"--early_stopping_split {self.early_stopping_split}: give a share in (0, 1) or a count "
                             ">= 1 of the training rows (e.g. 0.2).")
        if not self.early_stopping_every > 0:
            raise ValueError(f"--early_stopping_every {self.early_stopping_every}: give a positive number of epochs "
                             "(e.g. 0.5).")


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (from `on_step_begin` to `on_step_end`): forward, backward,
    the SAM passes, clipping and the optimizer update, without data loading, logging or evaluation."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._started: Optional[float] = None

    @staticmethod
    def _synchronize(args: Any) -> None:
        if args.device.type != "cpu":  # queued kernels belong to the step they were launched in
            torch.accelerator.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._synchronize(args)
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._started is not None:
            self._synchronize(args)
            self.durations.append(time.perf_counter() - self._started)
            self._started = None

    @property
    def median(self) -> float:
        return statistics.median(self.durations) if self.durations else math.nan

    @property
    def mean(self) -> float:
        """The mean: a SAM schedule's cost (its median is that of its plain or its perturbed steps)."""
        return statistics.fmean(self.durations) if self.durations else math.nan


class BestWeights(TrainerCallback):
    """A CPU copy of the weights at the best score on the early-stopping split (`key`; `higher` is
    better, or lower), with its step and epoch: early stopping without a checkpoint on disk."""

    def __init__(self, key: str, higher: bool) -> None:
        self.key, self.higher = key, higher
        self.score: Optional[float] = None
        self.step, self.epoch = 0, 0.0
        self.weights: Optional[dict[str, torch.Tensor]] = None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        score = (metrics or {}).get(self.key)
        if score is None or model is None:
            return
        if self.score is None or (score > self.score if self.higher else score < self.score):
            self.score, self.step, self.epoch = score, state.global_step, state.epoch
            self.weights = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}

    def results(self) -> dict[str, Any]:
        return {"early_stopping_metric": self.key, "early_stopping_best_score": self.score,
                "early_stopping_best_step": self.step, "early_stopping_best_epoch": self.epoch}


def warn_if_stopped_at_the_floor(best: BestWeights, floor: Optional[float]) -> None:
    """One line when the early-stopped model scores no better on its split than predicting the split's
    majority class: on noisy labels the split's best can come before anything was learnt."""
    if floor is not None and best.score is not None and best.score <= floor:
        logger.warning(f"Early stopping kept the model of epoch {best.epoch:.2f}, whose {best.key} "
                       f"({best.score:.4f}) is no better than predicting the split's majority class ({floor:.4f}): "
                       "it has learnt nothing the split can see. Use a larger or cleaner --early_stopping_split, "
                       "or the last model (last_*).")


def compression_results(trainer: KSAMTrainer, dataset: datasets.Dataset, split: str, seed: int,
                        base: dict[str, float]) -> dict[str, float]:
    """The split's metrics after each compression (`ksam_hf.compression`), `{split}_{variant}_{metric}`,
    and the drop from the model's own score (`base`), `{split}_{variant}_drop_{metric}`."""
    loader = trainer.get_eval_dataloader(dataset)

    def metrics_of(evaluated: torch.nn.Module) -> dict[str, float]:
        device = next(evaluated.parameters(), torch.empty(0)).device
        logits, labels = [], []
        evaluated.eval()
        with torch.no_grad():
            for batch in loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                labels.append(batch.pop("labels").cpu())
                logits.append(evaluated(**batch).logits.float().cpu())
        return trainer.compute_metrics(EvalPrediction(torch.cat(logits).numpy(), torch.cat(labels).numpy()))

    results = {}
    for variant, metrics in compressed_scores(trainer.model, metrics_of, seed).items():
        for name, value in metrics.items():
            results[f"{split}_{variant}_{name}"] = value
            if f"{split}_{name}" in base:
                results[f"{split}_{variant}_drop_{name}"] = base[f"{split}_{name}"] - value
    return results


def predicted_classes(logits: np.ndarray | tuple) -> int:
    """How many classes a classifier's `logits` predict. 1 is a constant predictor: it learnt nothing
    the input says, whatever its loss (on an imbalanced task a loss just under the class prior's entropy
    can still predict one class for every row, a score such as CoLA's MCC then exactly 0)."""
    return int(np.unique(predictions_from_logits(logits, is_regression=False)).size)


def given_options(argv: Sequence[str]) -> set[str]:
    """Option names on a command line (`--sam-mode x` and `--sam_mode=x` both give `sam_mode`)."""
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}


def apply_optimizer(optimizer: str, training_args: KSAMConfig, given: set[str]) -> None:
    """Set `sam_mode` and `optim` from `--optimizer`; refuse an explicit `--sam_mode`/`--optim` that disagrees."""
    sam_mode = OPTIMIZERS[optimizer]
    if "sam_mode" in given and training_args.sam_mode != sam_mode:
        suggestion = "adamw or sgd" if training_args.sam_mode == "none" else training_args.sam_mode
        raise ValueError(
            f"--sam_mode {training_args.sam_mode} conflicts with --optimizer {optimizer} (which trains with "
            f"sam_mode={sam_mode}). run_glue.py chooses the method with --optimizer: drop --sam_mode, "
            f"or pass --optimizer {suggestion}.")
    optim = OptimizerNames(training_args.optim).value
    if "optim" in given:
        if (optimizer == "adamw" and not optim.startswith("adamw")) or (optimizer == "sgd" and optim != "sgd"):
            raise ValueError(f"--optim {optim} conflicts with --optimizer {optimizer}: drop --optim, or use "
                             "--optimizer sam/ksam to wrap another base optimizer.")
    else:
        optim = DEFAULT_OPTIM[optimizer]
    training_args.sam_mode = sam_mode
    training_args.optim = OptimizerNames(optim)
    validate_sam_fields(training_args)  # again: the fields were checked against the default sam_mode


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[ModelArguments, DataTrainingArguments, KSAMConfig]:
    """The three argument dataclasses, from the command line or from a single `.json` file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, KSAMConfig))
    if len(argv) == 1 and argv[0].endswith(".json"):
        path = Path(argv[0]).resolve()
        given = set(json.loads(path.read_text()))
        model_args, data_args, training_args = parser.parse_json_file(json_file=path)
    else:
        given = given_options(argv)
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    apply_optimizer(data_args.optimizer, training_args, given)
    return model_args, data_args, training_args


def load_raw_datasets(model_args: ModelArguments, data_args: DataTrainingArguments,
                      training_args: KSAMConfig) -> DatasetDict:
    """The task's splits: GLUE offline (--glue_dir), GLUE or another dataset from the Hub, or local files."""
    if data_args.task_name is not None:
        task = glue_task(data_args.task_name)
        if data_args.glue_dir:
            needed = (["train"] if training_args.do_train or data_args.test_split_rows else []) \
                + (list(task.eval_splits) if training_args.do_eval else []) \
                + (list(task.test_splits) if training_args.do_predict else [])
            return load_glue_tsv(data_args.glue_dir, task.name, splits=needed)
        return load_glue_hub(task.name, cache_dir=model_args.cache_dir, token=model_args.token)
    if data_args.dataset_name is not None:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name,
                            cache_dir=model_args.cache_dir, token=model_args.token)
    data_files = {"train": data_args.train_file, "validation": data_args.validation_file}
    if training_args.do_predict:
        if data_args.test_file is None:
            raise ValueError("--do_predict without --task_name needs --test_file.")
        data_files["test"] = data_args.test_file
    extensions = {path.split(".")[-1] for path in data_files.values()}
    if len(extensions) != 1:
        raise ValueError(f"--train_file, --validation_file and --test_file must all be CSV or all JSON, "
                         f"got {sorted(extensions)}.")
    return load_dataset(extensions.pop(), data_files=data_files, cache_dir=model_args.cache_dir,
                        token=model_args.token)


def first(dataset: datasets.Dataset, count: Optional[int]) -> datasets.Dataset:
    """The first `count` rows (all when `count` is None)."""
    return dataset if count is None else dataset.select(range(min(count, len(dataset))))


def write_predictions(path: Path, dataset: datasets.Dataset, predictions: np.ndarray,
                      id2label: Optional[dict[int, str]]) -> None:
    """A GLUE submission file: `index<TAB>prediction`, with label names (`id2label` of the model), or
    scores to 3 decimals when `id2label` is None (regression)."""
    indices = dataset["idx"] if "idx" in dataset.column_names else range(len(predictions))
    with open(path, "w") as writer:
        writer.write("index\tprediction\n")
        for index, item in zip(indices, predictions):
            writer.write(f"{index}\t{item:3.3f}\n" if id2label is None else f"{index}\t{id2label[int(item)]}\n")


def record_settings(output_dir: str, settings: dict[str, Any]) -> None:
    """Add the method's settings to `all_results.json`, next to the metrics `save_metrics` put there.
    Renamed into place: other processes may read it as soon as they are released."""
    path = Path(output_dir) / "all_results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results)


TRAINING_SETTINGS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                     "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
                     "per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "seed", "data_seed",
                     "label_smoothing_factor", "train_sampling_strategy")
"""The training arguments that shape the run's trajectory, recorded with each checkpoint (with the
task, model, data, method and `KSAMConfig`'s SAM fields): a run resumes only its own checkpoints."""


def run_settings(model_args: ModelArguments, data_args: DataTrainingArguments,
                 training_args: KSAMConfig) -> dict[str, Any]:
    """What makes a training run this run: a checkpoint written with other settings is another run's."""

    def local_or_id(value: Optional[str]) -> Optional[str]:
        return os.path.abspath(value) if value is not None and os.path.exists(value) else value

    settings: dict[str, Any] = {
        "task_name": data_args.task_name, "dataset_name": data_args.dataset_name,
        "dataset_config_name": data_args.dataset_config_name, "train_file": local_or_id(data_args.train_file),
        "model_name_or_path": local_or_id(model_args.model_name_or_path),
        "config_name": local_or_id(model_args.config_name), "tokenizer_name": local_or_id(model_args.tokenizer_name),
        "max_train_samples": data_args.max_train_samples, "max_seq_length": data_args.max_seq_length,
        "pad_to_max_length": data_args.pad_to_max_length,
        "optimizer": data_args.optimizer, "optim": OptimizerNames(training_args.optim).value,
        **{name: getattr(training_args, name) for name in KSAMConfig.sam_field_names()},
    }
    settings.update({name: getattr(training_args, name) for name in TRAINING_SETTINGS if hasattr(training_args, name)})
    # The training split's shaping, recorded when used (so that checkpoints written before it existed
    # still resume).
    if data_args.train_sample is not None:
        settings["train_sample"] = data_args.train_sample
        settings["train_sample_seed"] = training_seed(data_args.train_sample_seed, training_args)
    if data_args.label_noise:
        settings["label_noise"] = data_args.label_noise
        settings["label_noise_seed"] = training_seed(data_args.label_noise_seed, training_args)
    if data_args.test_split_rows is not None:
        settings["test_split_rows"] = data_args.test_split_rows
    if data_args.lora_r is not None:
        settings.update(lora_r=data_args.lora_r, lora_alpha=data_args.lora_alpha,
                        lora_target_modules=data_args.lora_target_modules)
    if data_args.early_stopping_split is not None:
        settings.update(early_stopping_split=data_args.early_stopping_split,
                        early_stopping_every=data_args.early_stopping_every)
    return {name: plain(value) for name, value in settings.items()}


FLIPPED_COLUMN = "label_flipped"
"""The training column that marks (1) the examples whose label `--label_noise` flipped. The trainer
watches it: a selection rule's logs give the share of flipped examples among those it keeps
(`sam_kept_label_flipped`; the run's mean over its logs is `train_mean_kept_label_flipped`)."""


def training_seed(seed: Optional[int], training_args: KSAMConfig) -> int:
    """A data seed, or the run's `--seed` when none is given."""
    return training_args.seed if seed is None else seed


def shape_training_split(raw: DatasetDict, data_args: DataTrainingArguments, training_args: KSAMConfig,
                         task: Any, classes: Optional[list]) -> dict[str, Any]:
    """Cut the held-out block out of `raw["train"]` (into `raw["heldout"]`), draw the sample (or take
    the first `--max_train_samples`), flip labels, then drop the held-out rows a training row
    contains, in place (`classes`: the label values, None for a regression); returns what was done,
    for `all_results.json`."""
    record: dict[str, Any] = {}
    if "train" not in raw:  # evaluation or prediction only
        return record
    if data_args.test_split_rows is not None:
        raw["train"], raw["heldout"] = split_rows(raw["train"], parse_row_range(data_args.test_split_rows))
    if data_args.train_sample is not None:
        raw["train"] = seeded_sample(raw["train"], data_args.train_sample,
                                     training_seed(data_args.train_sample_seed, training_args))
    raw["train"] = first(raw["train"], data_args.max_train_samples)  # the noise is a share of what is trained on
    if data_args.early_stopping_split is not None:
        raw["train"], raw["stop"] = split_for_stopping(raw["train"], data_args.early_stopping_split, training_args.seed)
        record["early_stopping_rows"] = len(raw["stop"])
    if data_args.label_noise:
        if classes is None:
            raise InputError(f"--label_noise {data_args.label_noise}: this task is a regression (scores, not "
                             "classes); label noise needs a classification task: drop --label_noise.")
        seed = training_seed(data_args.label_noise_seed, training_args)
        raw["train"], flipped = flip_labels(raw["train"], data_args.label_noise, seed, classes)
        record["label_noise_flipped"] = len(flipped)
        if "stop" in raw:  # the user's own validation rows are as noisy as the rows they train on
            raw["stop"], stop_flipped = flip_labels(raw["stop"], data_args.label_noise, seed + 1, classes)
            record["early_stopping_flipped"] = len(stop_flipped)
        marked = set(flipped)
        raw["train"] = raw["train"].add_column(FLIPPED_COLUMN, [int(i in marked) for i in range(len(raw["train"]))])
    if "stop" in raw and task is not None and not task.is_regression:
        # what the split rewards a model that learnt nothing for: its (noised) majority class's score
        record["early_stopping_input_blind_score"] = input_blind_baseline(task.name, raw["stop"]["label"])[1]
    if "heldout" in raw:  # against the rows this run trains on
        training = raw["train"]
        text_columns = task.text_columns if task is not None else tuple(
            name for name in raw["train"].column_names if name not in ("label", "idx"))
        raw["heldout"], dropped = without_contained(raw["heldout"], training, text_columns)
        record.update(heldout_rows=data_args.test_split_rows, heldout_dropped_contained=dropped)
        if task is not None and not task.is_regression and len(raw["heldout"]):
            # the floor a model must clear to have learnt anything: the majority class's score on these rows
            record["heldout_input_blind_score"] = input_blind_baseline(task.name, raw["heldout"]["label"])[1]
        logger.info(f"Held-out test: rows {data_args.test_split_rows} of the training file, {len(raw['heldout'])} "
                    f"kept, {dropped} dropped (their text sits inside a training row).")
    return record


def check_max_seq_length(max_seq_length: int, tokenizer: Any, config: PretrainedConfig, pair: bool) -> None:
    """`--max_seq_length` must leave room for a token of text and fit the position embeddings: a longer
    input fails with an index error inside the model, mid-training."""
    shortest = tokenizer.num_special_tokens_to_add(pair=pair) + 1
    if max_seq_length < shortest:
        raise InputError(f"--max_seq_length {max_seq_length} is too short: give at least {shortest} (the tokenizer "
                         f"adds {shortest - 1} special tokens to each input, which needs a token of text).")
    limits = [(tokenizer.model_max_length, "the tokenizer's model_max_length")]
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, "config.max_position_embeddings"))
    limit, source = min(limits, key=lambda item: item[0])
    if max_seq_length > limit:
        raise InputError(f"--max_seq_length {max_seq_length} is longer than the model's maximum {limit} ({source}): "
                         f"pass --max_seq_length {limit} or less.")


def split_source(split: str, data_args: DataTrainingArguments, task: Any) -> str:
    """Where a split was read from, for an error message."""
    if task is not None and data_args.glue_dir:
        return str(Path(data_args.glue_dir) / task.directory / task.files[split])
    if task is not None or data_args.dataset_name is not None:
        return f"{data_args.dataset_name or 'nyu-mll/glue'} ({split})"
    return str({"train": data_args.train_file, "validation": data_args.validation_file}.get(split, data_args.test_file))


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train, evaluate and predict as the arguments say; returns the contents of `all_results.json`.

    Input problems raise `InputError` (a `ValueError`); `cli()` prints them as one line."""
    with input_errors():
        model_args, data_args, training_args = parse_args(argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger(prepare_output_dir.__module__).setLevel(log_level)  # run_safety's messages
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(f"Process rank: {training_args.local_process_index}, device: {training_args.device}, "
                   f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value == 'distributed'}")
    logger.info(f"Training/evaluation parameters {training_args}")

    # The output directory, before anything is loaded: writable, and either empty, or holding a checkpoint
    # of this very run to resume (an interrupted run), or explicitly to be overwritten. The process that
    # saves decides (and deletes) first; the others then find the same checkpoint, or an emptied folder.
    settings = run_settings(model_args, data_args, training_args)
    with training_args.main_process_first(local=training_args.save_on_each_node, desc="output directory checks"):
        resume = prepare_output_dir(
            training_args.output_dir, settings, do_train=training_args.do_train,
            overwrite=data_args.overwrite_output_dir, resume_from_checkpoint=training_args.resume_from_checkpoint,
            loaded_paths={"--model_name_or_path": model_args.model_name_or_path,
                          "--config_name": model_args.config_name, "--tokenizer_name": model_args.tokenizer_name},
            may_delete=training_args.should_save)

    set_seed(training_args.seed)

    with input_errors():
        raw_datasets = load_raw_datasets(model_args, data_args, training_args)

    task = glue_task(data_args.task_name) if data_args.task_name is not None else None
    # Labels
    label_list: Optional[list] = None
    if task is not None:
        is_regression = task.is_regression
        label_list = None if is_regression else list(task.label_names)
    else:
        reference = raw_datasets["train"]
        is_regression = reference.features["label"].dtype in ("float32", "float64")
        if not is_regression:
            label_list = sorted(reference.unique("label"))
    num_labels = 1 if is_regression else len(label_list)

    # The training split shaped for the protocol: a held-out block, a seeded sample, label noise.
    with input_errors():
        shaping = shape_training_split(raw_datasets, data_args, training_args, task,
                                       None if is_regression else (list(range(num_labels)) if task else label_list))

    # The splits to use, cut to the requested sizes (tokenized once the model's labels are known).
    eval_names = list(task.eval_splits) if task is not None else ["validation"]
    test_names = list(task.test_splits) if task is not None else ["test"]
    wanted = {}
    for asked, option, split_kind, names, count in (
            (training_args.do_train, "--do_train", "training", ["train"], data_args.max_train_samples),
            (training_args.do_eval, "--do_eval", "validation", eval_names, data_args.max_eval_samples),
            (training_args.do_predict, "--do_predict", "test", test_names, data_args.max_predict_samples)):
        if not asked:
            continue
        if names[0] not in raw_datasets:
            raise InputError(f"{option} needs a {split_kind} split; the data has {', '.join(raw_datasets) or 'none'}.")
        for name in names:
            if len(raw_datasets[name]) == 0:
                raise InputError(f"{option}: the {split_kind} split is empty: "
                                 f"{split_source(name, data_args, task)} has no rows.")
            wanted[name] = first(raw_datasets[name], count)
    if training_args.do_train and "stop" in raw_datasets:
        wanted["stop"] = raw_datasets["stop"]
    if training_args.do_eval and "heldout" in raw_datasets:
        if len(raw_datasets["heldout"]) == 0:
            raise InputError(f"--test_split_rows {data_args.test_split_rows}: every held-out row sits inside a "
                             "trainable row; give another block of rows.")
        wanted["heldout"] = raw_datasets["heldout"]

    # Text columns
    if task is not None:
        sentence1_key, sentence2_key = (task.text_columns + (None,))[:2]
    else:
        names = [name for name in raw_datasets["train"].column_names if name not in ("label", "idx")]
        if "sentence1" in names and "sentence2" in names:
            sentence1_key, sentence2_key = "sentence1", "sentence2"
        else:
            sentence1_key, sentence2_key = (names + [None])[:2]

    # Model and tokenizer
    config_kwargs = {"problem_type": "regression"} if is_regression else {}
    source = "--config_name" if model_args.config_name else "--model_name_or_path"
    with input_errors(OSError, prefix=f"{source} {model_args.config_name or model_args.model_name_or_path}: "):
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, num_labels=num_labels,
            finetuning_task=data_args.task_name, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
            token=model_args.token, trust_remote_code=model_args.trust_remote_code, **config_kwargs)
    source = "--tokenizer_name" if model_args.tokenizer_name else "--model_name_or_path"
    with input_errors(OSError, prefix=f"{source} {model_args.tokenizer_name or model_args.model_name_or_path}: "):
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.tokenizer_name or model_args.model_name_or_path, cache_dir=model_args.cache_dir,
            use_fast=model_args.use_fast_tokenizer, revision=model_args.model_revision, token=model_args.token,
            trust_remote_code=model_args.trust_remote_code)
    check_max_seq_length(data_args.max_seq_length, tokenizer, config, pair=sentence2_key is not None)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, config=config, cache_dir=model_args.cache_dir,
        revision=model_args.model_revision, token=model_args.token,
        trust_remote_code=model_args.trust_remote_code, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes)

    # Label ids: keep a checkpoint's own label order when it was trained on the same labels; the metrics
    # are then computed after mapping its ids back to the task's (`model_to_task`).
    label_to_id: Optional[dict] = None
    model_to_task: Optional[list[int]] = None
    if task is not None and not is_regression:
        model_labels = {str(name).lower(): int(i) for name, i in model.config.label2id.items()}
        if model.config.label2id != PretrainedConfig(num_labels=num_labels).label2id:
            if sorted(model_labels) == sorted(label_list):
                label_to_id = {i: model_labels[name] for i, name in enumerate(label_list)}
                model_to_task = sorted(label_to_id, key=label_to_id.get)
            else:
                logger.warning(f"The model's labels {sorted(model_labels)} do not match the task's "
                               f"{sorted(label_list)}; ignoring the model's.")
        if label_to_id is None:
            model.config.label2id = {name: i for i, name in enumerate(label_list)}
        else:
            model.config.label2id = {label_list[i]: j for i, j in label_to_id.items()}
        model.config.id2label = {i: name for name, i in model.config.label2id.items()}
    elif task is None and not is_regression:
        label_to_id = {value: i for i, value in enumerate(label_list)}
        model.config.label2id = {str(value): i for value, i in label_to_id.items()}
        model.config.id2label = {i: str(value) for value, i in label_to_id.items()}

    if data_args.lora_r is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=data_args.lora_r,
                                                 lora_alpha=data_args.lora_alpha or 2 * data_args.lora_r,
                                                 target_modules=data_args.lora_target_modules))
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples: dict[str, list]) -> dict[str, list]:
        texts = [examples[sentence1_key]] + ([] if sentence2_key is None else [examples[sentence2_key]])
        result = tokenizer(*texts, padding=padding, max_length=data_args.max_seq_length, truncation=True)
        if "original_label" in examples:
            # -1 (GLUE) or None (a CSV test file without labels) marks an unlabelled example
            result["label"] = [-1 if label in (-1, None) else label_to_id[label]
                               for label in examples["original_label"]]
        return result

    def tokenize(dataset: datasets.Dataset) -> datasets.Dataset:
        relabel = label_to_id is not None and "label" in dataset.column_names
        if relabel:
            # Remapped labels go to a new `label` column: `map` would keep the type of the old one
            # (a CSV's label names as strings) for a column of the same name.
            dataset = dataset.rename_column("label", "original_label")
        return dataset.map(preprocess, batched=True, remove_columns=["original_label"] if relabel else None,
                           load_from_cache_file=not data_args.overwrite_cache, desc="Running tokenizer on dataset")

    with training_args.main_process_first(desc="dataset map pre-processing"):
        processed = DatasetDict({name: tokenize(dataset) for name, dataset in wanted.items()})
    train_dataset = processed.get("train")
    if train_dataset is not None:
        for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
            logger.info(f"Sample {index} of the training set: {train_dataset[index]}.")

    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        multiple = 8 if training_args.fp16 or training_args.bf16 else None
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)

    step_timer = StepTimer()
    watched = FLIPPED_COLUMN if train_dataset is not None and FLIPPED_COLUMN in train_dataset.column_names else None
    callbacks: list[TrainerCallback] = [step_timer, RunSettingsRecorder(settings)]
    eval_dataset = processed[eval_names[0]] if training_args.do_eval else None
    best: Optional[BestWeights] = None
    if "stop" in processed:  # early stopping: the stop split scored every --early_stopping_every epochs
        criterion = MAIN_METRIC.get(data_args.task_name or "")
        best = BestWeights(f"eval_stop_{criterion or 'loss'}", higher=criterion is not None)
        callbacks.append(best)
        eval_dataset = {"stop": processed["stop"]}
        batches = math.ceil(len(train_dataset) / (training_args.train_batch_size * training_args.world_size))
        steps_per_epoch = max(1, batches // training_args.gradient_accumulation_steps)
        training_args.eval_strategy = IntervalStrategy.STEPS
        training_args.eval_steps = max(1, round(steps_per_epoch * data_args.early_stopping_every))
    trainer = KSAMTrainer(
        model=model, args=training_args, train_dataset=train_dataset, watch_column=watched,
        eval_dataset=eval_dataset,
        compute_metrics=make_compute_metrics(data_args.task_name, is_regression, model_to_task),
        processing_class=tokenizer, data_collator=data_collator, callbacks=callbacks)

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume.checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        metrics["train_steps"] = train_result.global_step
        metrics["train_median_step_time"] = step_timer.median
        metrics["train_mean_step_time"] = step_timer.mean
        shares = [log[f"sam_kept_{watched}"] for log in trainer.state.log_history if f"sam_kept_{watched}" in log]
        if shares:  # the mean over the logs (each a mean over its steps)
            metrics[f"train_mean_kept_{watched}"] = round(sum(shares) / len(shares), 4)
        if resume.finished:  # 0 steps ran: its train_loss (0.0) is no loss of this model
            metrics.pop("train_loss", None)
            logger.warning(f"Nothing trained: {resume.checkpoint} had finished its {train_result.global_step} steps.")
        if best is not None:  # the last model is a candidate too
            trainer.evaluate(eval_dataset=processed["stop"], metric_key_prefix="eval_stop")
            metrics.update(best.results())
            warn_if_stopped_at_the_floor(best, shaping.get("early_stopping_input_blind_score"))
        if data_args.save_weights:
            trainer.save_model()  # the tokenizer too (the last model; the scores below are the best one's)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        logger.info("*** Evaluate ***")

        def evaluate_all(prefix: str = "") -> dict[str, float]:
            combined: dict[str, float] = {}
            for name in eval_names:  # MNLI: matched, then mismatched (keys suffixed `_mm`)
                metrics = trainer.evaluate(eval_dataset=processed[name], metric_key_prefix=f"{prefix}eval")
                metrics[f"{prefix}eval_samples"] = len(processed[name])
                if name == "validation_mismatched":
                    metrics = {f"{key}_mm": value for key, value in metrics.items()}
                combined.update(metrics)
                trainer.log_metrics("eval", metrics)
            if "heldout" in processed:  # the training file's held-out block (--test_split_rows)
                scored = trainer.predict(processed["heldout"], metric_key_prefix=f"{prefix}heldout")  # one pass:
                metrics = scored.metrics  # the metrics and the predictions they came from
                metrics[f"{prefix}heldout_samples"] = len(processed["heldout"])
                if not is_regression:
                    metrics[f"{prefix}heldout_predicted_classes"] = predicted_classes(scored.predictions)
                combined.update(metrics)
                trainer.log_metrics("heldout", metrics)
            return combined

        combined: dict[str, float] = {}
        if best is not None and best.weights is not None:  # the last model, then the best one
            combined.update(evaluate_all("last_"))
            trainer.model.load_state_dict(best.weights)
        combined.update(evaluate_all())
        if data_args.eval_compressed:
            split = "heldout" if "heldout" in processed else "eval"
            combined.update(compression_results(trainer, processed["heldout" if split == "heldout" else eval_names[0]],
                                                split, training_args.seed, combined))
        trainer.save_metrics("eval", combined)

    if training_args.do_predict:
        logger.info("*** Predict ***")
        for name in test_names:  # MNLI: matched, then mismatched (`predict_results_mnli-mm.txt`)
            dataset = processed[name]
            if "label" in dataset.column_names:  # -1 there; nothing to score
                dataset = dataset.remove_columns("label")
            logits = trainer.predict(dataset, metric_key_prefix="predict").predictions
            predictions = predictions_from_logits(logits, is_regression)
            suffix = data_args.task_name or "test"
            if name == "test_mismatched":
                suffix += "-mm"
            if trainer.is_world_process_zero():
                path = Path(training_args.output_dir) / f"predict_results_{suffix}.txt"
                write_predictions(path, dataset, predictions, None if is_regression else model.config.id2label)
                logger.info(f"Predict results of {name} written to {path}")

    method = {"optimizer": data_args.optimizer, "optim": OptimizerNames(training_args.optim).value,
              **{name: getattr(training_args, name) for name in KSAMConfig.sam_field_names()},
              **shaping, **resume.results()}
    if trainer.is_world_process_zero():
        record_settings(training_args.output_dir, method)

    if training_args.push_to_hub:
        kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-classification"}
        if task is not None:
            kwargs.update(language="en", dataset_tags="glue", dataset_args=task.name,
                          dataset=f"GLUE {task.name.upper()}")
        trainer.push_to_hub(**kwargs)

    trainer.accelerator.wait_for_everyone()  # the other processes read all_results.json once rank 0 wrote it
    path = Path(training_args.output_dir) / "all_results.json"
    return json.loads(path.read_text()) if path.exists() else method


def cli(argv: Optional[Sequence[str]] = None) -> None:
    """The command line: an input problem ends as argparse's own errors do, with one line on stderr and
    exit status 2 (a traceback would hide the fix in noise); anything else is a bug and keeps its traceback."""
    try:
        main(argv)
    except InputError as error:
        print(f"run_glue.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    keep_freed_memory()  # the process is the run's own: no page faults for blocks freed and taken again
    cli()
