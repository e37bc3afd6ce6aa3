"""Print the tokens per training example of GLUE tasks, tokenized as the grid tokenizes them.

    python -m studies.token_lengths ../shared/models/all-MiniLM-L6-v2 ../shared/glue --max_train_samples sst2=20000

Why: K-SAM saves compute by running two of its three passes on k examples, and a pass over a few
short examples is dominated by per-pass work that does not shrink with k; the cost tables of the
GLUE grid read differently on tasks of ~10 tokens and of ~60 (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics

from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from glue_scripts.glue_data import glue_task, load_glue_tsv
from studies.grid import task_caps


def token_lengths(tokenizer: PreTrainedTokenizerBase, dataset: Dataset, columns: tuple[str, ...],
                  max_length: int) -> list[int]:
    """Each example's token count with the special tokens, truncated as run_glue.py truncates."""
    texts = [list(dataset[column]) for column in columns]
    return [len(ids) for ids in tokenizer(*texts, truncation=True, max_length=max_length)["input_ids"]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.token_lengths", description=__doc__.split("\n\n")[0])
    parser.add_argument("tokenizer", help="a model name or folder whose tokenizer the grid uses")
    parser.add_argument("glue_dir", help="the GLUE TSV release")
    parser.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "cola", "stsb", "sst2"])
    parser.add_argument("--max_train_samples", nargs="*", default=[], metavar="TASK=N",
                        help="the first N training examples of TASK, as the grid caps them")
    parser.add_argument("--max_seq_length", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        caps = task_caps(args.max_train_samples)
    except ValueError as error:
        parser.error(str(error))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    print("| task | training examples | mean tokens | median tokens |\n|---|---|---|---|")
    for task in args.tasks:
        train = load_glue_tsv(args.glue_dir, task, ["train"])["train"]
        if task in caps:
            train = train.select(range(min(caps[task], len(train))))
        lengths = token_lengths(tokenizer, train, glue_task(task).text_columns, args.max_seq_length)
        print(f"| {task} | {len(lengths)} | {statistics.mean(lengths):.1f} | {statistics.median(lengths):g} |")


if __name__ == "__main__":
    main()
