"""Loading GLUE: the nine tasks as the Hub's `nyu-mll/glue` has them, from the Hub or offline.

`load_glue_tsv` reads the original GLUE release (the `<TASK>/train.tsv`, `dev.tsv`, `test.tsv`
layout of the classic download script) into the same `DatasetDict` that
`load_dataset("nyu-mll/glue", task)` returns: same split names, same columns (the task's text
columns, `label`, `idx`), same features (`ClassLabel` with the Hub's label order, `float32` for
STS-B) and `-1` as the label of the unlabelled test splits. That makes a run on the offline copy
comparable with one on the Hub data.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its Hub layout and where its fields sit in the original TSV release."""

    name: str
    text_columns: tuple[str, ...]
    """Hub names of the text columns (one sentence or a pair), in the order the model reads them."""
    label_names: Optional[tuple[str, ...]]
    """Class names in Hub id order (`ClassLabel`); None for the regression task (STS-B)."""
    directory: str
    """Directory of the task in the original release (`CoLA`, `SST-2`, ...)."""
    files: dict[str, str]
    """Hub split name -> TSV file name in `directory`."""
    tsv_text_columns: tuple[str, ...]
    """TSV columns holding `text_columns`, in the same order."""
    tsv_label_column: str
    """TSV column of the label (absent from the test files)."""
    headerless_columns: Optional[tuple[str, ...]] = None
    """Column names of the labelled files when they have no header row (CoLA's train and dev)."""

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Validation splits, the main one first (MNLI: matched, then mismatched)."""
        return tuple(split for split in self.files if split.startswith("validation"))

    @property
    def test_splits(self) -> tuple[str, ...]:
        """Unlabelled test splits, the main one first (MNLI: matched, then mismatched)."""
        return tuple(split for split in self.files if split.startswith("test"))

    @property
    def features(self) -> Features:
        """The Hub's features: text columns, `label`, `idx`."""
        label = Value("float32") if self.label_names is None else ClassLabel(names=list(self.label_names))
        return Features({**{column: Value("string") for column in self.text_columns},
                         "label": label, "idx": Value("int32")})


_STANDARD_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_NLI = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {task.name: task for task in (
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), "CoLA", _STANDARD_FILES,
             ("sentence",), "label", headerless_columns=("source", "label", "original_label", "sentence")),
    GlueTask("sst2", ("sentence",), ("negative", "positive"), "SST-2", _STANDARD_FILES,
             ("sentence",), "label"),
    GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "MRPC", _STANDARD_FILES,
             ("#1 String", "#2 String"), "Quality"),
    GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "QQP", _STANDARD_FILES,
             ("question1", "question2"), "is_duplicate"),
    GlueTask("stsb", ("sentence1", "sentence2"), None, "STS-B", _STANDARD_FILES,
             ("sentence1", "sentence2"), "score"),
    GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "MNLI",
             {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
              "validation_mismatched": "dev_mismatched.tsv", "test_matched": "test_matched.tsv",
              "test_mismatched": "test_mismatched.tsv"},
             ("sentence1", "sentence2"), "gold_label"),
    GlueTask("qnli", ("question", "sentence"), _NLI, "QNLI", _STANDARD_FILES, ("question", "sentence"), "label"),
    GlueTask("rte", ("sentence1", "sentence2"), _NLI, "RTE", _STANDARD_FILES, ("sentence1", "sentence2"), "label"),
    GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "WNLI", _STANDARD_FILES,
             ("sentence1", "sentence2"), "label"),
)}


def glue_task(name: str) -> GlueTask:
    """The task called `name` (case-insensitive); a clear error for anything else."""
    task = GLUE_TASKS.get(name.lower())
    if task is None:
        raise ValueError(f"Unknown GLUE task {name!r}: use one of {', '.join(GLUE_TASKS)}.")
    return task


def load_glue_hub(name: str, **load_kwargs) -> DatasetDict:
    """The task from the Hugging Face Hub (needs network, or the datasets cache)."""
    return load_dataset(HUB_DATASET, glue_task(name).name, **load_kwargs)


def load_glue_tsv(glue_dir: Union[str, os.PathLike], name: str,
                  splits: Optional[Iterable[str]] = None) -> DatasetDict:
    """The task from the original GLUE TSV release under `glue_dir`, laid out as the Hub's version.

    `splits` (Hub names, default: all of the task's) lets a caller read only what it needs, so a
    copy without a train file still serves evaluation. Every missing file is named in one
    `FileNotFoundError` that says where the data can come from instead.
    """
    task = glue_task(name)
    wanted = list(task.files) if splits is None else list(splits)
    unknown = [split for split in wanted if split not in task.files]
    if unknown:
        raise ValueError(f"GLUE task {task.name!r} has no split {', '.join(map(repr, unknown))}: "
                         f"its splits are {', '.join(task.files)}.")
    paths = {split: Path(glue_dir) / task.directory / task.files[split] for split in wanted}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"GLUE task {task.name!r}: file(s) not found: {', '.join(missing)}. This copy of GLUE does "
            f"not have them. Load the task from the Hugging Face Hub ('{HUB_DATASET}', needs network: "
            f"give --task_name {task.name} without --glue_dir and unset GLUE_DIR), or download the "
            f"original GLUE release and point --glue_dir (or GLUE_DIR) at the directory that holds "
            f"{task.directory}/."
        )
    return DatasetDict({split: _read_split(task, path, labelled=not split.startswith("test"))
                        for split, path in paths.items()})


class GlueFileError(ValueError):
    """A GLUE file that cannot be read as its task expects. The message starts with `file:line:` (line
    numbers as an editor shows them, the header counted), so that the damage can be found and fixed."""


def _read_split(task: GlueTask, path: Path, labelled: bool) -> Dataset:
    """One TSV file as a Hub-shaped `Dataset`, every row checked.

    Quoting is off (the files hold stray `"` that a quoting reader merges rows over), empty fields
    stay empty strings (CoLA's third column is mostly empty), and `utf-8-sig` drops MRPC's byte-order
    mark. A row with a lost or an extra tab, a broken `index`, an unknown label or an STS-B score that
    is not a number in 0..5 stops the load with its file and line: read on, it would train on
    shifted columns, or (a `nan` score) to NaN weights.
    """
    columns, rows = _read_tsv(path, task.headerless_columns if labelled else None)
    absent = [c for c in (*task.tsv_text_columns, *([task.tsv_label_column] if labelled else ()))
              if c not in columns]
    if absent:
        raise GlueFileError(f"{path}: expected column(s) {absent} for GLUE task {task.name!r}, found {columns}.")
    position = {name: i for i, name in enumerate(columns)}
    index_column = position.get("index")
    texts: dict[str, list[str]] = {hub: [] for hub in task.text_columns}
    labels: list[Union[int, float]] = []
    for row_id, (line, fields) in enumerate(rows):
        if index_column is not None:
            _check_index(fields[index_column], row_id, f"{path}:{line}")
        for hub, tsv in zip(task.text_columns, task.tsv_text_columns):
            texts[hub].append(fields[position[tsv]])
        if labelled:
            labels.append(_label_id(task, fields[position[task.tsv_label_column]], f"{path}:{line}"))
    if not labelled:
        labels = [-1.0 if task.is_regression else -1] * len(rows)
    return Dataset.from_dict({**texts, "label": labels, "idx": list(range(len(rows)))}, features=task.features)


def _read_tsv(path: Path, names: Optional[tuple[str, ...]]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The column names (the header line, or `names` for a file without one) and the rows as
    (line number, fields), each row checked to have one field per column.

    Read by hand rather than with pandas, whose errors (`EmptyDataError`, `UnicodeDecodeError`, a
    missing field read as NaN) name neither the file nor the line. Blank lines are skipped, as pandas
    does, and a Windows line end is accepted.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raw, start = error.object, error.start  # without the byte-order mark
        line, column = raw.count(b"\n", 0, start) + 1, start - raw.rfind(b"\n", 0, start)
        raise GlueFileError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[start]:02x} at column {column}); "
                            "re-save the file as UTF-8 or download it again.") from None
    if not text.strip():
        raise GlueFileError(f"{path}: the file is empty; download it again (it should start with "
                            f"{'a first row' if names else 'a header line'}).")
    lines = ((number, line[:-1] if line.endswith("\r") else line)
             for number, line in enumerate(text.split("\n"), start=1))
    lines = ((number, line) for number, line in lines if line)
    columns = list(names) if names else next(lines)[1].split("\t")
    rows = []
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise GlueFileError(f"{path}:{number}: {len(fields)} fields, expected {len(columns)} "
                                f"({', '.join(columns)}); a tab was lost or added: fix the line or download "
                                "the file again.")
        rows.append((number, fields))
    return columns, rows


def _check_index(value: str, expected: int, where: str) -> None:
    """The Hub numbers rows from 0; an `index` that does not is a sign of merged or lost rows."""
    if not (value.isascii() and value.isdigit()):
        raise GlueFileError(f"{where}: index {value!r} is not a whole number; the file is damaged: "
                            "download it again.")
    if int(value) != expected:
        raise GlueFileError(f"{where}: index {value}, expected {expected}; the file is damaged or was "
                            "rewritten with quoting on (rows merged): download it again.")


def _label_id(task: GlueTask, value: str, where: str) -> Union[int, float]:
    """A TSV label as the Hub stores it: the class id (from a name or a digit), or STS-B's score,
    which must be a number in 0..5."""
    if task.label_names is None:
        try:
            score = float(value)
        except ValueError:
            raise GlueFileError(f"{where}: score {value!r} is not a number; STS-B scores are numbers "
                                "in 0..5: fix the line or download the file again.") from None
        if not math.isfinite(score):
            raise GlueFileError(f"{where}: score {value!r} is not a finite number; STS-B scores are "
                                "numbers in 0..5: fix the line or download the file again.")
        if not 0.0 <= score <= 5.0:
            raise GlueFileError(f"{where}: score {value!r} is outside 0..5, the range of STS-B scores: "
                                "fix the line or download the file again.")
        return score
    if value in task.label_names:
        return task.label_names.index(value)
    if value.isascii() and value.isdigit() and int(value) < len(task.label_names):
        return int(value)
    raise GlueFileError(f"{where}: label {value!r} is not one of {list(task.label_names)} "
                        f"(or their ids 0..{len(task.label_names) - 1}); fix the line or download the file again.")
