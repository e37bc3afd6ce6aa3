"""`KSAMTrainer`: a `transformers.Trainer` whose training step is SAM or K-SAM.

Only `training_step` (and `log`, to report the step's statistics; with a `watch_column`, the two
methods that keep that column out of the model's inputs) is overridden: the Trainer still
does the data loading, gradient accumulation, mixed precision, clipping, optimizer step,
scheduling, logging and checkpointing, so every Trainer feature keeps working.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.profiler import record_function
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checks import check_finite_weights, check_model_loss, check_per_example_losses, own_and_standard_loss
from .config import KSAMConfig, KSAMSeq2SeqConfig
from .per_example_loss import (TOKEN_LEVEL_HEADS, PerExampleLoss, head_kind, label_counts, label_keys,
                               mean_max_probability, per_example_loss_for)
from .packing import is_packed, per_sequence_losses, repack, sequence_count, sequence_label_counts
from .rows import select_rows, trim_padding, used_lengths
from .perturbation import Perturbation, StepContext
from .lora_sam import CHECKPOINT_FILE, BiLoRA, FlatLoRA, LoraSam, lora_layers
from .rules import PLAIN_STEP, STEP_MODES, StepRule, step_rule
from .schedule import SamSchedule
from .selection import Ranking, Selected, SelectionRule, adaptive_k, resolve_k, selection_rule
from .sharpness import ascent_gradient, ascent_norm, gradient_to_epsilon_, weights_at_w_plus_e
from .statistics import StepStatistics

logger = logging.getLogger(__name__)

EXAMPLE_LEVEL_HEADS = ("sequence_classification", "multiple_choice", "question_answering")
PADDING_AGNOSTIC_HEADS = TOKEN_LEVEL_HEADS + ("sequence_classification", "multiple_choice")
"""Heads whose loss does not change when trailing padding is cut (not QA: its softmax runs over
every position, padding included, as the models compute it)."""
PACKABLE_HEADS = ("causal_lm", "masked_lm", "token_classification")
"""Token-level heads whose examples can be sequences of a packed (padding-free) batch."""


@dataclass
class RankedBatch:
    """The ranking pass over a micro-batch: per-example losses, and the batch's mean loss (None
    when the ranking did not measure it)."""

    ranking: Ranking
    loss: Optional[torch.Tensor]


class SharpnessAwareStepMixin:
    """The SAM / K-SAM training step, mixed into a `Trainer` class (see `KSAMTrainer`)."""

    config_class: type = KSAMConfig

    def __init__(self, *args: Any, per_example_loss_func: Optional[PerExampleLoss] = None,
                 watch_column: Optional[str] = None, **kwargs: Any):
        args = list(args)
        given = args[1] if len(args) > 1 else kwargs.get("args")
        converted = self._as_config(given)
        if len(args) > 1:
            args[1] = converted
        else:
            kwargs["args"] = converted
        super().__init__(*args, **kwargs)
        self.per_example_loss_func = per_example_loss_func
        self._user_loss = per_example_loss_func is not None
        self._head: Optional[str] = None
        self._single_label = False  # one class per example: the ranking pass logs its confidence
        self._loss_checked = True  # the model's own loss is compared with the standard once (known heads)
        self._takes_return_dict = False  # config.return_dict=False: ask for outputs as a dataclass
        self._accumulated_items = 0.0  # examples / tokens behind the gradient in p.grad this step
        self.current_gradient_accumulation_steps = 1  # the training loop sets it; direct calls need it
        self.watch_column = watch_column  # a batch column the model does not take, watched (see `_watch`)
        self.sam_statistics = StepStatistics(watch_column)
        self.selection = selection_rule(self.args.ksam_selection, self.args.ksam_uniform_mix)
        self.rule: Optional[StepRule] = step_rule(self.args.sam_mode, self.selection)
        self.schedule = SamSchedule(self.args.sam_every_n_steps, self.args.sam_step_share,
                                    self.args.sam_start_fraction, self.args.seed)
        self._micro_batch = 0  # index of the micro-batch within the optimizer step
        self._group: Optional[int] = None  # m-SAM: index of the group within the micro-batch
        self._row_lengths: Optional[torch.Tensor] = None  # the rows' used lengths, on the host (`_to_host`)
        self._check_sam_setup()
        self.lora_sam: Optional[LoraSam] = self._lora_sam() if STEP_MODES[self.args.sam_mode].lora else None
        if self.model is not None:
            self._setup_head(self.model)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def _as_config(cls, args: Optional[TrainingArguments]) -> KSAMConfig:
        """The trainer's config: given, converted once from a plain `TrainingArguments` (with the
        SAM fields' defaults), or the defaults."""
        if args is None:
            return cls.config_class(output_dir="trainer_output")
        if isinstance(args, cls.config_class):
            return args
        return cls.config_class.from_training_arguments(args)

    def _lora_sam(self) -> LoraSam:
        """Bi-LoRA's auxiliary adapter or Flat-LoRA's noise, hooked onto the model's LoRA layers."""
        layers = lora_layers(self.model, self.args.sam_mode)
        if self.args.sam_mode == "flat_lora":
            return FlatLoRA(layers, sigma=self.args.sam_rho, seed=self.args.seed)
        lr = self.args.bi_lora_learning_rate or self.args.learning_rate
        adapter = BiLoRA(layers, self.args.bi_lora_rank, self.args.sam_rho, lr, self.args.seed,
                         betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon)
        self.add_callback(_AuxiliaryAscent(self))
        return adapter

    def _check_sam_setup(self) -> None:
        if self.args.sam_mode == "none":
            return
        if STEP_MODES[self.args.sam_mode].lora and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError(f"`sam_mode`={self.args.sam_mode!r} does not support DeepSpeed or FSDP yet: train the LoRA "
                             "model with DDP (accelerate launch / torchrun), or use sam_mode='sam'.")
        if self.compute_loss_func is not None and self.rule is not None:
            raise ValueError(
                "`compute_loss_func` cannot be combined with `sam_mode`="
                f"{self.args.sam_mode!r}: it returns a loss already reduced over the batch, and K-SAM needs "
                "one loss per example. Pass `per_example_loss_func=` (outputs, inputs) -> (loss sums, "
                "item counts) instead, or set `sam_mode='none'`."
            )
        devices = set(map(str, (getattr(self.model, "hf_device_map", None) or {}).values()))
        if len(devices) > 1:
            raise ValueError(
                f"`sam_mode`={self.args.sam_mode!r} cannot train a model split across devices by `device_map` "
                f"({', '.join(sorted(devices))}): load it on one device (no `device_map`) and use DDP for "
                "several GPUs, or set `sam_mode='none'`.")
        fsdp_version = getattr(getattr(self.accelerator.state, "fsdp_plugin", None), "fsdp_version", 1)
        if self.is_deepspeed_enabled or (self.is_fsdp_enabled and fsdp_version != 2):
            raise ValueError(
                f"`sam_mode`={self.args.sam_mode!r} does not support DeepSpeed or FSDP1: use FSDP2 "
                "(`--fsdp full_shard` with `fsdp_config` {\"version\": 2}) to shard the model, DDP "
                "(`accelerate launch` / `torchrun` without a DeepSpeed or FSDP config), or `sam_mode='none'`.")
        if self.is_fsdp_enabled:
            logger.warning(f"sam_mode={self.args.sam_mode!r} under FSDP2: the sharded step is tested on CPU processes "
                           "(gloo) outside the Trainer, and the Trainer's FSDP2 path on one GPU (nothing sharded); it "
                           "has not run sharded across GPUs yet. See the README's multi-process section.")
        if self.is_fsdp_enabled and self.args.gradient_accumulation_steps > 1:
            raise ValueError(
                f"`sam_mode`={self.args.sam_mode!r} under FSDP2 does not support gradient accumulation yet "
                f"(gradient_accumulation_steps={self.args.gradient_accumulation_steps}): FSDP2 keeps the "
                "unsynced micro-batches' gradients outside `p.grad`, where the ascent would add to them. Set "
                "gradient_accumulation_steps=1 (a larger per-device batch), or use DDP.")

    def _setup_head(self, model: nn.Module) -> None:
        """Find the per-example loss for `model`; make the baseline's accumulation scaling right."""
        unwrapped = self.accelerator.unwrap_model(model)
        self._head = head_kind(unwrapped)
        self._takes_return_dict = getattr(getattr(unwrapped, "config", None), "return_dict", True) is False
        if self._head in EXAMPLE_LEVEL_HEADS:
            # These heads reduce their loss over their own micro-batch and ignore
            # `num_items_in_batch`, so the Trainer must divide by the accumulation steps.
            self.model_accepts_loss_kwargs = False
        if self.rule is None or self.per_example_loss_func is not None:  # the stock step needs no per-example loss
            return
        if self._head is None:
            raise ValueError(
                f"{type(unwrapped).__name__} has no head whose per-example loss ksam_hf knows "
                "(sequence/token classification, causal/masked LM, seq2seq, multiple choice, question "
                "answering). Pass `per_example_loss_func=` to KSAMTrainer: a callable "
                "(model outputs, inputs) -> (per-example loss sums, per-example item counts)."
            )
        expected = list(label_keys(self._head))
        if list(self.label_names or []) != expected:
            raise ValueError(
                f"`label_names`={self.label_names} do not match the targets {expected} of "
                f"{type(unwrapped).__name__}, so the per-example loss cannot be derived. Leave "
                "`label_names` unset, or pass `per_example_loss_func=`."
            )
        self.per_example_loss_func = per_example_loss_for(
            unwrapped, self._head, label_smoothing=self.args.label_smoothing_factor)
        self._standard_loss = per_example_loss_for(unwrapped, self._head)
        self._loss_checked = self._head == "question_answering"  # its ignored positions reduce otherwise
        self._single_label = self._head == "multiple_choice" or (
            self._head == "sequence_classification" and unwrapped.config.num_labels > 1
            and unwrapped.config.problem_type in (None, "single_label_classification"))

    # ----------------------------------------------------------------------------- the step
    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Optional[Union[torch.Tensor, int]] = None) -> torch.Tensor:
        """One SAM / K-SAM micro-batch: rank, ascend on the kept examples, descend at w + e.

        The descent gradient is added to `p.grad` (earlier accumulation micro-batches' gradients
        stay there), so that after the last micro-batch `p.grad` is the gradient of one batch of
        the accumulated size. Returns the whole micro-batch's loss, scaled for logging as the
        Trainer scales its own.
        """
        if self.rule is None:  # the stock step; Bi-LoRA's and Flat-LoRA's terms join it through their hooks
            if self.lora_sam is None:
                return super().training_step(model, inputs, num_items_in_batch)
            if isinstance(self.lora_sam, FlatLoRA):
                self.lora_sam.begin(self.state.global_step, self.state.max_steps)
            with self.lora_sam.active():
                return super().training_step(model, inputs, num_items_in_batch)
        if self.per_example_loss_func is None:
            self._setup_head(model)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        watched = inputs.get(self.watch_column) if self.watch_column is not None else None
        inputs = self._with_decoder_inputs(model, self._prepare_inputs(inputs))

        rule = self.rule if self.schedule.perturbs(self.state.global_step, self.state.max_steps) else PLAIN_STEP
        self._row_lengths = None  # an earlier micro-batch's lengths must never cut this one's rows
        groups = self._groups(inputs, watched) if rule.direction.needs_ascent else None
        if groups is None:
            return self._step_rows(model, inputs, rule, watched, last=True)
        # m-sharpness: each group of m examples its own ascent, perturbation and descent at its own w + e;
        # the descents combine as the micro-batches of one accumulated batch would (the last one syncs).
        losses, sizes = [], []
        for number, (rows, watched_rows) in enumerate(groups):
            self._group = number
            last = number == len(groups) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                losses.append(self._step_rows(model, rows, rule, watched_rows, last=last))
            sizes.append(self._batch_size(rows, None))
        self._group = None
        return sum(loss * size for loss, size in zip(losses, sizes)) / sum(sizes)

    def _groups(self, inputs: dict[str, Any], watched: Any) -> Optional[list[tuple[dict[str, Any], Any]]]:
        """The micro-batch cut into groups of `sam_group_size` consecutive examples (the last one
        shorter), each with its watched values; None when no grouping applies (unset, or a
        micro-batch of at most m examples)."""
        size = self.args.sam_group_size
        if size is None:
            return None
        if is_packed(inputs):
            raise ValueError("`sam_group_size` cannot split a packed (padding-free) batch into groups of examples: "
                             "train without packing, or leave sam_group_size unset.")
        batch_size = self._batch_size(inputs, None)
        if batch_size <= size:
            return None
        lengths = self._padding_lengths(inputs)  # one copy to the host cuts every group's padding
        self._row_lengths = None if lengths is None else lengths.cpu()
        groups = []
        for start in range(0, batch_size, size):
            indices = torch.arange(start, min(start + size, batch_size))
            rows = self._rows(inputs, indices, batch_size)
            groups.append((rows, None if watched is None else watched[start:start + size]))
        return groups

    def _step_rows(self, model: nn.Module, inputs: dict[str, Any], rule: StepRule, watched: Any,
                   last: bool) -> torch.Tensor:
        """Rank, select, ascend and descend on these rows (the micro-batch, or one group of it);
        `last`: the descent that ends the micro-batch."""
        ranked, self._row_lengths = None, None
        if rule.needs_ranking:
            with record_function("ksam/rank"):
                ranked = self.rank_batch(model, inputs)
        selected = self._select(rule.rows, ranked, inputs)
        if selected.empty:  # no example in these rows has a label
            self.sam_statistics.add_step(perturbed=False)
            if last:
                self._join_other_processes(model, inputs)
                self._finish_micro_batch(0.0)
            return self._logged_loss(ranked, None, torch.zeros(()))
        ascent_rows = descent_rows = inputs  # the whole batch
        if not selected.whole_batch:
            batch_size = self._batch_size(inputs, ranked)
            if watched is not None:
                self._watch(watched, selected, batch_size)
            ascent_rows = self._rows(inputs, selected.ascent, batch_size)
            descent_rows = ascent_rows if selected.descent is selected.ascent else \
                self._rows(inputs, selected.descent, batch_size)
        with record_function("ksam/ascent"):
            if rule.direction.needs_ascent:
                perturbation = self._ascend(model, ascent_rows, whole_batch=selected.whole_batch)
            else:
                perturbation = rule.direction.perturbation(
                    [p for p in model.parameters() if p.requires_grad],
                    StepContext(self.optimizer, self.state.global_step, self.args.sam_rho, self.args.seed))
        # A step the schedule leaves plain, momentum's first step (no moment yet), a skipped ascent: unperturbed.
        self.sam_statistics.add_step(perturbed=perturbation.epsilon is not None)
        with self._perturbed(model, perturbation), record_function("ksam/descent"):
            descent_loss = self._descend(model, descent_rows, selected, finish=last)
        return self._logged_loss(ranked, perturbation if selected.whole_batch else None, descent_loss)

    @contextlib.contextmanager
    def _perturbed(self, model: nn.Module, perturbation: Perturbation):
        """The weights at w + e inside, w after. Sharded (FSDP2): e moves the shards, so weights that
        FSDP2 still holds gathered (the root's, after a forward without a backward) are released on
        both sides, and the next forward gathers them from the shards."""
        sharded = isinstance(model, FSDPModule) and perturbation.epsilon is not None
        if sharded:
            model.reshard()
        try:
            with weights_at_w_plus_e(perturbation.params, perturbation.epsilon):
                yield
        finally:
            if sharded:
                model.reshard()

    def rank_batch(self, model: nn.Module, inputs: dict[str, Any]) -> RankedBatch:
        """Each example's loss, from a forward pass without gradients (in eval mode unless
        `ksam_rank_without_dropout=False`). The ranking hook: override to rank otherwise."""
        try:
            model.train(not self.args.ksam_rank_without_dropout)
            with torch.no_grad(), self._ranking_precision():
                outputs, (sums, counts) = self._forward(model, inputs)
        finally:
            model.train()
            if isinstance(model, FSDPModule):
                # FSDP2 keeps the root's gathered weights after a forward, for a backward that a pass
                # without gradients never runs; the ascent that follows then gets wrong gradients
                # (tests/distributed/test_fsdp.py fails without this), not only stale weights.
                model.reshard()
        self.sam_statistics.add_confidence(
            mean_max_probability(outputs, counts) if self._is_single_label(inputs) else None)
        sums, counts = self._to_host(sums.detach().float(), counts.detach().float(), inputs=inputs)
        return RankedBatch(Ranking(sums / counts.clamp_min(1), counts),
                           sums.sum() / counts.sum().clamp_min(1))

    def _ranking_precision(self):
        """bf16 autocast for the ranking pass with `ksam_rank_dtype="bfloat16"` where the device
        computes in bf16; otherwise (and with a one-line warning, once) fp32."""
        if self.args.ksam_rank_dtype != "bfloat16":
            return contextlib.nullcontext()
        device = self.args.device
        available = torch.cuda.is_bf16_supported() if device.type == "cuda" else \
            device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if not available:
            if not getattr(self, "_warned_rank_dtype", False):
                self._warned_rank_dtype = True
                logger.warning(f"ksam_rank_dtype='bfloat16': {device.type} computes no bf16 here; ranking in float32.")
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def _is_single_label(self, inputs: dict[str, Any]) -> bool:
        """Whether the batch is single-label classification, for the health signal. With
        `problem_type` unset, labels that are not `long` / `int` make a classifier multi-label (as
        Transformers decides in the loss), where the top class's softmax probability means nothing."""
        labels = inputs.get("labels")
        return self._single_label and not (torch.is_tensor(labels) and labels.dtype not in (torch.long, torch.int))

    def _select(self, rule: Optional[SelectionRule], ranked: Optional[RankedBatch],
                inputs: dict[str, Any]) -> Selected:
        """Apply the selection rule: the whole batch without one (no label count is read); an empty
        `Selected` when no example has a label. A rule without a ranking pass sees the label counts
        read from the inputs."""
        if rule is None:
            return Selected.everything()
        ranking = ranked.ranking if ranked is not None else self._unranked(inputs)
        labelled = int(ranking.labelled.sum())
        if labelled == 0:
            self.sam_statistics.add_unlabelled()
            return Selected.nothing()
        k = resolve_k(self.args.ksam_k, ranking.counts.numel())
        if self.args.ksam_loss_share is not None:
            k = adaptive_k(ranking, self.args.ksam_loss_share, floor=k)
        selected = rule.select(ranking, min(k, labelled), self._step_generator() if rule.seeded_by_step else None)
        self.sam_statistics.add_selection(selected)
        return selected

    def _watch(self, watched: Any, selected: Selected, batch_size: int) -> None:
        """Record the watched column's mean over the kept (ascent) rows and over the batch: e.g. the
        share of examples with a flipped label among those a rule aims its ascent at."""
        if not torch.is_tensor(watched) or watched.dim() != 1 or watched.numel() != batch_size:
            raise ValueError(f"`watch_column`={self.watch_column!r} must hold one number per example of the batch "
                             f"({batch_size} here; packed batches have none), got "
                             f"{tuple(watched.shape) if torch.is_tensor(watched) else type(watched).__name__}.")
        values = watched.detach().float().cpu()
        self.sam_statistics.add_watched(float(values[selected.ascent.cpu()].mean()), float(values.mean()))

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's, without the watched column (the model does not take it)."""
        if self.watch_column is not None and self.watch_column in inputs:
            inputs = {key: value for key, value in inputs.items() if key != self.watch_column}
        return super()._prepare_inputs(inputs)

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the watched column in the batches (the Trainer drops columns the model does not take)."""
        super()._set_signature_columns_if_needed()
        if self.watch_column is not None and self.watch_column not in self._signature_columns:
            self._signature_columns.append(self.watch_column)

    def _unranked(self, inputs: dict[str, Any]) -> Ranking:
        """The batch's label counts without a forward pass (every example counted as labelled where
        only the loss could tell), with scores of zero."""
        if self._user_loss:
            counts = None
        elif is_packed(inputs):
            counts = sequence_label_counts(inputs, shift=self._head == "causal_lm") \
                if self._head in PACKABLE_HEADS and torch.is_tensor(inputs.get("labels")) else None
        else:
            counts = label_counts(inputs, self._head)
        if counts is None:
            counts = torch.ones(self._batch_size(inputs, None))
        (counts,) = self._to_host(counts.float(), inputs=inputs)
        return Ranking(torch.zeros_like(counts), counts)

    def _padding_lengths(self, inputs: dict[str, Any]) -> Optional[torch.Tensor]:
        """Each row's used length on the device, where `_rows` cuts padding by it (None elsewhere)."""
        if self._head in PADDING_AGNOSTIC_HEADS and not self._user_loss and self._head != "seq2seq_lm" \
                and not is_packed(inputs):
            return used_lengths(inputs)
        return None

    def _to_host(self, *values: torch.Tensor, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """`values` (one number per example) on the host in one copy, with each row's used length
        where the padding cut can use it (kept in `_row_lengths` for `_rows`): one synchronisation."""
        lengths = self._padding_lengths(inputs)
        if lengths is not None and lengths.shape[0] != values[0].shape[0]:
            lengths = None
        stacked = torch.stack([v.to(values[0].device) for v in values]
                              + ([lengths.to(values[0].device, values[0].dtype)] if lengths is not None else []))
        host = stacked.cpu()
        self._row_lengths = host[-1].long() if lengths is not None else None
        return tuple(host[: len(values)])

    @staticmethod
    def _batch_size(inputs: dict[str, Any], ranked: Optional[RankedBatch]) -> int:
        """Examples in the micro-batch: as ranked, else the rows (packed: the sequences) of its inputs."""
        if ranked is not None:
            return ranked.ranking.counts.numel()
        if is_packed(inputs):
            return sequence_count(inputs)
        return next(len(v) for v in inputs.values() if torch.is_tensor(v) and v.dim() > 0)

    def _step_generator(self) -> torch.Generator:
        """A generator seeded by the run's seed, the optimizer step, the micro-batch and the process:
        draws that differ per micro-batch and process, and that a resumed run repeats."""
        key = [self.args.seed, self.state.global_step, self._micro_batch, self.accelerator.process_index]
        if self._group is not None:  # m-SAM: each group its own draw
            key.append(self._group)
        return torch.Generator().manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))

    def _rows(self, inputs: dict[str, Any], indices: torch.Tensor, batch_size: int) -> dict[str, Any]:
        """The examples `indices` of the batch: its rows without the padding none of them uses, or
        a packed batch's sequences packed again."""
        if is_packed(inputs):
            return repack(inputs, indices)
        if indices.numel() == batch_size:  # every row (indices are in batch order): nothing to cut
            return inputs
        rows = select_rows(inputs, indices, batch_size)
        if self._head in PADDING_AGNOSTIC_HEADS and not self._user_loss:
            known = None if self._row_lengths is None or self._row_lengths.numel() != batch_size else \
                int(self._row_lengths[indices.cpu()].max())
            rows = trim_padding(rows, decoder_labels=self._head == "seq2seq_lm", length=known)
        return rows

    def _ascend(self, model: nn.Module, rows: dict[str, Any], whole_batch: bool = False) -> Perturbation:
        """The ascent gradient of the rows' mean loss, turned into e (not yet applied).

        Taken without gradient sync and beside `p.grad` (earlier accumulation micro-batches stay
        untouched). A non-finite norm (fp16 overflow) or `rho=0` gives no e. `whole_batch`: the rows
        are the micro-batch (SAM), whose confidence this pass then measures.
        """
        params = [p for p in model.parameters() if p.requires_grad]
        loss_scale = self._loss_scale()  # read once: on CUDA each read is a host sync
        # Sharded (FSDP2): the ascent gradient must be reduce-scattered to the shards that e moves,
        # so it is synced; every rank then perturbs the same gathered weights (`sam_sync_ascent`).
        sharded = isinstance(model, FSDPModule)
        with contextlib.nullcontext() if sharded else self.accelerator.no_sync(model):
            outputs, (sums, counts) = self._forward(model, rows)
            loss = sums.sum() / counts.sum()
            grads = ascent_gradient(loss * loss_scale, params)
        if whole_batch and self._is_single_label(rows):
            self.sam_statistics.add_confidence(mean_max_probability(outputs, counts))
        del outputs
        if self.args.sam_sync_ascent and self.accelerator.num_processes > 1 and not sharded:
            # Every process reduces one tensor per trainable parameter, a zero where its own
            # micro-batch left one unused: lists of different lengths would never match up.
            grads = self.accelerator.reduce([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)],
                                            reduction="mean")
        moved = [p for p, g in zip(params, grads) if g is not None]
        grads = [g for g in grads if g is not None]
        norm = float(ascent_norm(grads, moved, self.args.sam_adaptive))
        epsilon = None
        if math.isfinite(norm) and self.args.sam_rho > 0:
            epsilon = gradient_to_epsilon_(grads, moved, self.args.sam_rho, norm, self.args.sam_adaptive)
        self.sam_statistics.add_ascent(counts.numel(), loss.detach(), norm / loss_scale,
                                       sum(e.numel() for e in epsilon) if epsilon is not None else 0)
        return Perturbation(moved, epsilon, loss.detach(), (sums.detach(), counts.detach()))

    def _descend(self, model: nn.Module, rows: dict[str, Any], selected: Selected, finish: bool = True) -> torch.Tensor:
        """Backward of the descent loss (see `Selected`) into `p.grad`, as a running mean over the
        accumulated micro-batches' (and m-SAM's groups') items. `finish`: these rows end the
        micro-batch. Returns the rows' mean loss (detached)."""
        _, (sums, counts) = self._forward(model, rows)
        if selected.descent_weights is None:
            loss_sum = sums.sum()
        else:
            loss_sum = (sums * selected.descent_weights.to(sums.device)).sum()
        # Item counts stay on the device (float64, as Python's floats were): no host synchronisation.
        items = counts.detach().sum(dtype=torch.float64) if selected.descent_items is None else \
            torch.tensor(selected.descent_items, dtype=torch.float64, device=counts.device)
        previous = self._accumulated_items
        total = previous + items
        if torch.is_tensor(previous):  # earlier micro-batches' gradients: rescaled to the running mean
            existing = [p.grad for p in model.parameters() if p.grad is not None]
            if existing:
                torch._foreach_mul_(existing, (previous / total.clamp_min(1e-300)).to(existing[0].dtype))
        self.accelerator.backward(loss_sum / total.clamp_min(1.0).to(loss_sum.dtype))
        if finish:
            self._finish_micro_batch(items)
        else:
            self._accumulated_items += items
        return (sums.sum() / counts.sum().clamp_min(1)).detach()

    def _logged_loss(self, ranked: Optional[RankedBatch], whole_batch_ascent: Optional[Perturbation],
                     descent_loss: torch.Tensor) -> torch.Tensor:
        """The loss the Trainer logs, scaled as the Trainer scales its own: the whole micro-batch's mean
        loss at w where a pass measured it (the ranking pass; SAM's ascent pass; a plain step's
        descent), else the descent rows' loss at w + e (random_ascent, momentum, random_direction)."""
        if ranked is not None:
            loss = ranked.loss
        elif whole_batch_ascent is not None and whole_batch_ascent.loss is not None:
            loss = whole_batch_ascent.loss
        else:
            loss = descent_loss
        return loss.to(self.args.device) / (self.current_gradient_accumulation_steps or 1)

    def _finish_micro_batch(self, items: float) -> None:
        if self.accelerator.sync_gradients:
            self._accumulated_items = 0.0
            self._micro_batch = 0
        else:
            self._accumulated_items += items
            self._micro_batch += 1

    def _join_other_processes(self, model: nn.Module, inputs: dict[str, Any]) -> None:
        """Take part, with zero gradients, in what the other processes all-reduce in this step.

        A process that skipped its unlabelled micro-batch would leave the others waiting for ever
        in DDP's gradient all-reduce (the backward of the step's last micro-batch) and in
        `sam_sync_ascent`'s all-reduce of the ascent gradient.
        """
        if self.accelerator.num_processes == 1:
            return
        if self.args.sam_sync_ascent:
            self.accelerator.reduce([torch.zeros_like(p) for p in model.parameters() if p.requires_grad],
                                    reduction="mean")
        _, (sums, _) = self._forward(model, inputs)
        self.accelerator.backward(sums.sum() * 0.0)

    def _forward(self, model: nn.Module, inputs: dict[str, Any]):
        """(model outputs, (per-example loss sums, per-example item counts))."""
        check = not self._loss_checked
        with self.compute_loss_context_manager():
            outputs = model(**self._model_inputs(inputs, with_labels=check))
        if is_packed(inputs) and self._head in PACKABLE_HEADS and not self._user_loss:
            losses = per_sequence_losses(outputs, inputs, shift=self._head == "causal_lm",
                                         label_smoothing=self.args.label_smoothing_factor)
        else:
            losses = self.per_example_loss_func(outputs, inputs)
        check_per_example_losses(losses, inputs)
        if check:
            self._check_model_loss(model, outputs, inputs)
        return outputs, losses

    def _model_inputs(self, inputs: dict[str, Any], with_labels: bool = False) -> dict[str, Any]:
        """What the model is called with: the inputs without the targets for the known heads
        (the model need not compute a loss we do not use; `with_labels` keeps them, for the check of
        the model's own loss); everything for a custom loss. Always outputs as a dataclass, whatever
        `config.return_dict` says."""
        inputs = {**inputs, "return_dict": True} if self._takes_return_dict else inputs
        if self._head == "causal_lm" and not self._user_loss:
            # Training needs no cache, and with one the models would not separate packed sequences.
            inputs = {**inputs, "use_cache": False}
        if with_labels and self._head is not None and not self._user_loss:
            # The model's own loss `view`s its labels: rows cut out of a batch (no ranking pass came
            # first to make the check on the whole batch) are not contiguous.
            return {k: v.contiguous() if k in label_keys(self._head) and torch.is_tensor(v) else v
                    for k, v in inputs.items()}
        if self._head is None or self._user_loss or with_labels:
            return inputs
        dropped = label_keys(self._head)
        return {k: v for k, v in inputs.items() if k not in dropped}

    def _check_model_loss(self, model: nn.Module, outputs: Any, inputs: dict[str, Any]) -> None:
        """Once, on the first batch with something to compare: the model's own loss must be the
        standard one that the per-example loss reproduces (a subclass with class weights is not)."""
        compared = own_and_standard_loss(outputs, self._standard_loss(outputs, inputs))
        self._loss_checked = compared is not None
        if compared is not None:
            check_model_loss(type(self.accelerator.unwrap_model(model)).__name__, self._head, *compared)

    def _with_decoder_inputs(self, model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
        """Encoder-decoder models build `decoder_input_ids` from the labels: build them here the same way."""
        if self._head != "seq2seq_lm" or "decoder_input_ids" in inputs or "labels" not in inputs:
            return inputs
        unwrapped = self.accelerator.unwrap_model(model)
        if not hasattr(unwrapped, "prepare_decoder_input_ids_from_labels"):
            return inputs
        return {**inputs, "decoder_input_ids": unwrapped.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])}

    def _loss_scale(self) -> float:
        """The fp16 GradScaler's scale (1 otherwise): the ascent loss is scaled like any other."""
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            return float(scaler.get_scale())
        return 1.0

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, plus Bi-LoRA's auxiliary adapter and its optimizer state (kept out of
        the model, so out of `save_pretrained`'s adapter)."""
        super()._save_checkpoint(model, trial)
        if isinstance(self.lora_sam, BiLoRA) and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(self.lora_sam.state_dict(), os.path.join(folder, CHECKPOINT_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if isinstance(self.lora_sam, BiLoRA):
            path = os.path.join(resume_from_checkpoint, CHECKPOINT_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} has no {CHECKPOINT_FILE}: it was not written by a "
                                 "sam_mode='bi_lora' run, so its auxiliary adapter cannot be resumed. Start afresh.")
            self.lora_sam.load_state_dict(torch.load(path, weights_only=False))

    def _inner_training_loop(self, *args: Any, **kwargs: Any):
        # The loop starts from zeroed gradients; a step that failed part-way (out of memory, which
        # `auto_find_batch_size` answers by restarting this loop) must not leave its count behind.
        self._accumulated_items = 0.0
        self._micro_batch = 0
        return super()._inner_training_loop(*args, **kwargs)

    # ----------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """Add the SAM statistics since the last log to the training logs; stop a run whose weights
        are no longer finite (its logged loss can still look finite)."""
        if self.model is not None and self.state.global_step > 0:
            check_finite_weights(self.model, self.state.global_step)
        if "loss" in logs and self.rule is not None:
            logs.update(self.sam_statistics.pop())
        if "loss" in logs and self.lora_sam is not None:
            logs.update(self.lora_sam.logs())
        super().log(logs, start_time)


class _AuxiliaryAscent(TrainerCallback):
    """Bi-LoRA's ascent, once per optimizer step, before the base optimizer steps (the gradients of
    both adapters are then complete), at the auxiliary rate times the main schedule's factor."""

    def __init__(self, trainer: SharpnessAwareStepMixin) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        scheduler = trainer.lr_scheduler
        factor = scheduler.get_last_lr()[0] / args.learning_rate if scheduler is not None and args.learning_rate else 1.0
        trainer.lora_sam.ascend(factor, trainer.accelerator.num_processes)


class KSAMTrainer(SharpnessAwareStepMixin, Trainer):
    """`transformers.Trainer` with a SAM / K-SAM step; takes every `Trainer` argument, plus
    `per_example_loss_func` for heads ksam_hf does not know, and `watch_column`: a dataset column
    (one number per example, e.g. 1 where a label was flipped) that the model does not take, whose
    mean over the examples a selection rule keeps is logged as `sam_kept_<column>` (beside
    `sam_batch_<column>`, its mean over the batch). Configure it with `KSAMConfig`
    (a plain `TrainingArguments` is converted once, with the SAM fields' defaults)."""


class KSAMSeq2SeqTrainer(SharpnessAwareStepMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` (evaluation by generation) with the SAM / K-SAM step; use `KSAMSeq2SeqConfig`."""

    config_class = KSAMSeq2SeqConfig
