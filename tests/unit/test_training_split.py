"""The SAM-wins protocol's training split: label noise, a seeded sample, a held-out block, against
counts and containments worked out by hand."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, Features, Value

from glue_scripts.training_split import flip_labels, parse_row_range, seeded_sample, split_rows, without_contained


def labelled(labels: list[int], classes: int = 2) -> Dataset:
    features = Features({"sentence": Value("string"), "label": ClassLabel(num_classes=classes), "idx": Value("int32")})
    return Dataset.from_dict({"sentence": [f"s{i}" for i in range(len(labels))], "label": labels,
                              "idx": list(range(len(labels)))}, features=features)


@pytest.mark.parametrize("share, count", [(0.3, 30), (0.25, 25), (0.005, 0), (0.0, 0), (0.999, 100)])
def test_the_noise_flips_exactly_round_p_n_labels_each_to_another_class(share, count):
    data = labelled([i % 2 for i in range(100)])
    noisy, flipped = flip_labels(data, share, seed=7, classes=[0, 1])
    before, after = data["label"], noisy["label"]
    changed = [i for i in range(100) if before[i] != after[i]]
    assert len(flipped) == count == round(share * 100) and changed == flipped
    assert noisy.features["label"] == data.features["label"] and noisy["sentence"] == data["sentence"]


def test_the_noise_is_seeded_and_uniform_over_the_other_classes():
    data = labelled([0] * 3000, classes=3)
    first, flipped = flip_labels(data, 0.5, seed=1, classes=[0, 1, 2])
    again, _ = flip_labels(data, 0.5, seed=1, classes=[0, 1, 2])
    other, _ = flip_labels(data, 0.5, seed=2, classes=[0, 1, 2])
    assert first["label"] == again["label"] and first["label"] != other["label"]
    new = [first["label"][i] for i in flipped]
    assert 0 not in new and abs(new.count(1) - 750) < 90 and abs(new.count(2) - 750) < 90  # 1500 draws, p = 1/2
    named, _ = flip_labels(Dataset.from_dict({"label": ["neg", "pos", "neg", "pos"]}), 0.5, seed=0,
                           classes=["neg", "pos"])  # label values of a CSV file
    assert sum(a != b for a, b in zip(named["label"], ["neg", "pos", "neg", "pos"])) == 2


@pytest.mark.parametrize("share", [1.0, -0.1, 1.5])
def test_a_share_outside_0_1_is_refused(share):
    with pytest.raises(ValueError, match=r"--label_noise .*give a share in \[0, 1\)"):
        flip_labels(labelled([0, 1]), share, seed=0, classes=[0, 1])


def test_the_sample_is_seeded_without_replacement_and_in_file_order():
    data = labelled([i % 2 for i in range(50)])
    sample = seeded_sample(data, 20, seed=3)
    assert sample["idx"] == seeded_sample(data, 20, seed=3)["idx"] != seeded_sample(data, 20, seed=4)["idx"]
    assert len(set(sample["idx"])) == 20 and sample["idx"] == sorted(sample["idx"])
    assert sample["idx"] != list(range(20))  # not the first 20
    with pytest.raises(ValueError, match="--train_sample 51 is more than the 50 training rows"):
        seeded_sample(data, 51, seed=0)


def test_the_held_out_block_and_the_rows_a_training_row_contains():
    data = Dataset.from_dict({"sentence": ["a b c d e", "the good", "a b", "b c d", "x y", "good film", "the good",
                                           "c"], "label": [0] * 8})
    trainable, block = split_rows(data, parse_row_range("2:8"))
    assert trainable["sentence"] == ["a b c d e", "the good"] and len(block) == 6
    kept, dropped = without_contained(block, trainable, ("sentence",))
    # "a b", "b c d", "c" (inside "a b c d e") and "the good" (a duplicate) are in a training row;
    # "good film" is not (only "good" is), nor "x y"; "b c" would be, "d c" would not (word order).
    assert kept["sentence"] == ["x y", "good film"] and dropped == 4
    pairs = Dataset.from_dict({"s1": ["p q", "m n"], "s2": ["r", "z"]})
    kept, dropped = without_contained(pairs, Dataset.from_dict({"s1": ["k"], "s2": ["o p q"]}), ("s1", "s2"))
    assert kept["s1"] == ["m n"] and dropped == 1  # either text of a pair, against either column


@pytest.mark.parametrize("text", ["5:3", "3:3", "a:b", "10", "-1:4"])
def test_a_bad_row_range_is_refused_in_one_line(text):
    with pytest.raises(ValueError, match=r"--test_split_rows .* is not A:B with whole numbers"):
        parse_row_range(text)


def test_a_block_past_the_file_is_refused():
    with pytest.raises(ValueError, match="runs past the training file's 8 rows: give B <= 8"):
        split_rows(labelled([0] * 8), range(4, 9))
