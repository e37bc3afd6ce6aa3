"""`KSAMConfig`: the training arguments of `KSAMTrainer` (TrainingArguments plus the SAM knobs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from .rules import STEP_MODES
from .selection import SELECTION_RULES

SAM_MODES = tuple(STEP_MODES)
"""`sam_mode`'s choices, from the one registry of step modes (`rules.STEP_MODES`)."""
RANK_DTYPES = ("float32", "bfloat16")
TRUE_TEXTS, FALSE_TEXTS = ("true", "yes", "1"), ("false", "no", "0")


@dataclass
class KSAMConfig(TrainingArguments):
    r"""
    Configuration of [`KSAMTrainer`]: every [`~transformers.TrainingArguments`] field, plus:

    Parameters:
        sam_mode (`str`, *optional*, defaults to `"ksam"`):
            `"ksam"`: K-SAM (Ni et al. 2022): a forward pass without gradients gives each example's
            loss, and SAM's ascent and descent run on `ksam_k` examples chosen by `ksam_selection`.
            `"sam"`: SAM (Foret et al. 2021) on the whole batch (two forward and backward passes).
            `"momentum"`: Momentum-SAM (Becker et al. 2024): the gradient at `w - rho * m / ||m||`, m
            the base optimizer's first moment (AdamW's `exp_avg`, SGD's `momentum_buffer`); one
            forward and backward, no ascent pass. `"random_direction"`: the gradient at
            `w + rho * z / ||z||`, z a seeded Gaussian draw: the control that tells whether the
            direction of the perturbation matters. `"none"`: the stock `Trainer` step (the baseline).
        sam_rho (`float`, *optional*, defaults to `0.01`):
            Radius of the ascent step: the weights move by `rho * g / ||g||` before the descent
            gradient is taken. `0` makes the step a plain gradient step on the kept examples.
        ksam_k (`float`, *optional*, defaults to `0.25`):
            Examples K-SAM keeps from each (per-device, per-micro-) batch, as Transformers reads
            `logging_steps`: below 1 a fraction of the batch (rounded up), 1 and above a count
            (whole numbers only). A count above a short last batch keeps all of it. With
            `ksam_loss_share`, the least number kept.
        ksam_selection (`str`, *optional*, defaults to `"top_k_ascent"`):
            Which examples K-SAM keeps. `"top_k_ascent"`: the ascent on the k highest losses (the
            perturbation is taken where the loss is high), the descent on the whole batch at w + e:
            SAM's objective with an ascent on k examples, so a step costs more than the base
            optimizer's and less than SAM's. `"random_ascent"`: the ascent on k labelled examples drawn
            uniformly at random (seeded by `seed`), the descent on the whole batch, and no ranking
            pass (Brock et al. 2021; Bahri et al. 2022). `"loss_sampled"`: both passes on k examples sampled
            with probabilities increasing with their loss, the descent weighted by the inverse of
            each probability (an unbiased estimate of the batch's mean loss): below the base
            optimizer's cost, but each step learns from k examples only. `"top_k"`: the paper's rule,
            the k highest losses for both passes; it minimises the mean of the largest losses, not
            the mean loss, and can hold a classifier at the uniform predictor. Measurements and
            why: `docs/selection.md`.
        ksam_uniform_mix (`float`, *optional*, defaults to `0.5`):
            `"loss_sampled"` only: the share of the sampling probability spread evenly over the
            batch (the rest goes in proportion to the losses). It bounds an example's weight at
            `batch / (ksam_uniform_mix * k)`; `1` samples uniformly. Above 0: at 0 an example
            with zero loss could never be drawn (the estimate would be biased) and the weights are
            unbounded; a small value such as 0.05 samples almost by loss alone.
        ksam_loss_share (`float`, *optional*):
            Adaptive k: keep, per batch, as many examples, taken in the order the selection ranks
            them (highest per-example loss first), as carry this share of the batch's total loss
            (at least `ksam_k`), so a batch whose loss sits in a few examples costs less. Unset: a
            fixed `ksam_k`.
        sam_adaptive (`bool`, *optional*, defaults to `False`):
            ASAM (Kwon et al. 2021): the scale-invariant ascent `e = rho * w^2 g / ||w g||`, with a
            larger `sam_rho` than plain SAM (ASAM's authors use about 10x).
        ksam_rank_without_dropout (`bool`, *optional*, defaults to `True`):
            Run K-SAM's ranking pass in eval mode: no dropout, so each example is ranked by its loss
            rather than a noisy draw of it, and the pass is cheaper. Ascent and descent still run in
            train mode. `False` ranks in train mode, as the paper does.
        ksam_rank_dtype (`str`, *optional*, defaults to `"float32"`):
            `"bfloat16"` runs K-SAM's ranking pass under bf16 autocast, where the device computes in
            bf16 (CUDA with bf16 support; a CPU with AVX-512 bf16 or AMX: elsewhere a one-line warning
            and fp32); only the ranking, whose losses merely order the examples. How often the kept
            set differs from fp32's, and what it saves: `docs/performance.md`.
        sam_sync_ascent (`bool`, *optional*, defaults to `False`):
            Multi-process training only: average the ascent gradient across processes before
            perturbing, so that every process uses the same perturbation (one all-reduce of the
            gradients per step). By default each process perturbs with its own shard's ascent
            gradient, as the original SAM does per device.
        sam_every_n_steps (`int`, *optional*, defaults to `1`):
            Scheduled SAM, any perturbing mode: perturb optimizer steps n, 2n, 3n, ... only; the
            others are plain steps of the base optimizer (one forward and backward, no ranking).
        sam_step_share (`float`, *optional*, defaults to `1.0`):
            Scheduled SAM: perturb each optimizer step with this probability, in (0, 1] (RST, Zhao
            et al. 2022), drawn from `seed` and the step's number: the same on every process and
            micro-batch, and after a resume.
        sam_group_size (`int`, *optional*):
            m-sharpness (Foret et al. 2021's m; Andriushchenko and Flammarion 2022): the micro-batch
            cut into groups of m consecutive examples, each with its own ascent, perturbation and
            descent at its own w + e (a selection rule picks its rows within each group); the
            descents combine exactly as the micro-batches of one accumulated batch would, so SAM
            with groups of m is SAM with micro-batches of m and B / m times the accumulation. Costs
            B / m smaller passes instead of one. For the modes with an ascent (`sam`, `ksam`).
            Unset: one perturbation per micro-batch.
        bi_lora_rank (`int`, *optional*, defaults to `8`):
            `sam_mode="bi_lora"`: the rank of the auxiliary adapter (the paper's 8).
        bi_lora_learning_rate (`float`, *optional*):
            `sam_mode="bi_lora"`: the auxiliary adapter's ascent learning rate, following the main
            schedule (default: `learning_rate`, as the paper).
        sam_start_fraction (`float`, *optional*, defaults to `0.0`):
            Scheduled SAM: plain steps until this fraction of the run's optimizer steps, in [0, 1),
            then SAM (late-phase SAM, Zhou et al., ICLR 2025). The three schedules combine: a step is
            perturbed when all of them allow it.
    """

    sam_mode: str = field(
        default="ksam",
        metadata={"help": "; ".join(f"'{mode.name}': {mode.help}" for mode in STEP_MODES.values()) + ".",
                  "choices": list(SAM_MODES)},
    )
    sam_rho: float = field(default=0.01, metadata={"help": "SAM ascent radius rho (>= 0)."})
    ksam_k: float = field(
        default=0.25,
        metadata={"help": "Examples kept per batch by K-SAM: below 1 a fraction, 1 and above a count."},
    )
    ksam_selection: str = field(
        default="top_k_ascent",
        metadata={"help": "Which examples K-SAM keeps: 'top_k_ascent' (ascent on the top k, descent on the "
                          "whole batch), 'random_ascent' (ascent on k drawn at random, descent on the whole batch, "
                          "no ranking pass), 'loss_sampled' (both passes on k sampled by loss, unbiased descent; "
                          "cheaper, learns from k per step) or 'top_k' (the paper's k highest losses).",
                  "choices": list(SELECTION_RULES)},
    )
    ksam_uniform_mix: float = field(
        default=0.5, metadata={"help": "loss_sampled: share of the sampling probability spread evenly (0-1]."})
    ksam_loss_share: Optional[float] = field(
        default=None,
        metadata={"help": "Adaptive k: keep as many examples, highest loss first, as carry this share (0-1] of "
                          "the batch's loss."})
    sam_adaptive: bool = field(
        default=False, metadata={"help": "Use ASAM's scale-invariant ascent (e = rho w^2 g / ||w g||)."}
    )
    ksam_rank_without_dropout: bool = field(
        default=True,
        metadata={"help": "Rank the batch in eval mode (no dropout): cheaper ranking pass. False: train mode."}
    )
    sam_sync_ascent: bool = field(
        default=False,
        metadata={"help": "Average the ascent gradient across processes (one shared perturbation)."},
    )
    ksam_rank_dtype: str = field(
        default="float32",
        metadata={"help": "Precision of K-SAM's ranking pass: 'float32' or 'bfloat16' (autocast, where the device "
                          "has bf16).", "choices": list(RANK_DTYPES)})
    sam_every_n_steps: int = field(
        default=1, metadata={"help": "Scheduled SAM: perturb every n-th optimizer step only (>= 1)."})
    sam_step_share: float = field(
        default=1.0, metadata={"help": "Scheduled SAM: perturb a seeded random share of the optimizer steps, (0, 1]."})
    sam_start_fraction: float = field(
        default=0.0, metadata={"help": "Scheduled SAM: plain steps until this fraction of training, [0, 1)."})
    bi_lora_rank: int = field(default=8, metadata={"help": "bi_lora: rank of the auxiliary adapter (>= 1)."})
    bi_lora_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "bi_lora: the auxiliary adapter's ascent learning rate (default: learning_rate)."})
    sam_group_size: Optional[int] = field(
        default=None,
        metadata={"help": "m-sharpness: one perturbation per group of m examples of the micro-batch (unset: one "
                          "per micro-batch); sam and ksam only."})

    def __post_init__(self) -> None:
        validate_sam_fields(self)
        super().__post_init__()

    @staticmethod
    def sam_field_names() -> list[str]:
        """The fields `KSAMConfig` adds to `TrainingArguments`, in order."""
        base = {f.name for f in fields(TrainingArguments)}
        return [f.name for f in fields(KSAMConfig) if f.name not in base]

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments) -> "KSAMConfig":
        """A `cls` with the defaults of the SAM fields and every field of `args` (read directly:
        `to_dict` masks every field whose name ends in `_token`)."""
        accepted = {f.name for f in fields(cls) if f.init}
        return cls(**{f.name: getattr(args, f.name) for f in fields(args) if f.init and f.name in accepted})


@dataclass
class KSAMSeq2SeqConfig(KSAMConfig, Seq2SeqTrainingArguments):
    """`KSAMConfig` with the generation fields of `Seq2SeqTrainingArguments` (`predict_with_generate`, ...),
    for [`KSAMSeq2SeqTrainer`]."""


def as_bool(name: str, value: Any) -> bool:
    """A bool field's value; text from a JSON file is read as the command line reads it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_TEXTS + FALSE_TEXTS:
        return value.strip().lower() in TRUE_TEXTS
    raise ValueError(f"`{name}`={value!r} is not a boolean: use true or false.")


def parse_ksam_k(value: Any) -> float:
    """`ksam_k` as a number: below 1 a fraction of the batch, 1 and above a whole count."""
    if isinstance(value, bool):
        raise ValueError(f"`ksam_k` must be a number, got the bool {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`ksam_k`={value!r} is not a number: give a fraction of the batch below 1 "
                         "(e.g. 0.25) or a whole number of examples (e.g. 8).") from None
    if not math.isfinite(number) or number <= 0 or (number >= 1 and not number.is_integer()):
        raise ValueError(f"`ksam_k`={value!r} is neither a fraction in (0, 1) nor a whole count >= 1: "
                         "use e.g. 0.25 for a quarter of each batch, or 8 for eight examples.")
    return int(number) if number >= 1 else number


def share(value: Any, name: str, zero_allowed: bool) -> float:
    """A fraction field: a number in [0, 1] (or (0, 1])."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (0 <= number <= 1) or (number == 0 and not zero_allowed):
        interval = "[0, 1]" if zero_allowed else "(0, 1]"
        raise ValueError(f"`{name}`={value!r} must be a number in {interval} (e.g. 0.5).")
    return number


def validate_sam_fields(args: KSAMConfig) -> None:
    """Check and normalise the SAM fields in place; errors name the argument and the fix."""
    if args.sam_mode not in SAM_MODES:
        raise ValueError(f"`sam_mode`={args.sam_mode!r} is unknown: use one of {', '.join(SAM_MODES)}.")
    try:
        rho = float(args.sam_rho)
    except (TypeError, ValueError):
        rho = math.nan
    if not math.isfinite(rho) or rho < 0:
        raise ValueError(f"`sam_rho`={args.sam_rho!r} must be a finite number >= 0 (e.g. 0.05).")
    args.sam_rho = rho
    args.ksam_k = parse_ksam_k(args.ksam_k)
    if args.ksam_selection not in SELECTION_RULES:
        raise ValueError(f"`ksam_selection`={args.ksam_selection!r} is unknown: use one of "
                         f"{', '.join(SELECTION_RULES)}.")
    args.ksam_uniform_mix = share(args.ksam_uniform_mix, "ksam_uniform_mix", zero_allowed=False)
    if args.ksam_loss_share is not None:
        args.ksam_loss_share = share(args.ksam_loss_share, "ksam_loss_share", zero_allowed=False)
    for name in ("sam_adaptive", "ksam_rank_without_dropout", "sam_sync_ascent"):
        setattr(args, name, as_bool(name, getattr(args, name)))
    if args.ksam_rank_dtype not in RANK_DTYPES:
        raise ValueError(f"`ksam_rank_dtype`={args.ksam_rank_dtype!r} is unknown: use one of {', '.join(RANK_DTYPES)}.")
    if args.ksam_selection == "random_ascent" and not STEP_MODES[args.sam_mode].selects_rows:
        raise ValueError(f"`ksam_selection`='random_ascent' needs `sam_mode`='ksam' (got {args.sam_mode!r}): it picks "
                         "K-SAM's ascent rows. Set sam_mode='ksam', or drop ksam_selection.")
    every = args.sam_every_n_steps
    if isinstance(every, bool) or not isinstance(every, (int, float, str)) or not str(every).strip().isdigit() \
            or int(every) < 1:
        raise ValueError(f"`sam_every_n_steps`={every!r} must be a whole number >= 1 (1: every step; 2: every "
                         "second step).")
    args.sam_every_n_steps = int(every)
    args.sam_step_share = share(args.sam_step_share, "sam_step_share", zero_allowed=False)
    try:
        start = float(args.sam_start_fraction)
    except (TypeError, ValueError):
        start = math.nan
    if not 0 <= start < 1:
        raise ValueError(f"`sam_start_fraction`={args.sam_start_fraction!r} must be in [0, 1) (e.g. 0.7 for SAM on "
                         "the last 30 % of the steps); at 1 no step would be perturbed.")
    args.sam_start_fraction = start
    if STEP_MODES[args.sam_mode].lora:
        if args.sam_rho <= 0:
            raise ValueError(f"`sam_rho`={args.sam_rho!r} must be > 0 for sam_mode={args.sam_mode!r}: it is "
                             + ("the auxiliary adapter's radius (the paper's 0.05)." if args.sam_mode == "bi_lora" else
                                "the noise's sigma (the paper's 0.05)."))
    rank = args.bi_lora_rank
    if isinstance(rank, bool) or not str(rank).strip().isdigit() or int(rank) < 1:
        raise ValueError(f"`bi_lora_rank`={rank!r} must be a whole number >= 1 (the paper's 8).")
    args.bi_lora_rank = int(rank)
    if args.bi_lora_learning_rate is not None and not float(args.bi_lora_learning_rate) > 0:
        raise ValueError(f"`bi_lora_learning_rate`={args.bi_lora_learning_rate!r} must be > 0, or unset for learning_rate.")
    group = args.sam_group_size
    if group is not None:
        if isinstance(group, bool) or not str(group).strip().isdigit() or int(group) < 1:
            raise ValueError(f"`sam_group_size`={group!r} must be a whole number >= 1 (e.g. 4: one perturbation per "
                             "4 examples), or unset for one per micro-batch.")
        args.sam_group_size = int(group)
        direction = STEP_MODES[args.sam_mode].direction
        if direction is None or not direction.needs_ascent:
            raise ValueError(f"`sam_group_size` needs a mode whose perturbation comes from an ascent (sam or ksam); "
                             f"sam_mode={args.sam_mode!r} has none to split into groups. Drop sam_group_size.")
