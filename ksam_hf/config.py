"""`KSAMConfig`: the training arguments of `KSAMTrainer` (TrainingArguments plus the SAM knobs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Union

from transformers import Seq2SeqTrainingArguments, TrainingArguments

SAM_MODES = ("ksam", "sam", "none")
KSAM_SELECTIONS = ("forward", "previous_loss")


def parse_ksam_k(value: Union[int, float, str]) -> Union[int, float]:
    """Turn `ksam_k` into a count (`int` >= 1) or a fraction (`float` in (0, 1]).

    As scikit-learn's `test_size`: an `int` is a number of examples, a `float` a fraction of the
    batch. Text (from the command line or a JSON file) is an `int` when it is written as one
    (`"8"`), a fraction otherwise (`"0.25"`, `"1.0"`). A float with an integral value above 1
    (what `HfArgumentParser` makes of `--ksam_k 8`) is read as that count.
    """
    if isinstance(value, bool):
        raise ValueError(f"`ksam_k` must be a number, got the bool {value!r}.")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(
                    f"`ksam_k`={value!r} is not a number: give a fraction of the batch in (0, 1] "
                    "(e.g. 0.25) or a whole number of examples >= 1 (e.g. 8)."
                ) from None
    if isinstance(value, float) and value > 1 and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(
                f"`ksam_k`={value} keeps no example: give a whole count >= 1 or a fraction in (0, 1]."
            )
        return value
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(
            f"`ksam_k`={value} is neither a fraction in (0, 1] nor a whole count >= 1: "
            "use e.g. 0.25 for a quarter of each batch, or 8 for eight examples."
        )
    return float(value)


def resolve_k(ksam_k: Union[int, float], batch_size: int) -> int:
    """Number of examples kept from a batch of `batch_size`.

    A fraction rounds up (so it keeps at least one example); a count larger than the batch (a
    short last batch) keeps the whole batch.
    """
    if isinstance(ksam_k, float):
        k = math.ceil(ksam_k * batch_size - 1e-9)
    else:
        k = ksam_k
    return max(1, min(k, batch_size))


@dataclass
class KSAMConfig(TrainingArguments):
    r"""
    Configuration of [`KSAMTrainer`]: every [`~transformers.TrainingArguments`] field, plus:

    Parameters:
        sam_mode (`str`, *optional*, defaults to `"ksam"`):
            `"ksam"`: K-SAM (Ni et al. 2022): rank the batch by per-example loss in a forward pass
            without gradients, then run SAM's ascent and descent on the `ksam_k` highest-loss
            examples only. `"sam"`: SAM (Foret et al. 2021) on the whole batch (two forward and
            backward passes). `"none"`: the stock `Trainer` step (the baseline).
        sam_rho (`float`, *optional*, defaults to `0.05`):
            Radius of the ascent step: the weights are moved by `rho * g / ||g||` before the
            descent gradient is taken. `0` makes the step a plain gradient step on the kept examples.
        ksam_k (`float` or `int`, *optional*, defaults to `0.25`):
            How many examples of each (per-device, per-micro-batch) batch K-SAM keeps. A float in
            (0, 1] is a fraction of the batch (rounded up); an int >= 1 is a count. A count larger
            than a (short, last) batch keeps the whole batch. On the command line `--ksam_k 8`
            means eight examples and `--ksam_k 0.25` a quarter; `1` and `1.0` there mean the whole
            batch (pass the Python int `1` for a single example). The default of a quarter of the
            batch comes from the sweep in `docs/results/`. Ignored unless `sam_mode="ksam"`.
        sam_adaptive (`bool`, *optional*, defaults to `False`):
            ASAM (Kwon et al. 2021): the scale-invariant ascent `e = rho * w^2 g / ||w g||`, with a
            larger `sam_rho` than plain SAM (ASAM's authors use about 10x).
        ksam_selection (`str`, *optional*, defaults to `"forward"`):
            How K-SAM ranks a batch. `"forward"` (the paper's): a forward pass without gradients over
            the whole batch. `"previous_loss"` (opt-in, ours): rank by each example's loss at its
            previous visit, which skips that forward whenever every example of the batch has been
            seen. The remembered score is relative (the loss over the mean loss of the batch it was
            measured in), so that examples seen at different times compare fairly. Batches with
            unseen examples (the first epoch) are ranked, and scored, by the forward pass; the kept
            examples' scores are refreshed from their ascent pass. Needs a stable example id per
            row in the training set (`ksam_id_column`). Experimental: it saves the ranking pass,
            but on our GLUE grid it scored below the forward ranking (and once collapsed to one
            class on MRPC); see `docs/performance.md` before using it.
        ksam_rank_without_dropout (`bool`, *optional*, defaults to `True`):
            Run K-SAM's ranking pass in eval mode: no dropout, so each example is ranked by its
            loss rather than by a noisy draw of it, and the pass is cheaper (no dropout masks, and
            fused attention kernels): on CPU it saves about a sixth of a K-SAM step (see
            `docs/performance.md`). Ascent and descent still run in train mode. `False` ranks in
            train mode as the paper does. On our GLUE grid (`docs/results/`, 3 seeds) the two
            agree within noise on RTE, CoLA, STS-B and SST-2; on MRPC train-mode ranking scored
            higher (73.4 against 67.5): set `False` where the paper's exact method matters more
            than the cost.
        ksam_id_column (`str`, *optional*, defaults to `"idx"`):
            The training-set column with each example's id (a non-negative integer, e.g. the row
            index, as GLUE's `idx`), used by `ksam_selection="previous_loss"` only. KSAMTrainer keeps
            this column of a `datasets.Dataset` for training though the model does not take it (for
            other datasets, set `remove_unused_columns=False` or have the collator pass it through).
        sam_sync_ascent (`bool`, *optional*, defaults to `False`):
            Multi-process training only: average the ascent gradient across processes before
            perturbing, so that every process uses the same perturbation (one all-reduce of the
            gradients per step). By default each process perturbs with its own shard's ascent
            gradient, as the original SAM does per device.
    """

    sam_mode: str = field(
        default="ksam",
        metadata={"help": "'ksam' (top-k SAM), 'sam' (full-batch SAM) or 'none' (plain Trainer step).",
                  "choices": list(SAM_MODES)},
    )
    sam_rho: float = field(default=0.05, metadata={"help": "SAM ascent radius rho (>= 0)."})
    ksam_k: Union[float, str] = field(
        default=0.25,
        metadata={"help": "Examples kept per batch by K-SAM: a fraction in (0, 1] or a count >= 1."},
    )
    sam_adaptive: bool = field(
        default=False, metadata={"help": "Use ASAM's scale-invariant ascent (e = rho w^2 g / ||w g||)."}
    )
    ksam_selection: str = field(
        default="forward",
        metadata={"help": "How K-SAM ranks a batch: 'forward' (a gradient-free forward pass) or "
                          "'previous_loss' (each example's loss at its previous visit).",
                  "choices": list(KSAM_SELECTIONS)},
    )
    ksam_rank_without_dropout: bool = field(
        default=True,
        metadata={"help": "Rank the batch in eval mode (no dropout): cheaper ranking pass. False: train mode."}
    )
    ksam_id_column: str = field(
        default="idx", metadata={"help": "Training-set column of example ids, for ksam_selection=previous_loss."}
    )
    sam_sync_ascent: bool = field(
        default=False,
        metadata={"help": "Average the ascent gradient across processes (one shared perturbation)."},
    )

    def __post_init__(self) -> None:
        validate_sam_fields(self)
        super().__post_init__()


@dataclass
class KSAMSeq2SeqConfig(KSAMConfig, Seq2SeqTrainingArguments):
    """`KSAMConfig` with the generation fields of `Seq2SeqTrainingArguments` (`predict_with_generate`, ...),
    for [`KSAMSeq2SeqTrainer`]."""


def validate_sam_fields(args: KSAMConfig) -> None:
    """Check and normalise the SAM fields in place; errors name the argument and the fix."""
    if args.sam_mode not in SAM_MODES:
        raise ValueError(f"`sam_mode`={args.sam_mode!r} is unknown: use one of {', '.join(SAM_MODES)}.")
    if args.sam_rho is None or not math.isfinite(float(args.sam_rho)) or args.sam_rho < 0:
        raise ValueError(f"`sam_rho`={args.sam_rho!r} must be a finite number >= 0 (e.g. 0.05).")
    args.sam_rho = float(args.sam_rho)
    args.ksam_k = parse_ksam_k(args.ksam_k)
    if args.ksam_selection not in KSAM_SELECTIONS:
        raise ValueError(
            f"`ksam_selection`={args.ksam_selection!r} is unknown: use one of {', '.join(KSAM_SELECTIONS)}.")
