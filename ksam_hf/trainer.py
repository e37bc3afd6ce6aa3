"""`KSAMTrainer`: a `transformers.Trainer` whose training step is SAM or K-SAM.

Only `training_step` (and `log`, to report the step's statistics) is overridden: the Trainer still
does the data loading, gradient accumulation, mixed precision, clipping, optimizer step,
scheduling, logging and checkpointing, so every Trainer feature keeps working.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any, Optional, Union

import torch
from torch import nn
from transformers import Seq2SeqTrainer, Trainer, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .config import KSAMConfig, resolve_k, validate_sam_fields
from .loss_memory import ExampleLossMemory, estimated_batch_loss, refreshed_scores, relative_losses
from .per_example_loss import (TOKEN_LEVEL_HEADS, PerExampleLoss, head_kind, label_keys,
                               per_example_loss_for)
from .selection import select_rows, top_k_indices, trim_padding
from .sharpness import ascent_norm, perturb_weights_, perturbation_, restore_weights_

EXAMPLE_LEVEL_HEADS = ("sequence_classification", "multiple_choice", "question_answering")
PADDING_AGNOSTIC_HEADS = TOKEN_LEVEL_HEADS + ("sequence_classification", "multiple_choice")
"""Heads whose loss does not change when trailing padding is cut (not QA: its softmax runs over
every position, padding included, as the models compute it)."""
LOSS_MEMORY_FILE = "ksam_loss_memory_{}.pt"
"""Checkpoint file (per process) of the losses remembered for `ksam_selection="previous_loss"`."""


@dataclass(frozen=True)
class SAMSettings:
    """The SAM fields of the training arguments (defaults of `KSAMConfig` for plain `TrainingArguments`)."""

    mode: str
    rho: float
    k: Union[int, float]
    adaptive: bool
    sync_ascent: bool
    selection: str
    rank_without_dropout: bool
    id_column: str

    @classmethod
    def from_args(cls, args: TrainingArguments) -> "SAMSettings":
        names = {"sam_mode": "mode", "sam_rho": "rho", "ksam_k": "k", "sam_adaptive": "adaptive",
                 "sam_sync_ascent": "sync_ascent", "ksam_selection": "selection", "ksam_id_column": "id_column",
                 "ksam_rank_without_dropout": "rank_without_dropout"}
        defaults = {f.name: f.default for f in fields(KSAMConfig) if f.name in names}
        values = SimpleNamespace(**{name: getattr(args, name, default) for name, default in defaults.items()})
        validate_sam_fields(values)
        return cls(**{names[name]: value for name, value in vars(values).items()})


class SharpnessAwareStepMixin:
    """The SAM / K-SAM training step, mixed into a `Trainer` class (see `KSAMTrainer`)."""

    def __init__(self, *args: Any, per_example_loss_func: Optional[PerExampleLoss] = None, **kwargs: Any):
        if len(args) < 2 and kwargs.get("args") is None:
            kwargs["args"] = KSAMConfig(output_dir="trainer_output")
        super().__init__(*args, **kwargs)
        self.sam = SAMSettings.from_args(self.args)
        self.per_example_loss_func = per_example_loss_func
        self._user_loss = per_example_loss_func is not None
        self._head: Optional[str] = None
        self._accumulated_items = 0.0  # examples / tokens behind the gradient in p.grad this step
        self.current_gradient_accumulation_steps = 1  # the training loop sets it; direct calls need it
        self._sam_logs = _StepStatistics()
        self._loss_memory = ExampleLossMemory() if self._remembers_losses else None
        self._check_sam_setup()
        if self.model is not None:
            self._setup_head(self.model)

    # ----------------------------------------------------------------------------- construction
    @property
    def _remembers_losses(self) -> bool:
        return self.sam.mode == "ksam" and self.sam.selection == "previous_loss"

    def _remove_unused_columns(self, dataset: Any, description: Optional[str] = None) -> Any:
        """Keep the example-id column in the training set when K-SAM ranks by remembered losses."""
        pruned = super()._remove_unused_columns(dataset, description)
        column = self.sam.id_column
        if (self._remembers_losses and (description or "").lower() == "training"
                and column in getattr(dataset, "column_names", ())
                and column not in pruned.column_names):
            pruned = pruned.add_column(column, dataset.with_format(None)[column])
        return pruned

    def _check_sam_setup(self) -> None:
        if self.sam.mode == "none":
            return
        if self.compute_loss_func is not None:
            raise ValueError(
                "`compute_loss_func` cannot be combined with `sam_mode`="
                f"{self.sam.mode!r}: it returns a loss already reduced over the batch, and K-SAM needs "
                "one loss per example. Pass `per_example_loss_func=` (outputs, inputs) -> (loss sums, "
                "item counts) instead, or set `sam_mode='none'`."
            )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                f"`sam_mode`={self.sam.mode!r} does not support DeepSpeed or FSDP yet: the perturbation "
                "needs the full (unsharded) weights and gradients on each process. Use DDP "
                "(`accelerate launch` / `torchrun` without a DeepSpeed or FSDP config), or `sam_mode='none'`."
            )

    def _setup_head(self, model: nn.Module) -> None:
        """Find the per-example loss for `model`; make the baseline's accumulation scaling right."""
        unwrapped = self.accelerator.unwrap_model(model)
        self._head = head_kind(unwrapped)
        if self._head in EXAMPLE_LEVEL_HEADS:
            # These heads reduce their loss over their own micro-batch and ignore
            # `num_items_in_batch`, so the Trainer must divide by the accumulation steps.
            self.model_accepts_loss_kwargs = False
        if self.sam.mode == "none" or self.per_example_loss_func is not None:
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

    # ----------------------------------------------------------------------------- the step
    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Optional[Union[torch.Tensor, int]] = None) -> torch.Tensor:
        """One SAM / K-SAM micro-batch: rank, ascend on the kept examples, descend there at w + e.

        The descent gradient is added to `p.grad` (earlier accumulation micro-batches' gradients
        stay there), so that after the last micro-batch `p.grad` is the mean over all kept
        examples (tokens) of the accumulated batch. Returns the whole micro-batch's loss, scaled
        for logging as the Trainer scales its own.
        """
        if self.sam.mode == "none":
            return super().training_step(model, inputs, num_items_in_batch)
        if self.per_example_loss_func is None:
            self._setup_head(model)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        inputs = self._with_decoder_inputs(model, inputs)
        accumulation_steps = self.current_gradient_accumulation_steps or 1

        kept_scores = None
        if self.sam.mode == "ksam":
            kept, full_loss, kept_scores = self._select_top_k(model, inputs)
            if kept is None:  # no example in this micro-batch has a label
                self._join_other_processes(model, inputs)
                self._finish_micro_batch(0.0)
                return full_loss.detach() / accumulation_steps
        else:
            kept, full_loss = inputs, None

        params = [p for p in model.parameters() if p.requires_grad]
        loss_scale = self._loss_scale()  # read once: on CUDA each read is a host sync
        with self.accelerator.no_sync(model):
            sums, counts = self._per_example_losses(model, kept)
            ascent_loss = sums.sum() / counts.sum()
            grads = torch.autograd.grad(ascent_loss * loss_scale, params, allow_unused=True)
        if kept_scores is not None:  # ranked from memory: refresh the kept examples' scores
            kept_losses = (sums / counts.clamp_min(1)).detach()
            self._loss_memory.update(kept[self.sam.id_column], refreshed_scores(kept_scores, kept_losses))
            full_loss = estimated_batch_loss(kept_losses, kept_scores)
        if full_loss is None:
            full_loss = ascent_loss.detach()
        self._sam_logs.add_kept(counts.numel(), ascent_loss.detach())
        perturbed = [p for p, g in zip(params, grads) if g is not None]
        perturbation = [g for g in grads if g is not None]
        del grads, sums, ascent_loss
        if self.sam.sync_ascent and self.accelerator.num_processes > 1:
            perturbation = self.accelerator.reduce(perturbation, reduction="mean")
        norm = float(ascent_norm(perturbation, perturbed, self.sam.adaptive))
        self._sam_logs.add_norm(norm / loss_scale)
        perturb = math.isfinite(norm) and self.sam.rho > 0
        if not math.isfinite(norm):
            self._sam_logs.skipped += 1
        saved = None
        try:
            if perturb:
                perturbation_(perturbation, perturbed, self.sam.rho, norm, self.sam.adaptive)
                saved = [p.data for p in perturbed]  # w itself, untouched while w + e is swapped in
                perturb_weights_(perturbed, perturbation)
            del perturbation  # with the weights swapped, nothing else holds e: the descent has +1 copy only
            self._descend(model, kept)
        finally:
            restore_weights_(perturbed, saved)
        return full_loss / accumulation_steps

    def _select_top_k(self, model: nn.Module, inputs: dict[str, Any]):
        """Rank the micro-batch by per-example loss: the top-k rows (trimmed), the batch's loss, and
        the kept rows' remembered scores (None unless ranked from memory).

        The ranking is a forward pass without gradients, or (`ksam_selection="previous_loss"`)
        the relative losses remembered from the examples' previous visit when all of them have one
        (the batch's loss is then estimated after the ascent pass: None here).
        """
        remembered = self._remembered_losses(inputs)
        if remembered is not None:
            scores, counts = remembered, torch.ones_like(remembered)
            full_loss = None
            self._sam_logs.ranked_from_memory += 1
        else:
            try:
                model.train(not self.sam.rank_without_dropout)
                with torch.no_grad():
                    sums, counts = self._per_example_losses(model, inputs)
            finally:
                model.train()
            scores = sums / counts.clamp_min(1)
            full_loss = sums.sum() / counts.sum().clamp_min(1)
            if self._loss_memory is not None:
                self._loss_memory.update(inputs[self.sam.id_column], relative_losses(scores, counts > 0))
        batch_size = counts.shape[0]
        indices = top_k_indices(scores, counts, resolve_k(self.sam.k, batch_size))
        if indices.numel() == 0:
            self._sam_logs.empty += 1
            return None, full_loss, None
        kept = select_rows(inputs, indices, batch_size)
        if self._head in PADDING_AGNOSTIC_HEADS and not self._user_loss:
            kept = trim_padding(kept, decoder_labels=self._head == "seq2seq_lm")
        return kept, full_loss, (scores[indices.cpu()] if remembered is not None else None)

    def _join_other_processes(self, model: nn.Module, inputs: dict[str, Any]) -> None:
        """Take part, with zero gradients, in what the other processes all-reduce in this step.

        A process that skipped its unlabelled micro-batch would leave the others waiting for ever
        in DDP's gradient all-reduce (the backward of the step's last micro-batch) and in
        `sam_sync_ascent`'s all-reduce of the ascent gradient.
        """
        if self.accelerator.num_processes == 1:
            return
        if self.sam.sync_ascent:
            params = [p for p in model.parameters() if p.requires_grad]
            with self.accelerator.no_sync(model):
                sums, _ = self._per_example_losses(model, inputs)
                grads = torch.autograd.grad(sums.sum() * 0.0, params, allow_unused=True)
            self.accelerator.reduce([g for g in grads if g is not None], reduction="mean")
        sums, _ = self._per_example_losses(model, inputs)
        self.accelerator.backward(sums.sum() * 0.0)

    def _remembered_losses(self, inputs: dict[str, Any]) -> Optional[torch.Tensor]:
        """The remembered losses of every example in the batch, or None if any is unknown."""
        if self._loss_memory is None:
            return None
        if self.sam.id_column not in inputs:
            raise ValueError(
                f"`ksam_selection='previous_loss'` needs an example id per row, but the batch has no "
                f"{self.sam.id_column!r} column. Add one (e.g. `dataset.map(lambda _, i: {{'idx': i}}, "
                "with_indices=True)`) or set `ksam_id_column` to the column that holds it."
            )
        losses = self._loss_memory.lookup(inputs[self.sam.id_column])
        return losses if bool(torch.isfinite(losses).all()) else None

    def _descend(self, model: nn.Module, kept: dict[str, Any]) -> None:
        """Backward of the kept examples' loss at the current weights, into `p.grad`, as a running mean."""
        sums, counts = self._per_example_losses(model, kept)
        items = float(counts.sum())
        previous = self._accumulated_items
        total = previous + items
        if previous > 0 and total > 0:
            existing = [p.grad for p in model.parameters() if p.grad is not None]
            if existing:
                torch._foreach_mul_(existing, previous / total)
        self.accelerator.backward(sums.sum() / max(total, 1.0))
        self._finish_micro_batch(items)

    def _finish_micro_batch(self, items: float) -> None:
        if self.accelerator.sync_gradients:
            self._accumulated_items = 0.0
        else:
            self._accumulated_items += items

    def _per_example_losses(self, model: nn.Module, inputs: dict[str, Any]):
        with self.compute_loss_context_manager():
            outputs = model(**self._model_inputs(inputs))
        return self.per_example_loss_func(outputs, inputs)

    def _model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the model is called with: the inputs without the targets for the known heads
        (the model need not compute a loss we do not use); everything for a custom loss."""
        dropped = {self.sam.id_column} if self._loss_memory is not None else set()
        if self._head is not None and not self._user_loss:
            dropped.update(label_keys(self._head))
        return {k: v for k, v in inputs.items() if k not in dropped}

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

    def _inner_training_loop(self, *args: Any, **kwargs: Any):
        # The loop starts from zeroed gradients; a step that failed part-way (out of memory, which
        # `auto_find_batch_size` answers by restarting this loop) must not leave its count behind.
        self._accumulated_items = 0.0
        return super()._inner_training_loop(*args, **kwargs)

    # ----------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint, plus the remembered losses (`ksam_selection="previous_loss"`)."""
        super()._save_checkpoint(model, trial)
        if self._loss_memory is not None:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(self._loss_memory.losses, os.path.join(folder, LOSS_MEMORY_FILE.format(self.args.process_index)))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, LOSS_MEMORY_FILE.format(self.args.process_index))
        if self._loss_memory is not None and os.path.isfile(path):
            self._loss_memory.losses = torch.load(path, weights_only=True)

    # ----------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        """Add the SAM statistics since the last log to the training logs."""
        if "loss" in logs and self.sam.mode != "none":
            logs.update(self._sam_logs.pop())
        super().log(logs, start_time)


class _StepStatistics:
    """Running sums of the per-step SAM statistics between two logs."""

    def __init__(self) -> None:
        self.skipped = 0  # perturbations skipped for a non-finite ascent norm (cumulative)
        self.empty = 0  # micro-batches with no labelled example (cumulative)
        self.ranked_from_memory = 0  # micro-batches ranked by remembered losses (cumulative)
        self._reset()

    def _reset(self) -> None:
        self.steps, self.kept, self.norm_steps, self.norm = 0, 0, 0, 0.0
        self.kept_loss = torch.zeros(())

    def add_kept(self, kept: int, kept_loss: torch.Tensor) -> None:
        self.steps += 1
        self.kept += kept
        self.kept_loss = self.kept_loss.to(kept_loss.device) + kept_loss.float()

    def add_norm(self, norm: float) -> None:
        if math.isfinite(norm):
            self.norm_steps += 1
            self.norm += norm

    def pop(self) -> dict[str, float]:
        logs = {"sam_skipped_perturbations": self.skipped}
        if self.empty:
            logs["sam_unlabelled_batches"] = self.empty
        if self.ranked_from_memory:
            logs["sam_ranked_from_memory"] = self.ranked_from_memory
        if self.steps:
            logs["sam_kept"] = round(self.kept / self.steps, 4)
            logs["sam_kept_loss"] = round(float(self.kept_loss) / self.steps, 4)
        if self.norm_steps:
            logs["sam_ascent_grad_norm"] = round(self.norm / self.norm_steps, 4)
        self._reset()
        return logs


class KSAMTrainer(SharpnessAwareStepMixin, Trainer):
    """`transformers.Trainer` with a SAM / K-SAM step; takes every `Trainer` argument, plus
    `per_example_loss_func` for heads ksam_hf does not know. Configure it with `KSAMConfig`
    (a plain `TrainingArguments` runs K-SAM with the defaults)."""


class KSAMSeq2SeqTrainer(SharpnessAwareStepMixin, Seq2SeqTrainer):
    """`Seq2SeqTrainer` (evaluation by generation) with the SAM / K-SAM step; use `KSAMSeq2SeqConfig`."""
