"""One method's trainer step against its bound, the two alone in the process: steps repeated one
after the other, no other method's model or optimizer in memory.

`benchmarks.step_time` interleaves every method and bound over their own copies of the model (a
2-layer BERT-base-shaped model with its optimizer state is about 0.6 GB a copy), so a figure there
can carry the memory traffic of its neighbours. When a measured / bound ratio there looks like the
library's overhead, this tells the two apart: alone, the step and its bound share nothing but the
model and the batch.

    python -m benchmarks.alone --method sam --model bert-base-shaped --layers 2 --dtype bf16 --batch-size 8 --seq-len 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from .common import MODELS, build_model, collate, machine_info, median, random_examples
from .runners import BoundRunner, Method, MethodRunner, TrainerSettings, make_trainer

MODES = ("none", "sam", "momentum", "random_direction")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.alone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=MODES, default="sam", help="the trainer's sam_mode")
    parser.add_argument("--model", choices=MODELS, default="bert-base-shaped")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each, alternating")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ksam_alone_") as folder:
        settings = TrainerSettings(rho=0.05, seed=0, batch_size=args.batch_size, use_cpu=True, output_dir=folder,
                                   bf16=args.dtype == "bf16")
        method = Method(args.method, args.method)
        trainer = MethodRunner(method, make_trainer(method, build_model(args.model, layers=args.layers,
                                                                        seq_len=args.seq_len), settings))
        bound = BoundRunner(trainer)
        batch = collate(random_examples(args.batch_size, args.seq_len, 30522, seed=0, varied_lengths=False))
        times: dict[str, list[float]] = {"trainer": [], "bound": []}
        for round_index in range(args.steps + 1):  # the first round warms up
            for name, runner in (("trainer", trainer), ("bound", bound)):
                started = time.perf_counter()
                runner.step(batch)
                if round_index:
                    times[name].append(time.perf_counter() - started)
    ratio = median(times["trainer"]) / median(times["bound"])
    print(f"{args.method}, {args.model} ({args.layers} layers), {args.batch_size}x{args.seq_len}, {args.dtype}, "
          f"alone: trainer {1e3 * median(times['trainer']):.1f} ms, bound {1e3 * median(times['bound']):.1f} ms, "
          f"measured / bound {ratio:.3f} (medians of {args.steps})")
    return {"args": vars(args), "machine": machine_info(torch.device("cpu")), "step_times_s": times,
            "measured_over_bound": ratio}


if __name__ == "__main__":
    main()
