"""Shaping the training split for the SAM-wins protocol: a held-out test block, a seeded sample,
seeded label noise.

Small dev sets (SST-2 872, MRPC 408, RTE 277 examples) move a score by a point or two between
seeds, as much as the gaps to measure. A block of rows of the training file that no run trains on
is a larger test set: `split_rows` cuts it out, and `without_contained` drops the rows whose text
a training row contains (SST-2's training rows are phrases cut from the same sentences, so a
held-out phrase can sit inside a training phrase). `seeded_sample` draws the same N training examples for every method;
`flip_labels` flips a share of them to another class, uniformly, as in the label-noise studies of
SAM (Foret et al. 2021).
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from .run_safety import InputError


def parse_row_range(text: str) -> range:
    """`"62349:67349"` -> `range(62349, 67349)`: rows A (included) to B (excluded), counted from 0."""
    start, sep, stop = text.partition(":")
    if not sep or not start.strip().isdigit() or not stop.strip().isdigit() or int(start) >= int(stop):
        raise ValueError(f"--test_split_rows {text!r} is not A:B with whole numbers 0 <= A < B "
                         "(rows A to B-1 of the training file), e.g. 62349:67349.")
    return range(int(start), int(stop))


def split_rows(train: Dataset, rows: range) -> tuple[Dataset, Dataset]:
    """(the rows outside `rows`, which runs may train on; the rows in `rows`, held out)."""
    if rows.stop > len(train):
        raise ValueError(f"--test_split_rows {rows.start}:{rows.stop} runs past the training file's "
                         f"{len(train)} rows: give B <= {len(train)}.")
    return (train.select([i for i in range(len(train)) if i not in rows]), train.select(rows))


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def without_contained(heldout: Dataset, training: Dataset, text_columns: tuple[str, ...]) -> tuple[Dataset, int]:
    """The held-out rows none of whose texts appears, as a run of whole words, inside a text of a
    `training` row (an exact duplicate included): the model was trained on that very phrase. Returns
    them and how many were dropped. Checked against the rows the run trains on: against the whole rest
    of SST-2's file (phrases of the same 8.5k sentences) almost every short phrase would go."""
    held_texts = [[_words(heldout[column][i]) for column in text_columns] for i in range(len(heldout))]
    lengths = {len(words) for texts in held_texts for words in texts if words}
    spans: set[int] = set()  # hashes of every run of words of a length some held-out text has
    for column in text_columns:
        for text in training[column]:
            words = _words(text)
            for length in lengths:
                for start in range(len(words) - length + 1):
                    spans.add(hash(words[start:start + length]))
    keep = [i for i, texts in enumerate(held_texts) if not any(words and hash(words) in spans for words in texts)]
    return heldout.select(keep), len(heldout) - len(keep)


def seeded_sample(train: Dataset, count: int, seed: int) -> Dataset:
    """`count` rows drawn without replacement, seeded (numpy's PCG64), in the file's order."""
    if count > len(train):
        raise ValueError(f"--train_sample {count} is more than the {len(train)} training rows available: "
                         f"give at most {len(train)}.")
    return train.select(drawn_rows(len(train), count, seed))


def drawn_rows(total: int, count: int, seed: int) -> list[int]:
    """`count` of `total` row indices drawn without replacement (numpy's PCG64 from `seed`), sorted."""
    return sorted(np.random.default_rng(seed).choice(total, size=count, replace=False).tolist())


def flip_labels(train: Dataset, share: float, seed: int, classes: list) -> tuple[Dataset, list[int]]:
    """round(share * N) rows, drawn without replacement (seeded), get another class drawn uniformly
    from the other `len(classes) - 1` (`classes`: the label values). Returns the dataset and the
    flipped rows' positions."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"--label_noise {share}: give a share in [0, 1), e.g. 0.3 for 30 % of the labels.")
    count = round(share * len(train))
    rng = np.random.default_rng(seed)
    flipped = sorted(rng.choice(len(train), size=count, replace=False).tolist())
    labels = list(train["label"])
    for position in flipped:
        step = int(rng.integers(1, len(classes)))
        labels[position] = classes[(classes.index(labels[position]) + step) % len(classes)]
    columns = {**train.to_dict(), "label": labels}
    return Dataset.from_dict(columns, features=train.features), flipped


def split_for_stopping(train: Dataset, size: float, seed: int) -> tuple[Dataset, Dataset]:
    """(the rows left to train on, the early-stopping split): `size` below 1 a share of the rows
    (rounded), 1 and above a count, drawn without replacement (seeded), both in the file's order."""
    count = round(size * len(train)) if size < 1 else int(size)
    if not 1 <= count < len(train):
        raise InputError(f"--early_stopping_split {size:g} holds out {count} of the {len(train)} training rows: give "
                         "a share in (0, 1) or a count that leaves rows to train on (e.g. 0.2).")
    chosen = drawn_rows(len(train), count, seed)
    rest = sorted(set(range(len(train))) - set(chosen))
    return train.select(rest), train.select(chosen)
