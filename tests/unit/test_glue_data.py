"""Loading the original GLUE TSV release into the Hub's layout (`nyu-mll/glue`)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from datasets import ClassLabel, Value

from glue_scripts.glue_data import GLUE_TASKS, glue_task, load_glue_tsv

ROW_COUNTS = {
    "cola": {"train": 8551, "validation": 1043, "test": 1063},
    "sst2": {"train": 67349, "validation": 872, "test": 1821},
    "mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "rte": {"train": 2490, "validation": 277, "test": 3000},
    "wnli": {"train": 635, "validation": 71, "test": 146},
}
LABELS = {  # Hub order
    "cola": ["unacceptable", "acceptable"], "sst2": ["negative", "positive"],
    "mrpc": ["not_equivalent", "equivalent"], "rte": ["entailment", "not_entailment"],
    "wnli": ["not_entailment", "entailment"], "qnli": ["entailment", "not_entailment"],
    "mnli": ["entailment", "neutral", "contradiction"], "qqp": ["not_duplicate", "duplicate"],
}


def first_data_row(path: Path, header: bool = True) -> list[str]:
    """The first data row of a TSV, split by tabs with nothing else interpreted."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if header:
            next(rows)
        return next(rows)


def test_task_table():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"]
    assert {name: list(task.label_names) for name, task in GLUE_TASKS.items() if task.label_names} == LABELS
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["mnli"].test_splits == ("test_matched", "test_mismatched")
    assert GLUE_TASKS["rte"].eval_splits == ("validation",)
    assert {task.directory for task in GLUE_TASKS.values()} == {
        "CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"}
    assert glue_task("SST2") is GLUE_TASKS["sst2"]
    with pytest.raises(ValueError, match="Unknown GLUE task 'sst-2'.*sst2"):
        glue_task("sst-2")


@pytest.mark.parametrize("task", list(ROW_COUNTS))
def test_row_counts_columns_and_features(glue_dir, task):
    data = load_glue_tsv(glue_dir, task)
    spec = GLUE_TASKS[task]
    assert {split: len(data[split]) for split in data} == ROW_COUNTS[task]
    for split, dataset in data.items():
        assert dataset.column_names == [*spec.text_columns, "label", "idx"]
        assert dataset["idx"] == list(range(len(dataset)))
        assert dataset.features["idx"] == Value("int32")
        if task == "stsb":
            assert dataset.features["label"] == Value("float32")
        else:
            assert isinstance(dataset.features["label"], ClassLabel)
            assert dataset.features["label"].names == LABELS[task]
        if split == "test":
            assert set(dataset["label"]) == {-1}
        elif task != "stsb":
            assert set(dataset["label"]) == {0, 1}
        for column in spec.text_columns:
            assert all(isinstance(text, str) and text for text in dataset[column])


def test_first_rows_match_the_files(glue_dir):
    cola = first_data_row(glue_dir / "CoLA" / "train.tsv", header=False)  # source, label, original, sentence
    row = load_glue_tsv(glue_dir, "cola", ["train"])["train"][0]
    assert row == {"sentence": cola[3], "label": int(cola[1]), "idx": 0}
    assert row["sentence"] == "Our friends won't buy this analysis, let alone the next one we propose."

    sst2 = load_glue_tsv(glue_dir, "sst2", ["train"])["train"][0]
    assert sst2 == {"sentence": "hide new secretions from the parental units ", "label": 0, "idx": 0}  # space kept

    mrpc_file = first_data_row(glue_dir / "MRPC" / "train.tsv")  # Quality, #1 ID, #2 ID, #1 String, #2 String
    mrpc = load_glue_tsv(glue_dir, "mrpc", ["train"])["train"][0]
    assert mrpc == {"sentence1": mrpc_file[3], "sentence2": mrpc_file[4], "label": int(mrpc_file[0]), "idx": 0}
    assert mrpc["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness "')

    rte_file = first_data_row(glue_dir / "RTE" / "train.tsv")  # index, sentence1, sentence2, label
    rte = load_glue_tsv(glue_dir, "rte", ["train"])["train"][0]
    assert rte_file[3] == "not_entailment"
    assert rte == {"sentence1": rte_file[1], "sentence2": rte_file[2], "label": 1, "idx": 0}

    stsb_file = first_data_row(glue_dir / "STS-B" / "dev.tsv")
    stsb = load_glue_tsv(glue_dir, "stsb", ["validation"])["validation"][0]
    assert stsb == {"sentence1": "A man with a hard hat is dancing.",
                    "sentence2": "A man wearing a hard hat is dancing.", "label": 5.0, "idx": 0}
    assert stsb["label"] == float(stsb_file[9])

    wnli = load_glue_tsv(glue_dir, "wnli", ["validation"])["validation"]
    assert wnli[0]["label"] == 0 and wnli[1]["label"] == 1  # digits kept as the Hub's ids


def test_test_splits_take_their_header(glue_dir):
    cola = load_glue_tsv(glue_dir, "cola", ["test"])["test"]
    assert cola[0] == {"sentence": "Bill whistled past the house.", "label": -1, "idx": 0}
    mrpc = load_glue_tsv(glue_dir, "mrpc", ["test"])["test"][0]
    assert mrpc["sentence1"].startswith("PCCW 's chief operating officer")
    rte = load_glue_tsv(glue_dir, "rte", ["test"])["test"]
    assert rte[2999]["idx"] == 2999  # with quoting on, rows merge and fewer than 3000 remain


def test_stsb_labels_are_floats_in_range(glue_dir):
    labels = load_glue_tsv(glue_dir, "stsb", ["train", "validation"])
    for split in ("train", "validation"):
        values = labels[split]["label"]
        assert all(isinstance(value, float) for value in values)
        assert min(values) == 0.0 and max(values) == 5.0
        assert any(not value.is_integer() for value in values)
    assert load_glue_tsv(glue_dir, "stsb", ["test"])["test"]["label"][:3] == [-1.0, -1.0, -1.0]


def test_qnli_has_validation_and_test_but_no_train(glue_dir):
    data = load_glue_tsv(glue_dir, "qnli", ["validation", "test"])
    assert len(data["validation"]) == 5463 and len(data["test"]) == 5463
    assert data["validation"].column_names == ["question", "sentence", "label", "idx"]
    assert data["validation"][0]["question"] == "What came into force after the new constitution was herald?"
    assert data["validation"][0]["label"] == 0  # entailment
    assert set(data["validation"]["label"]) == {0, 1}
    with pytest.raises(FileNotFoundError) as error:
        load_glue_tsv(glue_dir, "qnli")
    message = str(error.value)
    assert str(glue_dir / "QNLI" / "train.tsv") in message
    assert "dev.tsv" not in message
    assert "nyu-mll/glue" in message and "--task_name qnli" in message
    assert "--glue_dir" in message and "GLUE_DIR" in message


def test_mnli_missing_names_every_file_in_one_error(glue_dir):
    if (glue_dir / "MNLI").exists():
        pytest.skip("this GLUE copy has MNLI")
    with pytest.raises(FileNotFoundError) as error:
        load_glue_tsv(glue_dir, "mnli")
    message = str(error.value)
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv", "test_mismatched.tsv"):
        assert str(glue_dir / "MNLI" / name) in message
    assert "nyu-mll/glue" in message and "--glue_dir" in message


def test_unknown_split(glue_dir):
    with pytest.raises(ValueError, match="no split 'validation_matched'"):
        load_glue_tsv(glue_dir, "rte", ["validation_matched"])


def test_quotes_and_empty_fields_survive(tmp_path):
    """No real data needed: stray quotes stay text, an empty field stays an empty string."""
    rte = tmp_path / "RTE"
    rte.mkdir()
    (rte / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n"
        '0\tHe said "yes.\tNo one spoke.\tnot_entailment\n'
        '1\t\t"Quoted" text\tentailment\n')
    data = load_glue_tsv(tmp_path, "rte", ["validation"])["validation"]
    assert data[0] == {"sentence1": 'He said "yes.', "sentence2": "No one spoke.", "label": 1, "idx": 0}
    assert data[1] == {"sentence1": "", "sentence2": '"Quoted" text', "label": 0, "idx": 1}


def test_bad_label_and_broken_index_are_reported(tmp_path):
    rte = tmp_path / "RTE"
    rte.mkdir()
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="label 'maybe'"):
        load_glue_tsv(tmp_path, "rte", ["validation"])
    (rte / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n2\tc\td\tentailment\n")
    with pytest.raises(ValueError, match="index"):
        load_glue_tsv(tmp_path, "rte", ["validation"])


# ----------------------------------------------------------------------------- damaged files
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"


def write_task_file(root: Path, directory: str, name: str, content: str | bytes) -> Path:
    path = root / directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def stsb_row(index: int, score: str) -> str:
    return (f"{index}\tmain-captions\tMSRvid\t2012test\t{index:04d}\tnone\tnone\tA man runs.\t"
            f"A man is running.\t{score}\n")


@pytest.mark.parametrize("score, problem", [
    ("nan", "not a finite number"), ("inf", "not a finite number"), ("-inf", "not a finite number"),
    ("-0.5", "outside 0..5"), ("5.25", "outside 0..5"), ("high", "not a number"), ("", "not a number"),
])
def test_stsb_scores_must_be_numbers_in_range(tmp_path, score, problem):
    path = write_task_file(tmp_path, "STS-B", "train.tsv", STSB_HEADER + stsb_row(0, "3.8") + stsb_row(1, score))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: score {score!r} is {problem}") as error:
        load_glue_tsv(tmp_path, "stsb", ["train"])
    assert "\n" not in str(error.value)


def test_stsb_scores_at_the_bounds_load(tmp_path):
    write_task_file(tmp_path, "STS-B", "dev.tsv", STSB_HEADER + stsb_row(0, "0.000") + stsb_row(1, "5.0"))
    assert load_glue_tsv(tmp_path, "stsb", ["validation"])["validation"]["label"] == [0.0, 5.0]


@pytest.mark.parametrize("row, problem", [
    ("1\tOnly one sentence.\tentailment\n", "3 fields, expected 4"),  # a lost tab
    ("1\ta\tb\tentailment\textra\n", "5 fields, expected 4"),
])
def test_rows_with_a_wrong_field_count_name_their_line(tmp_path, row, problem):
    path = write_task_file(tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n" + row
                           + "2\tc\td\tentailment\n")
    where = re.escape(str(path))
    with pytest.raises(ValueError, match=rf"^{where}:3: {problem} \(index, sentence1, sentence2, label\)"):
        load_glue_tsv(tmp_path, "rte", ["train"])


def test_header_only_file_is_an_empty_split(tmp_path):
    write_task_file(tmp_path, "RTE", "dev.tsv", RTE_HEADER)
    assert len(load_glue_tsv(tmp_path, "rte", ["validation"])["validation"]) == 0


RTE_DEV = ("RTE", "dev.tsv", "rte", "validation")


@pytest.mark.parametrize("where, content, problem", [
    (("STS-B", "dev.tsv", "stsb", "validation"),
     STSB_HEADER + stsb_row(0, "1.0") + stsb_row(1, "2.0").replace("A man runs.\t", "A man runs. "),
     ":3: 9 fields, expected 10"),  # a lost tab is not read as an empty sentence
    (RTE_DEV, "", ": the file is empty"),
    (RTE_DEV, (RTE_HEADER + "0\ta\tb\tentailment\n").encode() + b"1\tcaf\xe9\tb\tentailment\n",
     r":3: not UTF-8 text \(byte 0xe9 at column 6\)"),
    (RTE_DEV, RTE_HEADER + "0\ta\tb\tentailment\nx\tc\td\tentailment\n", ":3: index 'x' is not a whole number"),
    (RTE_DEV, RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tmaybe\n", ":3: label 'maybe' is not one of"),
    (RTE_DEV, RTE_HEADER + "0\ta\tb\tentailment\n5\tc\td\tentailment\n", ":3: index 5, expected 1"),
    (("CoLA", "train.tsv", "cola", "train"), "gj04\t1\t\tGood.\ngj04\t2\t*\tBad label.\n",
     ":2: label '2' is not one of"),  # no header: lines count from the first row
], ids=["lost-tab", "empty-file", "not-utf8", "index-not-a-number", "unknown-label", "index-out-of-order",
        "headerless-cola"])
def test_a_damaged_file_names_its_line(where, content, problem, tmp_path):
    directory, name, task, split = where
    path = write_task_file(tmp_path, directory, name, content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}{problem}"):
        load_glue_tsv(tmp_path, task, [split])


def test_crlf_and_blank_lines_are_tolerated(tmp_path):
    write_task_file(tmp_path, "RTE", "dev.tsv", (RTE_HEADER + "0\ta\tb\tentailment\n\n1\tc\td\tnot_entailment\n\n")
                    .replace("\n", "\r\n"))
    data = load_glue_tsv(tmp_path, "rte", ["validation"])["validation"]
    assert data["sentence2"] == ["b", "d"] and data["label"] == [0, 1]
