"""What sharpness-aware training buys that training less does not (issue 39): every arm against
AdamW early-stopped on a noisy validation split, on the held-out score and on what compression
costs the model.

Reads `<results_dir>/<cell>/results.jsonl` (the grid's rows of `studies/specs/beyond_training_less*.json`:
every arm early-stopped, `--eval_compressed`). Per cell and arm, paired by seed with the
early-stopped AdamW (`--baseline`): the held-out score of the best model (and of the last), and for
each compression (int8, pruning 30/50/70 %, weight noise 0.01/0.02/0.05) the arm's drop minus
AdamW's drop (below 0: the arm loses less to it), and the score after it minus AdamW's (what a user who
ships the compressed model gets). Intervals are t-intervals Bonferroni-corrected
over the cells (each at 1 - 0.05 / cells; `--set_aside` cells, reported, are not counted). Per cell too: each family (SAM, m-SAM at each m) tuned
as a user would, by the validation split alone, against the plain control tuned the same way; and, post
hoc, each family at its best on the held-out block (arm and model) against the plain family at its best,
also on the fresh seeds alone (those neither choice was made on). Writes `beyond.md` (the tables and the verdict lines)
and `beyond.png` (held-out difference and four drops per arm, a colour per cell). What a row measures is
`studies.beyond_outcomes`; the protocol's own decisions (too noisy, signs in the pilot, the floor), `studies.beyond_protocol`.

    python -m studies.summarize_beyond docs/results/beyond-training-less
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

from studies.beyond_outcomes import COMPRESSIONS, LAST_VS_STOPPED, SCORED, outcome, paired, paired_models
from studies.beyond_protocol import (above_floor, floor_line, floors_by_seed, pilot_rows, pilot_sign_line,
                                     precision_line, resolves_less)
from studies.methods import PLAIN_METHODS, parse, short_name
from studies.rows import load_rows
from studies.stats import bonferroni, difference_cell, interval
from studies.tasks import run_input_blind

PLOTTED = ("heldout", LAST_VS_STOPPED, "int8", "prune50", "prune70", "noise0.02")

SET_ASIDE = "set_aside.json"
"""In the results folder: {cell: why} for the cells a rule set aside (the study's record of its outcome);
`--set_aside` adds cells from the command line."""

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COST = REPO / "docs/performance/step_time_minilm_sst2_cpu_m_sam.json"
"""Where an arm's step cost is read: a clean, paired `benchmarks.step_time` run on the study's batches
(the study's own runs share a loaded machine: their step times are not a benchmark)."""


def shown(path: Path) -> str:
    """`path` relative to the repository where it lies inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def step_cost(method: str, benchmark: dict[str, float]) -> Optional[float]:
    """The arm's step over AdamW's in the benchmark: a plain control's step is AdamW's (its learning
    rate and label smoothing change no pass); SAM's is `sam`, m-SAM's `sam_m<m>`; None where the
    benchmark has no such row."""
    name, fields = parse(method)
    if name in PLAIN_METHODS:
        return 1.0
    if name == "sam":
        return benchmark.get(f"sam_m{fields['sam_group_size']}" if "sam_group_size" in fields else "sam")
    return None


def runs_step_ratio(rows: list[dict], method: str) -> Optional[float]:
    """What the study's own runs paid, on their own batches (length-grouped, so short): the median over seeds
    of the arm's median step time over the same seed's plain step (the median over the plain controls' runs,
    whose passes are AdamW's, so that one run slowed by other work on the machine moves it little; the
    benchmark's runners are interleaved, these runs are not)."""
    plain: dict[int, list[float]] = {}
    for r in rows:
        if family(r["method"]) == "plain" and r["results"].get("train_median_step_time"):
            plain.setdefault(r["seed"], []).append(r["results"]["train_median_step_time"])
    ratios = [r["results"]["train_median_step_time"] / statistics.median(plain[r["seed"]]) for r in rows
              if r["method"] == method and r["results"].get("train_median_step_time") and r["seed"] in plain]
    return statistics.median(ratios) if ratios else None


def cell_lines(name: str, rows: list[dict], baseline: str, level: float, benchmark: dict[str, float],
               planned_cells: int, glue_dir: Optional[str] = None, set_aside: bool = False) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    header = ("| arm | seeds | input-blind | held-out (best) | above the floor | - AdamW | last model - AdamW's last | "
              "last model - AdamW early-stopped | "
              + " | ".join(f"{c} drop - AdamW's" for c in COMPRESSIONS) + " | step / AdamW (benchmark) | step / AdamW (these runs) |")
    lines = [f"### {name}", "", f"Baseline: `{baseline}`, early-stopped as every arm; intervals at "
             f"{100 * level:.2f} % (Bonferroni over the cells). Input-blind: runs whose best or last model ends at the dev "
             "loss of the uniform predictor (ln classes) or predicts one class for every held-out row: their scores "
             "measure nothing learnt.", "", *precision_line(rows, baseline, planned_cells), *floor_line(rows, glue_dir),
             *pilot_sign_line(rows, baseline, plain_at_best(pilot_rows(rows), baseline), set_aside), header,
             "|---" * (10 + len(COMPRESSIONS)) + "|"]
    floors = floors_by_seed(rows, glue_dir)  # once a cell: a replayed floor reads the GLUE files
    for method in methods:
        own = [r["heldout_score"] for r in rows if r["method"] == method and r.get("heldout_score") is not None]
        mean = f"{100 * statistics.fmean(own):.1f}" if own else "—"
        cells = [difference_cell(paired(rows, method, baseline, o), level) if method != baseline else ""
                 for o in ("heldout", "last", LAST_VS_STOPPED, *COMPRESSIONS)]
        ratios = (step_cost(method, benchmark), runs_step_ratio(rows, method))
        blind = sum(run_input_blind(r) for r in rows if r["method"] == method)
        margin = above_floor(rows, method, floors)
        lines.append(f"| `{method}` | {len(own)} | {blind or ''} | {mean} | "
                     + ("—" if margin is None else f"{100 * margin:+.1f}") + " | " + " | ".join(cells) + " | "
                     + " | ".join("—" if ratio is None else f"{ratio:.2f}" for ratio in ratios) + " |")
    return (lines + [""] + compressed_lines(rows, methods, baseline, level) + tuned_lines(rows, level)
            + heldout_tuned_lines(rows, level) + seed_lines(rows, methods))


def compressed_lines(rows: list[dict], methods: list[str], baseline: str, level: float) -> list[str]:
    """Each arm's score after each compression minus AdamW's after the same compression: a smaller drop
    from a lower score can still leave the worse compressed model."""
    return (["Score after each compression - AdamW's after it (the held-out difference minus the drop difference), "
             "paired by seed:", "", "| arm | " + " | ".join(COMPRESSIONS) + " |", "|---" * (1 + len(COMPRESSIONS)) + "|"]
            + [f"| `{method}` | " + " | ".join(difference_cell(paired(rows, method, baseline, c + SCORED), level)
                                              for c in COMPRESSIONS) + " |" for method in methods if method != baseline]
            + [""])


def seed_lines(rows: list[dict], methods: list[str]) -> list[str]:
    """Each run's held-out score, best model / last model, by seed: the numbers under every difference."""
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["method"], r["seed"]): r for r in rows}

    def scores(row: Optional[dict]) -> str:
        if row is None:
            return ""
        values = (outcome(row, "heldout"), outcome(row, "last"))
        return " / ".join("—" if v is None else f"{100 * v:.1f}" for v in values)

    return (["Held-out score x 100 of each run, best model / last model:", "",
             "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (1 + len(seeds)) + "|"]
            + [f"| `{m}` | " + " | ".join(scores(by.get((m, s))) for s in seeds) + " |" for m in methods] + [""])


def family(method: str) -> str:
    """What a tuning chooses among: the plain controls (AdamW at any learning rate, label smoothing),
    SAM, m-SAM at each m."""
    name, fields = parse(method)
    if name in PLAIN_METHODS:
        return "plain"
    return f"{name} m={fields['sam_group_size']}" if "sam_group_size" in fields else name


def validation(row: dict) -> Optional[float]:
    """The best score on the run's noisy validation split: the only score a user tunes by."""
    return row["results"].get("early_stopping_best_score")


def chosen_by(rows: list[dict], score: Callable[[dict, str], Optional[float]], models: tuple[str, ...]
              ) -> dict[str, tuple[str, str, list[int]]]:
    """Per family, the (arm, model) with the best mean `score(row, model)` over the seeds that every
    arm of the family has run (a pilot's seeds), and those seeds; a tie goes to the arm run first."""
    scores: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        for model in models:
            if (value := score(r, model)) is not None:
                scores.setdefault((r["method"], model), {})[r["seed"]] = value
    families: dict[str, list[tuple[str, str]]] = {}
    for key in scores:
        families.setdefault(family(key[0]), []).append(key)
    chosen = {}
    for name, keys in families.items():
        common = sorted(set.intersection(*(set(scores[k]) for k in keys)))
        if common:
            method, model = max(keys, key=lambda k: statistics.fmean(scores[k][s] for s in common))
            chosen[name] = (method, model, common)
    return chosen


def tuned(rows: list[dict]) -> dict[str, tuple[str, list[int]]]:
    """Per family, the arm a user would pick and the seeds it was picked on: the best mean validation
    score, never the held-out; the arm's early-stopped model."""
    return {name: (method, seeds)
            for name, (method, _, seeds) in chosen_by(rows, lambda r, _: validation(r), ("heldout",)).items()}


def at_best_on_heldout(rows: list[dict]) -> dict[str, tuple[str, str, list[int]]]:
    """Per family, the arm and the model (early-stopped, or the last) with the best mean held-out score:
    tuned on the held-out block itself, as the frontier chose SAM's radius and AdamW's epochs. An upper
    bound for every family alike, though the plain family has more candidates to choose among."""
    return chosen_by(rows, outcome, ("heldout", "last"))


def plain_at_best(rows: list[dict], baseline: str) -> tuple[str, str]:
    """The plain control at its best on the held-out block (arm, model), the baseline's early-stopped model where
    no plain arm has a seed every plain arm shares."""
    control, model, _ = at_best_on_heldout(rows).get("plain", (baseline, "heldout", []))
    return control, model


def tuned_lines(rows: list[dict], level: float) -> list[str]:
    """Each SAM family's tuned arm against the tuned plain control, both chosen by the validation split."""
    chosen = tuned(rows)
    if "plain" not in chosen:
        return []
    control, control_seeds = chosen["plain"]
    lines = ["Tuned as a user would, by the validation split alone: in each family the arm with the best mean "
             "validation score over the seeds all its arms have run; each tuned arm's held-out score minus the tuned "
             f"plain control's (`{control}`, chosen on seeds {', '.join(map(str, control_seeds))}), paired by seed.", "",
             "| family | tuned arm | chosen on seeds | held-out - tuned plain control | last model - tuned plain control |",
             "|---|---|---|---|---|"]
    for name, (method, chosen_on) in chosen.items():
        if name != "plain":
            cells = [difference_cell(paired(rows, method, control, o), level) for o in ("heldout", LAST_VS_STOPPED)]
            lines.append(f"| {name} | `{method}` | {', '.join(map(str, chosen_on))} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def heldout_tuned_lines(rows: list[dict], level: float) -> list[str]:
    """Each SAM family at its best on the held-out block against the plain control at its best there."""
    chosen = at_best_on_heldout(rows)
    if "plain" not in chosen:
        return []
    control, control_model, control_seeds = chosen["plain"]
    model_name = {"heldout": "early-stopped", "last": "last"}
    lines = ["Each family at its best on the held-out block (post hoc, an upper bound for every family: the arm and "
             "the model, early-stopped or last, with the best mean held-out score over the seeds all the family's arms "
             "have run), against the plain control chosen the same way "
             f"(`{control}`, its {model_name[control_model]} model, chosen on seeds "
             f"{', '.join(map(str, control_seeds))}), paired by seed over every seed both have, and over the fresh "
             "seeds alone, those neither choice was made on (free of the choice's optimism).", "",
             "| family | arm | model | chosen on seeds | held-out - plain control at its best | the same, fresh seeds |",
             "|---|---|---|---|---|---|"]
    for name, (method, model, chosen_on) in chosen.items():
        if name != "plain":
            cells = [difference_cell(paired_models(rows, method, model, control, control_model, leaving_out), level)
                     for leaving_out in (frozenset(), frozenset(chosen_on) | frozenset(control_seeds))]
            lines.append(f"| {name} | `{method}` | {model_name[model]} | {', '.join(map(str, chosen_on))} | "
                         f"{cells[0]} | {cells[1]} |")
    return lines + [""]


def separated(rows: list[dict], method: str, baseline: str, name: str, level: float) -> Optional[str]:
    """"above" / "below" where the interval excludes 0, else None."""
    values = paired(rows, method, baseline, name)
    if len(values) < 2:
        return None
    _, low, high = interval(values, level)
    return "above" if low > 0 else "below" if high < 0 else None


def outcome_label(what: str) -> str:
    """An outcome as the verdict lines name it."""
    if what.endswith(SCORED):
        return f"score after {what.removesuffix(SCORED)}"
    return {"heldout": "held-out score", LAST_VS_STOPPED: "last model's held-out score (secondary)"}.get(what, f"{what} drop")


def verdict_lines(cells: dict[str, list[dict]], baseline: str, level: float) -> list[str]:
    lines = []
    methods = list(dict.fromkeys(r["method"] for rows in cells.values() for r in rows if r["method"] != baseline))
    for method in methods:
        found = []
        for name, rows in cells.items():
            for what in ("heldout", LAST_VS_STOPPED, *COMPRESSIONS, *(c + SCORED for c in COMPRESSIONS)):
                side = separated(rows, method, baseline, what, level)
                if side:
                    found.append(f"{name}: {outcome_label(what)} {side} AdamW's" + (" early-stopped one" if what == LAST_VS_STOPPED else ""))
        seeds = ", ".join(f"{name} {len(paired(rows, method, baseline, 'heldout'))}" for name, rows in cells.items()
                          if any(r["method"] == method for r in rows))
        lines.append(f"- `{method}` (paired seeds: {seeds}): "
                     + ("; ".join(found) if found else "nothing separated from the early-stopped AdamW") + ".")
    return lines


def plot(cells: dict[str, list[dict]], baseline: str, path: Path, level: float) -> None:
    """Per outcome, each arm's paired differences to the baseline, a colour per cell: every seed's (dots),
    their mean (a marker) and, from 3 seeds, the interval at `level` (with 2 seeds it spans tens of points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for rows in cells.values() for r in rows if r["method"] != baseline))
    columns, panel_rows = 3, -(-len(PLOTTED) // 3)
    fig, axes = plt.subplots(panel_rows, columns, squeeze=False,
                             figsize=(4.5 * columns, (2 + 0.2 * len(methods)) * panel_rows))
    for ax in axes.flat[len(PLOTTED):]:
        ax.set_visible(False)
    for index, (ax, what) in enumerate(zip(axes.flat, PLOTTED)):
        for offset, (name, rows) in enumerate(cells.items()):
            label = name
            for y, method in enumerate(methods):
                values = paired(rows, method, baseline, what)
                if values:
                    mean, low, high = interval(values, level)
                    at = y + 0.15 * offset
                    if len(values) >= 3:
                        ax.plot([100 * low, 100 * high], [at, at], color=f"C{offset}", lw=1.2)
                    ax.plot([100 * v for v in values], [at] * len(values), ".", color=f"C{offset}", alpha=0.35, ms=3)
                    ax.plot(100 * mean, at, "o", color=f"C{offset}", label=label)
                    label = None
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(methods)), [short_name(m) for m in methods] if index % columns == 0 else [""] * len(methods),
                      fontsize=7)
        ax.set_title({"heldout": "held-out - AdamW", LAST_VS_STOPPED: "last model - AdamW early-stopped"
                      }.get(what, f"{what} drop - AdamW's"), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.supxlabel(f"points x 100 (early-stopped AdamW = 0): each paired seed (dots), their mean (marker), from 3 seeds "
                  f"the {100 * level:.2f} % interval (line)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m studies.summarize_beyond", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="a folder of cell folders, each with a results.jsonl")
    parser.add_argument("--baseline", default="adamw")
    parser.add_argument("--cost", type=Path, default=DEFAULT_COST,
                        help="a benchmarks.step_time JSON whose paired ratios give each arm's step over AdamW's")
    parser.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "glue"),
                        help="the GLUE TSVs, to replay the floor of rows written before run_glue.py recorded it")
    parser.add_argument("--planned_cells", type=int, default=4,
                        help="the cells the study will end with: the level of each cell's precision line")
    parser.add_argument("--set_aside", nargs="*", default=[], metavar="CELL",
                        help="cells a rule set aside: their tables are written, but they stay out of the verdict, "
                             "the plot and the Bonferroni count")
    parser.add_argument("--resolves_less", nargs=2, metavar=("CELL", "ANCHOR"),
                        help="only say whether CELL's planned interval is wider than ANCHOR's (exit status 0: "
                             "wider, CELL is too noisy; 1: not wider); writes nothing")
    args = parser.parse_args(argv)
    if args.resolves_less:  # exit status 0 or 1 is the answer; an error is argparse's 2
        paths = [args.results_dir / name / "results.jsonl" for name in args.resolves_less]
        if missing := [str(path) for path in paths if not path.exists()]:
            parser.error(f"--resolves_less: no rows at {', '.join(missing)}")
        wider = resolves_less(*(load_rows(path) for path in paths), args.baseline, args.planned_cells)
        if wider is None:
            parser.error(f"--resolves_less {' '.join(args.resolves_less)}: a cell has no arm with two paired seeds "
                         "yet, so no spread to compare: run its pilot first")
        print(f"{args.resolves_less[0]} {'resolves less than' if wider else 'resolves at least as much as'} "
              f"{args.resolves_less[1]}")
        raise SystemExit(0 if wider else 1)
    cost = json.loads(args.cost.read_text())
    benchmark = {row["method"]: row["paired_ratio_to_adamw"] for row in cost["rows"]}
    cells = {folder.name: load_rows(folder / "results.jsonl") for folder in sorted(args.results_dir.iterdir())
             if (folder / "results.jsonl").exists()}
    cells = {name: rows for name, rows in cells.items() if rows}
    if not cells:
        raise SystemExit(f"summarize_beyond: no rows under {args.results_dir}: run the grid first.")
    if unknown := sorted(set(args.set_aside) - set(cells)):
        raise SystemExit(f"summarize_beyond: --set_aside {' '.join(unknown)}: no such cell with rows under "
                         f"{args.results_dir}; its cells are {', '.join(cells)}.")
    record = args.results_dir / SET_ASIDE
    reasons = {name: reason for name, reason in (json.loads(record.read_text()) if record.exists() else {}).items()
               if name in cells}
    reasons.update({name: "--set_aside" for name in args.set_aside if name not in reasons})
    counted = {name: rows for name, rows in cells.items() if name not in reasons}
    if not counted:
        raise SystemExit("summarize_beyond: --set_aside leaves no cell for the verdict.")
    level = bonferroni(len(counted))
    text = [f"Written by `python -m studies.summarize_beyond {' '.join(sys.argv[1:] if argv is None else argv)}`.", "",
            "Scores x 100. Every arm early-stopped: the best model by the noisy validation split, scored every half "
            "epoch; held-out (best) is that model's score on the held-out block, `last` the last model's. A drop is "
            "the model's own held-out score minus its score after the compression; drop - AdamW's below 0: the arm "
            "keeps more of its score than AdamW does. Step / AdamW: the paired ratio of the clean benchmark "
            f"`{shown(args.cost)}` ({cost.get('title') or cost['args'].get('inputs')} batches, on "
            f"{cost.get('machine', {}).get('cpu_model', '?')}); the study's own runs share a loaded machine, and their "
            "ratio (these runs: the median over seeds of each run's median step over the median of the same seed's plain "
            "controls' runs) is what they paid on their own batches, length-grouped and so shorter than the "
            "benchmark's.", ""]
    for name, rows in cells.items():
        text += cell_lines(name, rows, args.baseline, level, benchmark, args.planned_cells, args.glue_dir,
                           set_aside=name in reasons)
        if name in reasons:
            text += [f"Set aside ({reasons[name]}): {name}'s tables stay, but it is left out of the verdict, the plot "
                     "and the Bonferroni count.", ""]
    text += ["## Verdict, computed", "", f"Over the cells {', '.join(counted)}"
             + (f" ({', '.join(reasons)} set aside)" if reasons else "") + ".", "",
             *verdict_lines(counted, args.baseline, level), ""]
    (args.results_dir / "beyond.md").write_text("\n".join(text))
    plot(counted, args.baseline, args.results_dir / "beyond.png", level)
    print("\n".join(text))
    return "\n".join(text)


if __name__ == "__main__":
    main()
