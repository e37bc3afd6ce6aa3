"""Each rule's step against its pass bound, from `benchmarks.step_time` JSON files: the table that leads
`docs/performance.md`.

The pass bound counts what a rule's passes would cost if a pass cost in proportion to its rows: the
ranking forward a third of a forward and backward over the batch, a pass over k of B rows k / B of one
over the batch, the optimizer step once (AdamW's step = 1). Beside it, from each file: the measured
step over AdamW's (paired), the empirical bound (the same passes in plain PyTorch, timed in the same
run) over AdamW's, and measured / empirical bound (what the library adds on top of its passes).

    python -m benchmarks.bound_table docs/performance/step_time_minilm_fixed_cpu_no_page_faults_cheap_rules.json \\
        docs/performance/step_time_bert-base-shaped12_fixed_cuda.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

RANK = 1 / 3
PASS_BOUNDS = {
    "adamw": ("1 forward + backward", 1.0),
    "sam": ("2 over the batch", 2.0),
    "ksam@0.25": ("rank + 2 over k = B/4 (loss_sampled)", RANK + 2 * 0.25),
    "ksam@0.25+top_k": ("rank + 2 over k = B/4 (the paper's top_k)", RANK + 2 * 0.25),
    "ksam@0.25+top_k_ascent": ("rank + ascent over B/4 + descent over B", RANK + 0.25 + 1),
    "random_ascent@0.25": ("ascent over B/4 + descent over B", 1.25),
    "random_ascent@0.125": ("ascent over B/8 + descent over B", 1.125),
    "momentum": ("1 (e from the optimizer's moment)", 1.0),
    "random_direction": ("1 (e drawn at random)", 1.0),
    "sam_every_2": ("2 and 1, alternately", 1.5),
}


def pass_bound(method: str) -> Optional[float]:
    """A benchmark row's pass bound in AdamW's steps: `PASS_BOUNDS` priced for any k (`ksam@K`,
    `ksam@K+top_k`, `ksam@K+top_k_ascent`, `random_ascent@K`) and m-SAM's groups (`sam_mM`: SAM's
    two passes over the batch, group by group); None for a method it cannot price."""
    if method in PASS_BOUNDS:
        return PASS_BOUNDS[method][1]
    if method.startswith("sam_m"):
        return 2.0
    name, _, rest = method.partition("@")
    k_text, _, variant = rest.partition("+")
    try:
        k = float(k_text)
    except ValueError:
        return None
    if name == "ksam" and variant in ("", "top_k"):
        return RANK + 2 * k
    if name == "ksam" and variant == "top_k_ascent":
        return RANK + k + 1
    if name == "random_ascent" and not variant:
        return 1 + k
    return None


def label(data: dict) -> str:
    args, machine = data.get("args", {}), data.get("machine", {})
    device = machine.get("cuda_device") or machine.get("cpu_model") or "?"
    return f"{args.get('model')} {args.get('batch_size')}x{args.get('seq_len')} {args.get('device')} ({device})"


def table(paths: list[Path]) -> list[str]:
    files = [json.loads(path.read_text()) for path in paths]
    rows = {path: {row["method"]: row for row in data["rows"]} for path, data in zip(paths, files)}
    header = "| rule | passes | pass bound x AdamW | " + " | ".join(
        f"{label(data)}: measured x AdamW | empirical bound x AdamW | measured / bound" for data in files) + " |"
    lines = [header, "|---" * (3 + 3 * len(files)) + "|"]
    for method, (passes, bound) in PASS_BOUNDS.items():
        cells = []
        for path in paths:
            row: Optional[dict] = rows[path].get(method)
            adamw = rows[path].get("adamw")
            if row is None or adamw is None:
                cells += ["—"] * 3
                continue
            empirical = row["bound_ms"] / adamw["median_ms"] if row.get("bound_ms") else None
            cells += [f"{row['paired_ratio_to_adamw']:.2f}", "—" if empirical is None else f"{empirical:.2f}",
                      f"{row['measured_over_bound']:.2f}" if row.get("measured_over_bound") else "—"]
        lines.append(f"| `{method}` | {passes} | {bound:.2f} | " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> list[str]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bound_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", type=Path, nargs="+", help="benchmarks.step_time JSON files")
    lines = table(parser.parse_args(argv).files)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
