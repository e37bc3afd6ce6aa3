"""Take a study to a lent GPU machine: only the checkout travels (64 MiB at most, not `../shared`).

`pack` (here): the model's weights rounded to fp16 (MiniLM: 88 MB -> 45 MB) and the tasks' GLUE
TSVs into an ignored folder, to name in the device tool's `carry`. `unpack` (there): the weights
cast back to fp32 into a model folder the grid reads. Every run there starts from the same,
slightly rounded, weights: label such rows with their machine and pair seeds within one machine.

    python -m studies.device_copy pack --model ../shared/models/all-MiniLM-L6-v2 --glue_dir ../shared/glue \\
        --tasks MRPC SST-2 --out .device
    python -m studies.device_copy unpack --packed .device/model_fp16 --out /tmp/minilm      # on the GPU machine
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file, save_file

WEIGHTS = "model.safetensors"


def cast_weights(source: Path, target: Path, half: bool) -> None:
    """The model folder `source` into `target`: its files copied, its floating-point weights cast to
    fp16 (`half`) or fp32."""
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != WEIGHTS and path.suffix in (".json", ".txt", ".model"):
            shutil.copy2(path, target / path.name)
    weights = load_file(source / WEIGHTS)
    save_file({k: (v.half() if half else v.float()) if v.is_floating_point() else v for k, v in weights.items()},
              target / WEIGHTS, metadata={"format": "pt"})


def pack(model: Path, glue_dir: Path, tasks: list[str], out: Path) -> None:
    cast_weights(model, out / "model_fp16", half=True)
    for task in tasks:
        (out / "glue" / task).mkdir(parents=True, exist_ok=True)
        for split in ("train.tsv", "dev.tsv"):
            shutil.copy2(glue_dir / task / split, out / "glue" / task / split)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studies.device_copy", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    packing = verbs.add_parser("pack", help="here: fp16 weights and the tasks' TSVs into an ignored folder")
    packing.add_argument("--model", type=Path, required=True)
    packing.add_argument("--glue_dir", type=Path, required=True)
    packing.add_argument("--tasks", nargs="+", required=True, help="GLUE folder names, e.g. MRPC SST-2")
    packing.add_argument("--out", type=Path, default=Path(".device"))
    unpacking = verbs.add_parser("unpack", help="there: the fp16 weights cast back to fp32")
    unpacking.add_argument("--packed", type=Path, required=True)
    unpacking.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.verb == "pack":
        pack(args.model, args.glue_dir, args.tasks, args.out)
    else:
        cast_weights(args.packed, args.out, half=False)


if __name__ == "__main__":
    main()
