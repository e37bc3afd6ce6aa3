"""Convert the rows of the defaults check written before it was a spec of the grid runner (a shell
script's: `variant`, `flags`, `batch`, `run`) into the grid's one row format, in place, once.

Each legacy row becomes the row `studies.grid --spec studies/specs/defaults_check.json` would have
written for the same run: its method spec from the flags it ran and the K-SAM settings it recorded
(a flag repeated: the last wins, as argparse reads it), its settings and key from the spec's
arguments for its task and batch, and its metrics and curve as recorded; where it came from is kept
under `migrated_from`. A file already in the grid's format is left as it is.

    python -m studies.migrate_rows docs/results/defaults docs/results/defaults-gpu
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

from transformers import HfArgumentParser

from studies.grid import ReproductionArguments, run_key, run_settings, spec_argument_list
from studies.rows import load_rows
from studies.tasks import MAIN_METRIC

SPEC = Path(__file__).resolve().parent / "specs" / "defaults_check.json"
RECORDED = ("ksam_selection", "ksam_k", "sam_rho")
"""The K-SAM settings a legacy row's results recorded, in the order its method spec names them."""
LEGACY_MODEL = {"docs/results/defaults-gpu": "/tmp/minilm"}
"""The model path a folder's legacy runs were made with, where it was not the spec's (the GPU's copy)."""


def legacy_method(row: dict) -> str:
    """The method spec of a legacy row: its last `--optimizer`, its other flags and, for K-SAM, the
    selection, k and rho it recorded."""
    flags = row.get("flags", "").split()
    given = {flag.removeprefix("--"): value for flag, value in zip(flags[::2], flags[1::2])}
    name = given.pop("optimizer", "ksam")
    if name == "ksam":
        given.update({key: str(row["results"][key]) for key in RECORDED if key in row["results"]})
    first = RECORDED if name == "ksam" else ()
    ordered = [key for key in first if key in given] + [key for key in given if key not in first]
    return "@".join([name] + [f"{key}={given[key]}" for key in ordered])


def grid_row(row: dict, spec_arguments: dict, model: Optional[str]) -> dict:
    """The grid's row for one legacy row."""
    task, method = row["task"], legacy_method(row)
    arguments = {**spec_arguments, "tasks": [task], "per_device_train_batch_size": row["batch"], "methods": [method]}
    if model:
        arguments["model_name_or_path"] = model
    (args,) = HfArgumentParser(ReproductionArguments).parse_args_into_dataclasses(spec_argument_list(arguments))
    settings = run_settings(task, method, row["seed"], args)
    metric = MAIN_METRIC[task]
    return {"curve": row.get("curve", []), "epochs": [], "task": task, "method": method, "seed": row["seed"],
            "key": run_key(settings), "metric": metric, "score": row["results"][f"eval_{metric}"],
            "heldout_score": None, "settings": settings, "results": row["results"],
            "migrated_from": {key: row[key] for key in ("run", "variant", "flags") if key in row}}


def migrate(folder: Path) -> int:
    """Rewrite `folder/results.jsonl` in the grid's format (atomically); the number of rows converted."""
    path = folder / "results.jsonl"
    rows = load_rows(path)
    legacy = [r for r in rows if "variant" in r and "method" not in r]
    if not legacy:
        return 0
    spec_arguments = {k: v for k, v in json.loads(SPEC.read_text())["arguments"].items()
                      if k not in ("methods", "write_summary")}
    model = LEGACY_MODEL.get(folder.as_posix().rstrip("/"))
    converted = [grid_row(r, spec_arguments, model) if r in legacy else r for r in rows]
    handle, temporary = tempfile.mkstemp(dir=folder, suffix=".jsonl")
    with os.fdopen(handle, "w") as out:
        out.write("".join(json.dumps(r) + "\n" for r in converted))
    os.replace(temporary, path)
    return len(legacy)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.migrate_rows", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", help="folders holding a legacy results.jsonl")
    for folder in parser.parse_args(argv).folders:
        print(f"{folder}: {migrate(folder)} rows converted")


if __name__ == "__main__":
    main()
