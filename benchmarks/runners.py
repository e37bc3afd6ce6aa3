"""The runners `step_time` interleaves: a method's optimizer step as `KSAMTrainer` runs it, and the
method's bound, the same passes in plain PyTorch with nothing the method could leave out.

A runner has a `name` and `step(batch)`; batches carry an `idx` column (example ids) that only the
previous-loss trainer reads.

How the bound of K-SAM picks its rows: it runs its own ranking pass (eval mode, train mode, or a
read of the previous-loss trainer's memory, as its method ranks) and applies the library's public
selection rule, `ksam_hf.selection.selection_rule(ksam_selection, ksam_uniform_mix)` with
`resolve_k(ksam_k, batch)`, to that ranking. It does not copy `trainer.sam_statistics.last_selected`:
the rounds run the runners in a rotated order, so in about half of them a bound runs before its
method, when `last_selected` is still the previous batch's. The bound thus pays what the
library's selection costs and keeps the same number of rows; with `top_k` they are the trainer's
rows up to the one optimizer step between the two, with `loss_sampled` another draw from the same
probabilities (on padded inputs the trimmed width, and so the time, can differ per round; the
median over the rounds evens it out). The bound does not weight `loss_sampled`'s descent: a
weighted sum costs what a mean costs.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ksam_hf import KSAMConfig, KSAMTrainer
from ksam_hf.rows import select_rows, trim_padding
from ksam_hf.selection import Ranking, resolve_k, selection_rule

from .common import Batch

MAX_GRAD_NORM = 1.0
VARIANT_K = 0.25
"""The k at which the K-SAM variants are timed."""
KSAM_SELECTION = {"ksam_selection": "loss_sampled"}
"""The selection of the `ksam@K` runners: both passes on k examples, the step K-SAM's cost claim is
about (the library's default, `top_k_ascent`, descends on the whole batch)."""
VARIANTS: dict[str, dict[str, Any]] = {
    "top_k": {"ksam_selection": "top_k"},  # the paper's rule
    "top_k_ascent": {"ksam_selection": "top_k_ascent"},  # the library's default: the descent on the whole batch
    "dropout_rank": {**KSAM_SELECTION, "ksam_rank_without_dropout": False},  # ranking in train mode (the paper's)
    "previous_loss": {},  # ksam_hf.experimental's PreviousLossKSAMTrainer (its own default: top_k)
}
"""K-SAM variants: the KSAMConfig fields each changes from the defaults."""
CHEAP_RULES: dict[str, tuple[str, Optional[float], dict[str, Any]]] = {
    "random_ascent@0.25": ("ksam", 0.25, {"ksam_selection": "random_ascent"}),
    "random_ascent@0.125": ("ksam", 0.125, {"ksam_selection": "random_ascent"}),
    "momentum": ("momentum", None, {}),
    "random_direction": ("random_direction", None, {}),
    "sam_every_2": ("sam", None, {"sam_every_n_steps": 2}),
}
"""The field's cheap SAMs: name -> (sam_mode, ksam_k, other KSAMConfig fields)."""


def group_methods(sizes: list[int]) -> list["Method"]:
    """m-SAM (`sam_group_size` m): SAM with one perturbation per group of m examples."""
    return [Method(f"sam_m{m}", "sam", None, f"m{m}", {"sam_group_size": m}) for m in sizes]

ID_COLUMN = "idx"


@dataclass(frozen=True)
class Method:
    """One timed method: `mode` is `sam_mode`; `k` is None for AdamW and SAM."""

    name: str
    mode: str
    k: Optional[float] = None
    variant: Optional[str] = None
    options: dict[str, Any] = field(default_factory=dict)


def methods_to_time(ks: list[float], variants: list[str], cheap_rules: tuple[str, ...] = ()) -> list[Method]:
    """AdamW, SAM, K-SAM (loss_sampled) at each k, the variants at VARIANT_K, then the cheap rules."""
    return ([Method("adamw", "none"), Method("sam", "sam")]
            + [Method(f"ksam@{k:g}", "ksam", k, options=KSAM_SELECTION) for k in ks]
            + [Method(f"ksam@{VARIANT_K:g}+{v}", "ksam", VARIANT_K, v, VARIANTS[v]) for v in variants]
            + [Method(name, CHEAP_RULES[name][0], CHEAP_RULES[name][1], name, CHEAP_RULES[name][2])
               for name in cheap_rules])


@dataclass(frozen=True)
class TrainerSettings:
    """What every method's trainer shares."""

    rho: float
    seed: int
    batch_size: int
    use_cpu: bool
    output_dir: str
    bf16: bool = False  # bf16 autocast (mixed precision, as --bf16 in a Trainer run), the bounds too


def make_trainer(method: Method, model: torch.nn.Module, settings: TrainerSettings) -> KSAMTrainer:
    """The method's trainer on `model`, its AdamW optimizer created (the Trainer does it in `train()`)."""
    trainer_class, config_class = KSAMTrainer, KSAMConfig
    if method.variant == "previous_loss":
        with warnings.catch_warnings():  # timed on purpose: its FutureWarning would only clutter the output
            warnings.simplefilter("ignore", FutureWarning)
            from ksam_hf.experimental.previous_loss import PreviousLossKSAMConfig, PreviousLossKSAMTrainer
        trainer_class, config_class = PreviousLossKSAMTrainer, PreviousLossKSAMConfig
    k = {"ksam_k": method.k} if method.k is not None else {}
    config = config_class(output_dir=settings.output_dir, sam_mode=method.mode, sam_rho=settings.rho,
                          max_grad_norm=MAX_GRAD_NORM, use_cpu=settings.use_cpu, report_to="none",
                          seed=settings.seed, per_device_train_batch_size=settings.batch_size,
                          save_strategy="no", logging_strategy="no", disable_tqdm=True, bf16=settings.bf16,
                          **k, **method.options)
    trainer = trainer_class(model=model, args=config)
    if settings.bf16:  # what train() does first: accelerate wraps forward in autocast (the Trainer adds none)
        trainer.model_wrapped = trainer.accelerator.prepare_model(model)
    trainer.create_optimizer()
    return trainer


class MethodRunner:
    """One optimizer step as the Trainer's loop runs it (no gradient accumulation, no scheduler)."""

    def __init__(self, method: Method, trainer: KSAMTrainer):
        self.method, self.name = method, method.name
        self.trainer, self.model, self.optimizer = trainer, trainer.model, trainer.optimizer
        self.loss_memory = getattr(trainer, "loss_memory", None)  # the previous-loss trainer's
        self.steps = 0

    def remember_losses(self, batches: list[Batch]) -> None:
        """Give every example of `batches` a remembered score, as a later epoch would have, so that
        the previous-loss trainer ranks each batch from memory (the scores' values do not matter for
        the time: one draw per example)."""
        generator = torch.Generator().manual_seed(0)
        for batch in batches:
            ids = batch[ID_COLUMN]
            self.loss_memory.update(ids, torch.rand(ids.numel(), generator=generator))

    def inputs(self, batch: Batch) -> Batch:
        """The batch as the method's dataloader would give it: the ids only for the previous-loss trainer."""
        return batch if self.loss_memory is not None else without_ids(batch)

    def step(self, batch: Batch, profiled: bool = False) -> None:
        """`profiled` labels the Trainer-loop parts (`step/*`) for the profiler; the library labels its own."""
        region = record_function if profiled else _no_region
        with region("step/training_step"):
            self.trainer.training_step(self.model, self.inputs(batch))
        with region("step/clip_grad_norm"):
            self.trainer.accelerator.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        with region("step/optimizer.step"):
            self.optimizer.step()
        with region("step/zero_grad"):
            self.model.zero_grad(set_to_none=True)
        self.steps += 1
        self.trainer.state.global_step += 1  # as the Trainer's loop counts: schedules and draws read it

    def kept(self) -> Optional[int]:
        """Rows the trainer kept in its latest step (K-SAM; None otherwise), from its statistics."""
        selected = self.trainer.sam_statistics.last_selected
        return int(selected.ascent.numel()) if selected is not None else None

    def record(self) -> dict[str, Any]:
        """What the run should say about this trainer: steps, rows kept, how it ranked."""
        args = self.trainer.args
        out: dict[str, Any] = {"steps": self.steps, "sam_mode": args.sam_mode, "kept_last_step": self.kept()}
        if args.sam_mode == "ksam":
            out.update(ksam_k=args.ksam_k, ksam_selection=args.ksam_selection,
                       ksam_rank_without_dropout=args.ksam_rank_without_dropout)
        if self.loss_memory is not None:
            out["ranked_from_memory"] = self.trainer.ranked_from_memory
        return out


def _no_region(name: str) -> nullcontext:
    return nullcontext()


def without_ids(batch: Batch) -> Batch:
    return {key: value for key, value in batch.items() if key != ID_COLUMN}


class BoundRunner:
    """The passes a method cannot avoid, in plain PyTorch, on the method's model and optimizer:

    AdamW, momentum, random_direction: forward + backward over the batch (the perturbation's vector
    maths is what the library adds). SAM: two forward + backward over the batch (the first with
    `torch.autograd.grad`); with `sam_every_n_steps` = n, only every n-th step, the others one; with
    `sam_group_size` m (m-SAM), the two passes over each group of m rows.
    K-SAM: a ranking (a forward without gradients over the batch, or a memory read; none for
    `random_ascent`), the selection rule, the kept rows cut with `ksam_hf.rows`, then SAM's two
    passes on them (with `top_k_ascent` and `random_ascent`, the descent on the whole batch). All:
    clip, optimizer step, zero the gradients.
    """

    def __init__(self, method: MethodRunner):
        self.name, self.method = f"bound:{method.name}", method
        self.model, self.optimizer = method.model, method.optimizer
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        args = method.trainer.args
        self.mode = args.sam_mode
        self.every_n_steps, self.steps = args.sam_every_n_steps, 0
        self.group_size = args.sam_group_size
        if self.mode == "ksam":
            self.k, self.rank_in_train_mode = args.ksam_k, not args.ksam_rank_without_dropout
            self.rule = selection_rule(args.ksam_selection, args.ksam_uniform_mix)

    def _logits(self, batch: Batch) -> torch.Tensor:
        """The method's own model: under bf16, accelerate has wrapped its forward in an autocast of
        its own (`make_trainer`), so each pass casts the weights afresh, as a step at w + e must (one
        autocast around all of a step's passes would cast them once for both of SAM's passes)."""
        return self.model(**{key: v for key, v in batch.items() if key != "labels"}).logits.float()

    def _loss(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self._logits(batch), batch["labels"])

    def _ranking(self, batch: Batch) -> Ranking:
        if not self.rule.needs_ranking:  # every row has its label: counts of one, no pass
            return Ranking(torch.zeros(batch["labels"].shape[0]), torch.ones(batch["labels"].shape[0]))
        if self.method.loss_memory is not None:
            scores = self.method.loss_memory.lookup(batch[ID_COLUMN])
        else:
            self.model.train(self.rank_in_train_mode)
            with torch.no_grad():
                scores = F.cross_entropy(self._logits(without_ids(batch)), batch["labels"], reduction="none").cpu()
            self.model.train()
        return Ranking(scores, torch.ones_like(scores))

    def _rows(self, batch: Batch, indices: torch.Tensor) -> Batch:
        return trim_padding(select_rows(batch, indices, batch["labels"].shape[0]), decoder_labels=False)

    def step(self, batch: Batch) -> None:
        self._passes(batch)
        torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _passes(self, batch: Batch) -> None:
        self.model.train()
        ascent_rows = descent_rows = without_ids(batch)
        self.steps += 1
        if self.mode in ("none", "momentum", "random_direction") or self.steps % self.every_n_steps:
            self._loss(ascent_rows).backward()
        else:
            if self.mode == "ksam":
                generator = torch.Generator().manual_seed(self.steps) if self.rule.seeded_by_step else None
                selected = self.rule.select(self._ranking(batch), resolve_k(self.k, batch["labels"].shape[0]),
                                            generator)
                ascent_rows = self._rows(descent_rows, selected.ascent)
                descent_rows = ascent_rows if selected.descent is selected.ascent else \
                    self._rows(descent_rows, selected.descent)
            if self.group_size is not None:  # m-SAM: SAM's two passes on every group, weighted by its rows
                size = batch["labels"].shape[0]
                for start in range(0, size, self.group_size):
                    group = self._rows(descent_rows, torch.arange(start, min(start + self.group_size, size)))
                    grads = torch.autograd.grad(self._loss(group), self.params)
                    del grads
                    (self._loss(group) * group["labels"].shape[0] / size).backward()
            else:
                grads = torch.autograd.grad(self._loss(ascent_rows), self.params)
                del grads
                self._loss(descent_rows).backward()


def build_runners(methods: list[Method], base: torch.nn.Module, device: torch.device, settings: TrainerSettings,
                  batches: list[Batch], with_bounds: bool) -> tuple[list[MethodRunner], list[BoundRunner]]:
    """A trainer per method, each on its own copy of `base`; the previous-loss trainer's memory
    filled for `batches`; a bound per method unless `with_bounds` is False."""
    runners = []
    for method in methods:
        runner = MethodRunner(method, make_trainer(method, copy.deepcopy(base).to(device), settings))
        if runner.loss_memory is not None:
            runner.remember_losses(batches)
        runners.append(runner)
    return runners, [BoundRunner(r) for r in runners] if with_bounds else []
