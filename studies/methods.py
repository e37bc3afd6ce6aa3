"""A method spec, `NAME@FIELD=VALUE@...` (`ksam@ksam_selection=top_k@sam_rho=0.01`): what a study
runs, as the grid keys it and the plots label it. NAME is a `run_glue.py --optimizer` value, built
from the library's one registry of step modes."""

from __future__ import annotations

from pathlib import Path

from glue_scripts.run_glue import OPTIMIZERS, PLAIN_OPTIMIZERS
from ksam_hf.rules import STEP_MODES

METHODS = tuple(OPTIMIZERS)
"""Method names: run_glue.py's `--optimizer` values."""
PLAIN_METHODS = tuple(PLAIN_OPTIMIZERS)
"""Methods without a SAM step (a study's plain controls)."""


def selects_rows(name: str) -> bool:
    """Whether the method's step keeps rows by `ksam_selection` (its `ksam_*` fields apply)."""
    return STEP_MODES[OPTIMIZERS[name]].selects_rows


KEYED_SAM_FIELDS = ("sam_rho", "ksam_k", "ksam_selection", "ksam_uniform_mix", "ksam_loss_share", "sam_adaptive",
                    "ksam_rank_without_dropout", "sam_sync_ascent")
"""The `KSAMConfig` fields written out with their defaults into every SAM run's settings (those of the
committed grids); a field added since (the SAM schedules) is written only when a spec sets it, so
that the committed runs keep their keys."""
OVERRIDABLE_TRAINING_FIELDS = ("learning_rate", "num_train_epochs", "model_name_or_path", "label_smoothing_factor")
"""Settings a method spec may set besides the `KSAMConfig` SAM fields: a learning-rate grid is a list
of methods (`adamw@learning_rate=5e-5`), a warm start another model and fewer epochs, a plain control
label smoothing (`adamw@label_smoothing_factor=0.1`)."""


def normalized(value: str) -> str:
    """A number as the grid writes it (`1e-4` and `0.0001` are one setting); other text as given."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and number >= 1 else str(number)


def parse(method: str) -> tuple[str, dict[str, str]]:
    """A method spec's name and its overrides: `sam@sam_group_size=4@sam_rho=0.1` ->
    `("sam", {"sam_group_size": "4", "sam_rho": "0.1"})` (values as written)."""
    name, *overrides = method.split("@")
    return name, dict(override.partition("=")[::2] for override in overrides)


def short_name(method: str) -> str:
    """A method spec as a plot label: `ksam@ksam_selection=top_k@sam_rho=0.01` -> `ksam top_k rho=0.01`."""
    name, overrides = parse(method)
    shorter = {"ksam_selection": "", "sam_rho": "rho", "learning_rate": "lr", "ksam_uniform_mix": "mix",
               "ksam_loss_share": "share", "ksam_k": "k", "num_train_epochs": "epochs", "model_name_or_path": "from"}
    parts = [name]
    for key, value in overrides.items():
        label = shorter.get(key, key)
        if key == "model_name_or_path":
            value = Path(value).parent.name
        parts.append(value if label == "" else f"{label}={value}")
    return " ".join(parts)


