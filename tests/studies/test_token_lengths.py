"""Token counts per example, against the tokenizer's word pieces counted by hand."""

from __future__ import annotations

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from studies.token_lengths import main, token_lengths
from tests.testing_utils import SHARED

TOKENIZER = SHARED / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def tokenizer():
    if not (TOKENIZER / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {TOKENIZER}")
    return AutoTokenizer.from_pretrained(TOKENIZER)


def test_pairs_count_their_word_pieces_and_three_special_tokens(tokenizer):
    first, second = "The cat sat on the mat.", "A cat was sitting."
    pairs = Dataset.from_dict({"sentence1": [first, "word " * 200], "sentence2": [second, "other " * 200]})
    by_hand = len(tokenizer.tokenize(first)) + len(tokenizer.tokenize(second)) + 3  # [CLS] a [SEP] b [SEP]
    assert token_lengths(tokenizer, pairs, ("sentence1", "sentence2"), max_length=128) == [by_hand, 128]
    single = Dataset.from_dict({"sentence": [first]})
    assert token_lengths(tokenizer, single, ("sentence",), max_length=128) == [len(tokenizer.tokenize(first)) + 2]


def test_the_table_caps_a_task_as_the_grid_does(tokenizer, glue_dir, capsys):
    main([str(TOKENIZER), str(glue_dir), "--tasks", "cola", "--max_train_samples", "cola=3"])
    rows = capsys.readouterr().out.splitlines()
    assert rows[2].startswith("| cola | 3 | ")


def test_a_cap_that_is_not_task_equals_count_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["m", "g", "--max_train_samples", "sst2:20000"])
    assert "--max_train_samples: 'sst2:20000' is not TASK=N" in capsys.readouterr().err
