"""Per-example losses of the standard Transformers heads, for ranking a batch and for its sub-batch loss.

A per-example loss function takes the model's outputs and the batch's inputs (labels included)
and returns two float32 tensors of shape `[batch]`: each example's loss *sum* and the number of
items it was summed over (valid tokens for token-level heads, 1 for example-level heads, 0 for an
example with no label). The mean over any set of examples is then `sums.sum() / counts.sum()`,
which is exactly the model's own reduction restricted to those examples.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.models.auto import modeling_auto

IGNORE_INDEX = -100

PerExampleLoss = Callable[[Any, Mapping[str, Any]], "tuple[torch.Tensor, torch.Tensor]"]
"""(model outputs, inputs) -> (per-example loss sums, per-example item counts)."""

# Head kind -> (Transformers auto-mapping of model class names, class-name suffixes as fallback).
_HEADS: dict[str, tuple[Mapping[str, Any], tuple[str, ...]]] = {
    "seq2seq_lm": (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, ("ForConditionalGeneration",)),
    "causal_lm": (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, ("ForCausalLM", "LMHeadModel")),
    "masked_lm": (modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, ("ForMaskedLM",)),
    "token_classification": (modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, ("ForTokenClassification",)),
    "sequence_classification": (
        modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, ("ForSequenceClassification",)),
    "multiple_choice": (modeling_auto.MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES, ("ForMultipleChoice",)),
    "question_answering": (modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES, ("ForQuestionAnswering",)),
}

HEAD_LABELS = {
    "question_answering": ("start_positions", "end_positions"),
}
"""Label keys per head kind (default: `labels`)."""

TOKEN_LEVEL_HEADS = ("seq2seq_lm", "causal_lm", "masked_lm", "token_classification")


def head_kind(model: torch.nn.Module) -> Optional[str]:
    """The kind of head `model` has, from its class name as Transformers' auto classes know it, or
    that of the nearest Transformers class it derives from (a user's subclass keeps its head)."""
    known = {}
    for kind, (mapping, _) in _HEADS.items():
        for value in mapping.values():
            for name in (value if isinstance(value, (tuple, list)) else (value,)):
                known.setdefault(name, kind)
    for cls in type(model).__mro__:
        if cls.__name__ in known:
            return known[cls.__name__]
        for kind, (_, suffixes) in _HEADS.items():
            if cls.__name__.endswith(suffixes):
                return kind
    base = getattr(model, "get_base_model", None)  # a PEFT wrapper made without task_type: its model's head
    if callable(base) and base() is not model:
        return head_kind(base())
    return None


def label_keys(kind: str) -> tuple[str, ...]:
    """The input keys that hold the targets of a head of this kind."""
    return HEAD_LABELS.get(kind, ("labels",))


def _logits(outputs: Any, name: str = "logits") -> torch.Tensor:
    if isinstance(outputs, Mapping):
        return outputs[name]
    return getattr(outputs, name)


def token_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example sums and counts of token cross-entropy over positions whose label is not -100."""
    batch = labels.shape[0]
    losses = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device),
        ignore_index=IGNORE_INDEX, reduction="none", label_smoothing=label_smoothing,
    ).view(batch, -1)
    counts = labels.ne(IGNORE_INDEX).reshape(batch, -1).sum(dim=1)
    return losses.sum(dim=1), counts.to(losses.dtype)


def causal_lm_losses(outputs: Any, inputs: Mapping[str, Any], label_smoothing: float = 0.0):
    """Next-token loss: position i predicts label i+1, as the models' own causal LM loss does."""
    logits, labels = _logits(outputs), inputs["labels"]
    return token_losses(logits[:, :-1, :], labels[:, 1:], label_smoothing)


def aligned_token_losses(outputs: Any, inputs: Mapping[str, Any], label_smoothing: float = 0.0):
    """Token loss with labels aligned to logits: masked LM, token classification, seq2seq decoders."""
    return token_losses(_logits(outputs), inputs["labels"], label_smoothing)


def sequence_classification_losses(outputs: Any, inputs: Mapping[str, Any], num_labels: int,
                                   problem_type: Optional[str], label_smoothing: float = 0.0):
    """Per-example loss of `*ForSequenceClassification`, with `problem_type` inferred as the models do."""
    logits, labels = _logits(outputs).float(), inputs["labels"].to(_logits(outputs).device)
    batch = logits.shape[0]
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "single_label_classification":
        return _choice_losses(logits.view(batch, -1), labels.view(batch), label_smoothing)
    if problem_type == "regression":
        errors = F.mse_loss(logits.view(batch, -1), labels.float().view(batch, -1), reduction="none")
    elif problem_type == "multi_label_classification":
        errors = F.binary_cross_entropy_with_logits(
            logits.view(batch, -1), labels.float().view(batch, -1), reduction="none")
    else:
        raise ValueError(f"Unknown `problem_type`={problem_type!r} in the model config.")
    return errors.mean(dim=1), torch.ones(batch, device=logits.device)


def _choice_losses(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float):
    """Cross-entropy of one choice among `logits.shape[-1]` per example; label -100 counts 0."""
    losses = F.cross_entropy(logits.float(), labels.long(), ignore_index=IGNORE_INDEX,
                             reduction="none", label_smoothing=label_smoothing)
    return losses, labels.ne(IGNORE_INDEX).to(losses.dtype)


def multiple_choice_losses(outputs: Any, inputs: Mapping[str, Any], label_smoothing: float = 0.0):
    """`*ForMultipleChoice`: logits `[batch, choices]`, one label per example."""
    logits = _logits(outputs)
    return _choice_losses(logits, inputs["labels"].to(logits.device).view(-1), label_smoothing)


def question_answering_losses(outputs: Any, inputs: Mapping[str, Any], label_smoothing: float = 0.0):
    """`*ForQuestionAnswering`: mean of the start and end cross-entropies, as the models compute it.

    Positions outside the sequence are clamped to its length and ignored, as in the models; an
    example counts only if both its start and end positions are inside.
    """
    start_logits, end_logits = _logits(outputs, "start_logits"), _logits(outputs, "end_logits")
    length = start_logits.shape[1]
    losses, valid = [], []
    for logits, key in ((start_logits, "start_positions"), (end_logits, "end_positions")):
        positions = inputs[key].to(logits.device).view(-1).clamp(0, length)
        loss = F.cross_entropy(logits.float(), positions, ignore_index=length, reduction="none",
                               label_smoothing=label_smoothing)
        losses.append(loss)
        valid.append(positions.ne(length))
    both = valid[0] & valid[1]
    return torch.where(both, (losses[0] + losses[1]) / 2, 0.0), both.float()


def per_example_loss_for(model: PreTrainedModel, kind: str, label_smoothing: float = 0.0) -> PerExampleLoss:
    """The per-example loss function of a model whose head is of kind `kind`."""
    eps = float(label_smoothing or 0.0)
    if kind == "causal_lm":
        return lambda outputs, inputs: causal_lm_losses(outputs, inputs, eps)
    if kind in ("masked_lm", "token_classification", "seq2seq_lm"):
        return lambda outputs, inputs: aligned_token_losses(outputs, inputs, eps)
    if kind == "multiple_choice":
        return lambda outputs, inputs: multiple_choice_losses(outputs, inputs, eps)
    if kind == "question_answering":
        return lambda outputs, inputs: question_answering_losses(outputs, inputs, eps)
    if kind == "sequence_classification":
        config = model.config
        return lambda outputs, inputs: sequence_classification_losses(
            outputs, inputs, config.num_labels, config.problem_type, eps)
    raise ValueError(f"No per-example loss is known for head kind {kind!r}.")


def mean_max_probability(outputs: Any, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) over the labelled examples of the top class's probability, on the device (no
    host synchronisation: the mean is taken when it is logged): 1 / classes for a model that predicts
    the uniform distribution (a collapse), towards 1 for a confident one."""
    logits = _logits(outputs).detach().float()
    top = logits.softmax(dim=-1).amax(dim=-1).view(-1)
    labelled = (counts.to(top.device) > 0).float()
    return (top * labelled).sum(), labelled.sum()


def label_counts(inputs: Mapping[str, Any], kind: Optional[str]) -> Optional[torch.Tensor]:
    """Each example's number of loss items read from its labels alone, without a forward pass (for
    the rules that draw rows without ranking them); None where only the loss can tell (a custom loss,
    an unknown head). Token-level heads count the labels that are not -100 (a causal LM's first
    position predicts nothing); one label per example counts 1, or 0 when it is -100."""
    if kind is None:
        return None
    if kind == "question_answering":
        return torch.ones(len(inputs["start_positions"]))
    labels = inputs.get("labels")
    if not torch.is_tensor(labels):
        return None
    labels = labels.detach()  # counted where the labels are: the caller copies the counts to the host
    if kind in TOKEN_LEVEL_HEADS:
        if kind == "causal_lm":
            labels = labels[:, 1:]
        return labels.ne(IGNORE_INDEX).reshape(labels.shape[0], -1).sum(dim=1).float()
    if labels.is_floating_point():  # regression, multi-label: every example has a target
        return torch.ones(labels.shape[0], device=labels.device)
    return labels.ne(IGNORE_INDEX).float()
