"""What keeps `run_glue.py` from reporting one run's numbers as another's, or failing late.

* `InputError`: a problem with what was given (an argument, a data file, the output directory).
  `run_glue.py` prints it as one line and exits with status 2, as argparse does for its own errors;
  a bug keeps its traceback.
* The output directory is created and probed before anything is loaded, so an unwritable one fails
  in seconds, not when the model is saved after training.
* Every checkpoint records the settings of the run that wrote it (`run_settings.json`, written by
  `RunSettingsRecorder` once the Trainer has saved the rest of the checkpoint, so the file also marks
  the checkpoint complete). A run resumes only from the newest complete checkpoint of a run with the
  same settings; a folder of another run's results is refused unless `--overwrite_output_dir`.
* `write_json_atomic`: results are renamed into place, so another process never reads half a file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

SETTINGS_NAME = "run_settings.json"
TRAINER_STATE_NAME = "trainer_state.json"
WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
"""A checkpoint holds one of these (the model's weights, whole or as the index of its shards)."""
PROBE_PREFIX = ".run_glue-probe-"
CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
RESULT_PATTERNS = ("all_results.json", "train_results.json", "eval_results.json", "predict_results*.txt",
                   TRAINER_STATE_NAME, ".all_results.json.*.tmp")
"""Files a run writes at its end. A resumed run rewrites them; `Trainer.save_metrics` would otherwise
merge the old ones into the new `all_results.json`."""
MODEL_PATTERNS = ("config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
                  "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
                  "training_args.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                  "sentencepiece.bpe.model", "chat_template.jinja", "runs")
"""What `trainer.save_model()` (and the default logging directory) put in the output directory."""
MISSING = object()


class InputError(ValueError):
    """A problem with the run's input, reported as one line that says what to change.

    A `ValueError`, so that callers of `main()` that catch those keep working."""

    def __init__(self, message: Any) -> None:
        super().__init__(" ".join(str(message).split()))


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that is not there (also a `FileNotFoundError`)."""


@contextmanager
def input_errors(*also: type[Exception], prefix: str = "") -> Iterator[None]:
    """Treat the `ValueError`s and `FileNotFoundError`s (and the exception types `also`) raised inside
    as input problems. Only around argument parsing and loading inputs: the same exceptions from
    training are bugs, and keep their traceback."""
    try:
        yield
    except InputError:
        raise
    except FileNotFoundError as error:
        raise MissingInputError(f"{prefix}{error}") from error
    except (ValueError, *also) as error:
        raise InputError(f"{prefix}{error}") from error


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` to a temporary file beside `path` and rename it over `path`: a process reading
    `path` meanwhile (another DDP rank) sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(json.dumps(data, indent=4, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def plain(value: Any) -> Any:
    """A setting as JSON holds it (enums by value), so that recorded and current settings compare."""
    return value.value if isinstance(value, Enum) else value


def settings_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`name: old -> new` for each setting that differs (a setting one side lacks shows as `(not recorded)`)."""
    new = json.loads(json.dumps(new))  # floats, ints and None as they read back from the file

    def shown(settings: Mapping[str, Any], name: str) -> str:
        value = settings.get(name, MISSING)
        return "(not recorded)" if value is MISSING else str(value)

    names = list(new) + [name for name in old if name not in new]
    return [f"{name}: {shown(old, name)} -> {shown(new, name)}"
            for name in names if old.get(name, MISSING) != new.get(name, MISSING)]


class RunSettingsRecorder(TrainerCallback):
    """Writes the run's settings into every checkpoint it saves. `on_save` comes once the Trainer has
    written the whole checkpoint (weights, optimizer, trainer state), so the file also marks it complete."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and folder.is_dir():
            write_json_atomic(folder / SETTINGS_NAME, self.settings)


@dataclass(frozen=True)
class Checkpoint:
    """A `checkpoint-<step>` folder."""

    path: Path
    step: int

    def problem(self) -> Optional[str]:
        """Why training cannot resume from it (it was being written when the run was killed), or None."""
        state = self.path / TRAINER_STATE_NAME
        if not state.is_file():
            return f"no {TRAINER_STATE_NAME}"
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            return f"{TRAINER_STATE_NAME} is not readable JSON"
        if not any((self.path / name).is_file() for name in WEIGHTS_NAMES):
            return f"no {WEIGHTS_NAMES[0]}"
        return None

    def settings(self) -> Optional[dict[str, Any]]:
        """The settings of the run that wrote it; None where it has none (or none that can be read)."""
        try:
            return json.loads((self.path / SETTINGS_NAME).read_text())
        except (OSError, ValueError):
            return None

    def progress(self) -> tuple[int, int]:
        """(the step it was saved at, the run's last step)."""
        state = json.loads((self.path / TRAINER_STATE_NAME).read_text())
        return int(state.get("global_step", self.step)), int(state.get("max_steps") or 0)


def checkpoints_in(folder: Path) -> list[Checkpoint]:
    """The `checkpoint-<step>` folders in `folder`, the newest first."""
    found = [Checkpoint(path, int(match.group(1))) for path in folder.iterdir()
             if path.is_dir() and (match := CHECKPOINT_NAME.match(path.name))]
    return sorted(found, key=lambda checkpoint: checkpoint.step, reverse=True)


@dataclass
class Resume:
    """Where training starts, and what `all_results.json` says about it."""

    checkpoint: Optional[str] = None
    finished: bool = False
    """The checkpoint is the last step of its run: nothing is left to train."""
    changed_settings: list[str] = field(default_factory=list)
    """An explicit `--resume_from_checkpoint` of a run with other settings: what changed."""

    def results(self) -> dict[str, Any]:
        results = {"resumed_from_checkpoint": self.checkpoint, "resumed_finished_run": self.finished}
        if self.changed_settings:
            results["resumed_with_changed_settings"] = self.changed_settings
        return results


def prepare_output_dir(output_dir: str, settings: Mapping[str, Any], *, do_train: bool, overwrite: bool,
                       resume_from_checkpoint: Optional[str], loaded_paths: Mapping[str, Optional[str | Path]],
                       may_delete: bool) -> Resume:
    """Check the output directory and decide where training starts.

    - It must be writable (created if absent).
    - `overwrite`: what an earlier run wrote there (checkpoints, results, model files) is deleted; other
      files are kept. Refused if that would delete a model or checkpoint the run loads (`loaded_paths`:
      option -> path).
    - An explicit `resume_from_checkpoint` is used as given (a complete checkpoint); settings that
      differ from the checkpoint's are logged and returned.
    - Training with checkpoints there: resume from the newest complete one if it was written with the
      same `settings`, else refuse, saying what differs.
    - Otherwise the directory must be empty: old results would be merged into the new ones.

    `may_delete`: this process deletes (the one that saves; the others decide the same from what it left).
    """
    root = Path(output_dir)
    check_writable(root)
    explicit = Path(resume_from_checkpoint) if do_train and resume_from_checkpoint else None
    if overwrite:
        clear_earlier_run(root, loaded_paths={**loaded_paths, "--resume_from_checkpoint": explicit},
                          may_delete=may_delete)
    if explicit is not None:
        return resume_explicitly(root, explicit, settings, may_delete)
    if do_train and not overwrite:
        checkpoints = checkpoints_in(root)
        if checkpoints:
            return resume_automatically(root, checkpoints, settings, may_delete)
    leftovers = entries(root)
    if leftovers and not overwrite:
        shown = ", ".join(leftovers[:6]) + (f" and {len(leftovers) - 6} more" if len(leftovers) > 6 else "")
        raise InputError(f"--output_dir {root} is not empty ({shown}): pass --overwrite_output_dir to replace "
                         "the results of the earlier run there, or choose another --output_dir.")
    return Resume()


def check_writable(root: Path) -> None:
    """Create `root` and write a probe file in it."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f"{PROBE_PREFIX}{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise InputError(f"--output_dir {root} cannot be written ({error.strerror or error}): choose another "
                         "--output_dir.") from None


def entries(root: Path) -> list[str]:
    """The names in `root`, without other processes' probe files."""
    return sorted(path.name for path in root.iterdir() if not path.name.startswith(PROBE_PREFIX))


def outputs_of_a_run(root: Path, checkpoints: bool) -> list[Path]:
    """What a run of run_glue.py writes in `root`: its results, model files and (`checkpoints`) checkpoints."""
    patterns = RESULT_PATTERNS + (MODEL_PATTERNS if checkpoints else ())
    found = {path for pattern in patterns for path in root.glob(pattern)}
    if checkpoints:
        found |= {checkpoint.path for checkpoint in checkpoints_in(root)}
    return sorted(found)


def remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def clear_earlier_run(root: Path, loaded_paths: Mapping[str, Optional[str | Path]], may_delete: bool) -> None:
    """`--overwrite_output_dir`: delete what an earlier run wrote in `root`, unless the run loads from it."""
    doomed = outputs_of_a_run(root, checkpoints=True)
    for option, value in loaded_paths.items():
        if value is None or not Path(value).exists():
            continue  # a Hub id, or nothing
        path = Path(value).resolve()
        if any(path == gone.resolve() or gone.resolve() in path.parents for gone in doomed) \
                or (path == root.resolve() and any(gone.parent == root for gone in doomed)):
            raise InputError(f"--overwrite_output_dir would delete {option} {value}, which this run loads: "
                             "choose another --output_dir, or copy it out of the output directory first.")
    if may_delete:
        remove(doomed)
        kept = entries(root)
        if kept:
            logger.warning(f"--overwrite_output_dir: kept {', '.join(kept)} in {root}: run_glue.py did not write them.")


def resume_explicitly(root: Path, path: Path, settings: Mapping[str, Any], may_delete: bool) -> Resume:
    """`--resume_from_checkpoint PATH`: resume from it, whatever run wrote it, saying what changed."""
    if not path.is_dir():
        raise MissingInputError(f"--resume_from_checkpoint {path}: no such directory; give a checkpoint-<step> "
                                "folder of an earlier run.")
    match = CHECKPOINT_NAME.match(path.name)
    checkpoint = Checkpoint(path, int(match.group(1)) if match else 0)
    problem = checkpoint.problem()
    if problem is not None:
        raise InputError(f"--resume_from_checkpoint {path} is incomplete ({problem}): give an earlier checkpoint.")
    recorded = checkpoint.settings()
    changed = [] if recorded is None else settings_differences(recorded, settings)
    if recorded is None:
        logger.warning(f"{path} has no {SETTINGS_NAME}: resuming from it as asked, without checking that it "
                       "was written with this run's settings.")
    elif changed:
        logger.warning(f"Resuming from {path} as asked, with settings that differ from the run that wrote it: "
                       f"{'; '.join(changed)}.")
    if may_delete:
        remove(outputs_of_a_run(root, checkpoints=False))
    step, last = checkpoint.progress()
    return Resume(str(path), finished=0 < last <= step, changed_settings=changed)


def resume_automatically(root: Path, checkpoints: list[Checkpoint], settings: Mapping[str, Any],
                         may_delete: bool) -> Resume:
    """Checkpoints in the output directory: resume from the newest complete one, if this run wrote it."""
    recording = any(checkpoint.settings() is not None for checkpoint in checkpoints)
    problems = {}
    for checkpoint in checkpoints:
        problem = checkpoint.problem()
        if problem is None and recording and checkpoint.settings() is None:
            problem = f"no {SETTINGS_NAME}"  # written last: the run was killed before it
        problems[checkpoint] = problem
    complete = [checkpoint for checkpoint in checkpoints if problems[checkpoint] is None]
    if not complete:
        newest = checkpoints[0]
        raise InputError(f"{newest.path} is incomplete ({problems[newest]}) and there is no complete checkpoint "
                         f"to resume in --output_dir {root}: pass --overwrite_output_dir to start afresh (deleting "
                         "it), or choose another --output_dir.")
    latest = complete[0]
    for checkpoint in checkpoints:
        if checkpoint.step > latest.step:
            logger.warning(f"{checkpoint.path} is incomplete ({problems[checkpoint]}): the run was killed while "
                           f"saving it. Resuming from {latest.path} instead.")
    recorded = latest.settings()
    if recorded is None:
        raise InputError(f"{latest.path} has no {SETTINGS_NAME} (it was written by an older run_glue.py), so it "
                         "cannot be checked to belong to this run: pass --overwrite_output_dir to start afresh "
                         f"(deleting it), or --resume_from_checkpoint {latest.path} to resume it anyway.")
    changed = settings_differences(recorded, settings)
    if changed:
        raise InputError(f"--output_dir {root}: {latest.path} was written with other settings ({'; '.join(changed)}): "
                         "pass --overwrite_output_dir to start afresh (deleting it), choose another --output_dir, "
                         "or rerun with the checkpoint's settings to resume it.")
    step, last = latest.progress()
    finished = 0 < last <= step
    if finished:
        logger.warning(f"{latest.path} is of a run that had already finished (step {step} of {last}): nothing is "
                       "left to train. Its model is evaluated and saved as this run's, and all_results.json says "
                       "resumed_finished_run: true. Pass --overwrite_output_dir to train afresh.")
    else:
        logger.warning(f"Resuming the interrupted run from {latest.path} (step {step} of {last}).")
    if may_delete:
        remove(outputs_of_a_run(root, checkpoints=False))
    return Resume(str(latest.path), finished=finished)
