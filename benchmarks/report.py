"""What `step_time` reports: one row per method against AdamW and its bound, the PASS / FAIL
targets, and the files (CSV, JSON, plot, profiles), never written over unless asked."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .bound_table import pass_bound
from .common import MIB, median, quantile
from .runners import VARIANT_K, MethodRunner

BOUND_LIMIT = 1.05  # K-SAM measured / bound
KSAM_VS_ADAMW_LIMIT = 0.85  # K-SAM at k = KSAM_VS_ADAMW_K / AdamW
KSAM_VS_ADAMW_K = VARIANT_K
TOP_K_ASCENT_VS_ADAMW_LIMIT = 1.7  # a full descent, a ranking forward and an ascent on k: more than AdamW
SAM_VS_ADAMW_LIMIT = 2.0
MEMORY_SLACK = 0.01  # of the parameters' bytes: small tensors (losses, indices) differ between the steps


# ----------------------------------------------------------------------------------------- files
def profile_file(stem: str, runner_name: str) -> str:
    return f"{stem}_profile_{runner_name.replace('@', '_k')}.txt"


def output_paths(output_dir: Path, stem: str, profiled: list[str]) -> list[Path]:
    """Every file a run will write: the CSV, JSON and plot, and a profile per profiled runner."""
    return [output_dir / f"{stem}.{ext}" for ext in ("csv", "json", "png")] + \
        [output_dir / profile_file(stem, name) for name in profiled]


def refuse_overwrite(paths: list[Path]) -> None:
    """Stop (before any work) if a file of this run exists: results of an earlier run are kept
    unless `--overwrite` says otherwise."""
    existing = [path for path in paths if path.exists()]
    if existing:
        raise SystemExit(f"step_time: {existing[0]} exists; pass --overwrite to replace it "
                         "(or choose another --tag or --output-dir)")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_json(result: dict[str, Any], path: Path) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def write_profile(profile: dict[str, Any], path: Path, header: str) -> None:
    """The profiled step's labelled regions (inclusive CPU time) and its top ops by self time."""
    with open(path, "w") as f:
        f.write(f"# {header} (profiler overhead included)\n\n")
        f.write("## phases (inclusive CPU time; ksam/*: KSAMTrainer's record_function labels, "
                "step/*: the Trainer-loop parts, labelled by the benchmark)\n\n")
        for key, value in sorted(profile["phases"].items()):
            f.write(f"{key:<60} {value['cpu_total_ms']:10.2f} ms  x{value['count']}\n")
        if profile["training_step_outside_ksam_phases_ms"] is not None:
            f.write(f"{'training_step outside the ksam/* regions':<60} "
                    f"{profile['training_step_outside_ksam_phases_ms']:10.2f} ms\n")
        f.write("\n## top ops by self time\n\n" + profile["table"] + "\n")


# ----------------------------------------------------------------------------------------- rows and targets
def summarise(methods: list[MethodRunner], times: dict[str, list[float]], faults: dict[str, list[int]],
              peaks: dict[str, float], param_bytes: int,
              batch_size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per method (with its bound where timed); the targets, each PASS / FAIL:
    K-SAM within BOUND_LIMIT of its bound; K-SAM at KSAM_VS_ADAMW_K within KSAM_VS_ADAMW_LIMIT x
    AdamW (TOP_K_ASCENT_VS_ADAMW_LIMIT for `top_k_ascent`, whose descent is on the whole batch);
    SAM within SAM_VS_ADAMW_LIMIT x AdamW; SAM and K-SAM within AdamW's peak memory plus one copy
    of the trainable parameters."""
    med = {name: median(values) for name, values in times.items()}
    paired = paired_ratios(times)
    adamw, adamw_peak = med["adamw"], peaks["adamw"]
    rows, targets = [], []
    for runner in methods:
        m, name, bound = runner.method, runner.name, f"bound:{runner.name}"
        has_bound = bound in med
        kept = runner.kept()
        passes = pass_bound(name)
        row = {"method": name, "mode": m.mode, "variant": m.variant or "", "k": "" if m.k is None else m.k,
               "k_examples": batch_size if kept is None else kept,
               "median_ms": 1e3 * med[name], "p25_ms": 1e3 * quantile(times[name], 0.25),
               "p75_ms": 1e3 * quantile(times[name], 0.75), "ratio_to_adamw": med[name] / adamw,
               # per round (the same batch for every runner), then the median and the mean over rounds:
               # steadier than the ratio of medians when the batches' lengths vary, and the mean is the
               # cost of a rule whose steps alternate (SAM on every 2nd step)
               "paired_ratio_to_adamw": paired[name][0], "mean_paired_ratio_to_adamw": paired[name][1],
               "bound_ms": 1e3 * med[bound] if has_bound else "",
               "measured_over_bound": med[name] / med[bound] if has_bound else "",
               "overhead_ms": 1e3 * (med[name] - med[bound]) if has_bound else "",
               # the step minus its passes priced in AdamW's steps (bound_table.pass_bound)
               "pass_bound": "" if passes is None else passes,
               "over_pass_bound_ms": "" if passes is None else 1e3 * (med[name] - passes * adamw),
               "peak_step_mib": peaks[name] / MIB,
               "bound_peak_step_mib": peaks[bound] / MIB if has_bound else "",
               "peak_over_adamw_mib": (peaks[name] - adamw_peak) / MIB,
               "params_mib": param_bytes / MIB,
               "page_faults": median(faults[name]),
               "bound_page_faults": median(faults[bound]) if has_bound else ""}
        checks = []
        if m.mode in ("ksam", "momentum", "random_direction") and has_bound:
            checks.append(("measured/bound", row["measured_over_bound"], BOUND_LIMIT))
        if m.mode == "ksam" and math.isclose(m.k, KSAM_VS_ADAMW_K):
            descends_on_batch = runner.trainer.args.ksam_selection in ("top_k_ascent", "random_ascent")
            checks.append(("x AdamW", row["ratio_to_adamw"],
                           TOP_K_ASCENT_VS_ADAMW_LIMIT if descends_on_batch else KSAM_VS_ADAMW_LIMIT))
        if m.mode == "sam":
            checks.append(("x AdamW", row["ratio_to_adamw"], SAM_VS_ADAMW_LIMIT))
        if m.mode != "none":
            checks.append(("peak MiB", row["peak_step_mib"], (adamw_peak + (1 + MEMORY_SLACK) * param_bytes) / MIB))
        verdicts = []
        for what, value, limit in checks:
            ok = bool(value <= limit)
            verdict = "PASS" if ok else "FAIL"
            targets.append({"method": name, "target": f"{what} <= {limit:.4g}", "value": value, "limit": limit,
                            "pass": ok})
            verdicts.append(f"mem {value:.0f}<={limit:.0f}MiB {verdict}" if what == "peak MiB"
                            else f"{what} {value:.3f}<={limit:.3g} {verdict}")
        row["targets"] = "; ".join(verdicts)
        rows.append(row)
    return rows, targets


def paired_ratios(times: dict[str, list[float]], baseline: str = "adamw") -> dict[str, tuple[float, float]]:
    """Runner -> (median, mean) over the timed rounds of its step time / the baseline's in the same
    round (one batch per round for every runner)."""
    return {name: (median([x / y for x, y in zip(values, times[baseline])]),
                   sum(x / y for x, y in zip(values, times[baseline])) / len(values))
            for name, values in times.items()}


def format_table(rows: list[dict[str, Any]]) -> str:
    def fmt(value: Any, spec: str) -> str:
        if isinstance(value, (int, float)):
            return format(value, spec)
        width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
        return format("-", f"<{width}" if spec.startswith("<") else f">{width}")

    width = max(10, *(len(r["method"]) for r in rows))
    head = (f"{'method':<{width}} {'k':>3} {'median ms':>10} {'IQR ms':>15} {'xAdamW':>7} {'paired':>7} "
            f"{'mean pr':>7} {'bound ms':>9} "
            f"{'/bound':>7} {'pass x':>6} {'over ms':>8} {'peak MiB':>9} {'faults':>7} {'bd flt':>7}  targets")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<{width}} {r['k_examples']:>3} {fmt(r['median_ms'], '10.1f')} "
                     f"{fmt(r['p25_ms'], '7.1f')}-{fmt(r['p75_ms'], '<7.1f')} {fmt(r['ratio_to_adamw'], '7.3f')} "
                     f"{fmt(r['paired_ratio_to_adamw'], '7.3f')} {fmt(r['mean_paired_ratio_to_adamw'], '7.3f')} "
                     f"{fmt(r['bound_ms'], '9.1f')} {fmt(r['measured_over_bound'], '7.3f')} "
                     f"{fmt(r.get('pass_bound'), '6.2f')} {fmt(r.get('over_pass_bound_ms'), '8.1f')} "
                     f"{fmt(r['peak_step_mib'], '9.1f')} {fmt(r['page_faults'], '7.0f')} "
                     f"{fmt(r['bound_page_faults'], '7.0f')}  {r['targets']}")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Step time against k: K-SAM with the default selection as a line (with its bound), the
    variants as points, AdamW and SAM as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_name = {r["method"]: r for r in rows}
    ksam = sorted((r for r in rows if r["mode"] == "ksam" and not r["variant"]), key=lambda r: r["k"])
    variants = [r for r in rows if r["variant"] and isinstance(r["k"], float)]
    without_k = [r for r in rows if r["variant"] and not isinstance(r["k"], float)]  # momentum, ...
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [r["k"] for r in ksam]
    if ksam:
        ax.errorbar(xs, [r["median_ms"] for r in ksam],
                    yerr=[[r["median_ms"] - r["p25_ms"] for r in ksam], [r["p75_ms"] - r["median_ms"] for r in ksam]],
                    fmt="o-", color="C2", capsize=3, label="K-SAM (median, IQR)")
        if all(isinstance(r["bound_ms"], float) for r in ksam):
            ax.plot(xs, [r["bound_ms"] for r in ksam], "--", color="C2", alpha=0.7, label="K-SAM bound")
    for i, r in enumerate(variants):
        ax.plot([r["k"]], [r["median_ms"]], marker="sxD^v"[i % 5], linestyle="none", color=f"C{4 + i}",
                label=f"K-SAM +{r['variant']}")
    for i, r in enumerate(without_k):
        ax.axhline(r["median_ms"], color=f"C{(8 + i) % 10}", linestyle="-.", label=r["method"])
    for name, color, label in (("adamw", "C0", "AdamW"), ("sam", "C3", "SAM")):
        r = by_name[name]
        ax.axhline(r["median_ms"], color=color, label=label)
        if isinstance(r["bound_ms"], float):
            ax.axhline(r["bound_ms"], color=color, linestyle=":", alpha=0.7, label=f"{label} bound")
    ax.set_xlabel("k (fraction of the batch kept by K-SAM)")
    ax.set_ylabel("step time (ms, median)")
    ax.set_xlim(0, max(xs + [r["k"] for r in variants] + [0.5]) * 1.08)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.report RUN.json`: the paired ratios of a saved step_time run, per runner
    (for runs written before the table printed them)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=main.__doc__.split(":")[0])
    parser.add_argument("run", type=Path, help="a step_time JSON file")
    times = json.loads(parser.parse_args(argv).run.read_text())["step_times_s"]
    print(f"{'runner':<32} {'paired x AdamW (median)':>24} {'(mean)':>8}")
    for name, (middle, mean) in paired_ratios(times).items():
        print(f"{name:<32} {middle:24.3f} {mean:8.3f}")


if __name__ == "__main__":
    main()
