"""The cost/gain frontier of the SAM rules (issue 29): what each rule gains over AdamW, the share of
SAM's gain it keeps, what it costs, and the default rule that follows from them.

Reads one cell's rows (`<cell>/results.jsonl`, written by `python -m studies.grid --spec`) and the step
benchmark's JSON files (`python -m benchmarks.step_time`: the CPU's, a GPU's). Per method, over the
seeds it shares with AdamW and SAM: the held-out and dev scores; the paired difference to AdamW,
to SAM, to the control (`random_direction`: is a rule better than a random perturbation?) and to
the best plain-optimizer control (AdamW at another learning rate or length: is it more than a slower
start?) (95 % t-intervals); the share of SAM's gain kept, (rule - AdamW) / (SAM - AdamW) on the
held-out score, with a paired bootstrap interval over seeds (scipy.stats.bootstrap, percentile); its
cost, as the median over seeds of its median step time / AdamW's in the same runs, and as the
benchmark's paired ratio (a schedule that perturbs a share p of the steps costs p x its rule's ratio
+ (1 - p) x AdamW's); and, where a run watched it, the share of flipped labels among the examples
its rule kept. Writes `frontier.md` (the table, the default, the held-out score of every run),
`frontier.png` (gain against cost) and `frontier_curves.png`. With `--defaults_check`, a rule that
ends more than 2 points behind AdamW on a command of the defaults check (clean GLUE,
`studies/specs/defaults_check.json`) is left out of
the default.

    python -m studies.summarize_frontier docs/results/frontier/sst2-n1000-noise30 --sam sam@sam_rho=0.1 \
        --benchmarks docs/performance/step_time_minilm_fixed_cpu_no_page_faults_cheap_rules.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from studies.methods import PLAIN_METHODS, normalized, parse, short_name
from studies.rows import load_rows
from studies.stats import difference_cell, interval, kept_share
from studies.summarize_cells import flat, mean, paired
from studies.summarize_defaults import METRIC, command, variant_settings
from studies.tasks import at_uniform_predictor

CONTROL = "random_direction"
"""The control (a random perturbation of the same radius): reported, never chosen as the default.
A plain method (`studies.methods.PLAIN_METHODS`: AdamW at another learning rate or length) is a
cell's control too: reported beside the rules, never chosen as the default."""
DEFAULT_COST_LIMIT = 1.1
"""Issue 29's rule: the cheapest rule whose gain is not separated from SAM's, if its step costs at most
this many AdamW steps; otherwise, among the rules whose gain over AdamW is separated from 0, the best
mean gain per extra AdamW step (a rule without a gain has no gain per cost, however cheap)."""
DEFAULTS_TOLERANCE = 0.02
"""The defaults check's bar (`studies/specs/defaults_check.json`, clean GLUE at run_glue's defaults): a default ends
within this much of AdamW's score on every command it ran. A rule that falls further behind on one
is not chosen, whatever it gains on the noisy cell."""


def benchmark_runner(settings: dict[str, str]) -> tuple[Optional[str], float]:
    """The step benchmark's runner that times a run's rule, and the share of steps it perturbs (1 but
    for a SAM schedule: `sam_every_n_steps` n perturbs 1/n, `sam_start_fraction` f perturbs 1 - f,
    `sam_step_share` s perturbs s). None for a rule the benchmark does not time."""
    optimizer = settings["optimizer"]
    share = (1.0 / int(settings.get("sam_every_n_steps", 1))) * (1.0 - float(settings.get("sam_start_fraction", 0.0))) \
        * float(settings.get("sam_step_share", 1.0))
    if optimizer in ("adamw", "sam", "momentum", "random_direction"):
        return optimizer, share
    selection, k = settings.get("ksam_selection"), float(settings.get("ksam_k", 0.25))
    if selection == "random_ascent":
        return f"random_ascent@{k:g}", share
    if k == 0.25:
        return {"loss_sampled": "ksam@0.25", "top_k": "ksam@0.25+top_k",
                "top_k_ascent": "ksam@0.25+top_k_ascent"}.get(selection), share
    return None, share


def benchmark_ratios(path: Path) -> tuple[str, dict[str, float]]:
    """(the benchmark's label: model, batch, device; runner -> paired median ratio to AdamW)."""
    data = json.loads(path.read_text())
    args = data.get("args", {})
    label = f"{args.get('model', '?')} {args.get('batch_size', '?')}x{args.get('seq_len', '?')} {args.get('device', '?')}"
    if data.get("started_utc"):  # two runs of one benchmark on one device tell apart by their start
        label += f" {data['started_utc'][:16].replace('T', ' ')} UTC"
    return label, {row["method"]: row["paired_ratio_to_adamw"] for row in data["rows"]}


def benchmark_cost(settings: dict[str, str], ratios: dict[str, float]) -> Optional[float]:
    runner, share = benchmark_runner(settings)
    if runner is None or runner not in ratios:
        return None
    return share * ratios[runner] + (1.0 - share) * ratios.get("adamw", 1.0)


def defaults_check_gaps(check_rows: list[dict], method: str, settings: dict[str, str]) -> list[float]:
    """Score - AdamW's (same task, batch and seed, in the same check) on each command of one defaults
    check that ran the rule of `method` (a frontier method whose run settings are `settings`): the
    check's rule and the settings it ran with all agree with the frontier run's, and the method's
    own settings with the check's run."""
    name, overrides = parse(method)
    wanted = {"optimizer": name, **overrides}
    adamw = {command(r): r for r in check_rows if r["method"] == "adamw"}
    gaps = []
    for r in check_rows:
        if r["method"] == "adamw" or command(r) not in adamw:
            continue
        ran = variant_settings(r)
        if all(k in ran and normalized(ran[k]) == normalized(v) for k, v in wanted.items()) and \
                all(k in settings and normalized(str(settings[k])) == normalized(v) for k, v in ran.items()):
            metric = METRIC[r["task"]]
            gaps.append(r["results"][metric] - adamw[command(r)]["results"][metric])
    return gaps


@dataclass
class RuleRow:
    method: str
    seeds: int
    heldout: Optional[float]
    dev: Optional[float]
    heldout_loss: Optional[float]
    final_train_loss: Optional[float]
    vs_adamw: list[float]
    vs_adamw_dev: list[float]
    vs_adamw_best_epoch: list[float]
    vs_sam: list[float]
    vs_control: list[float]  # held-out - the control's (random_direction): does the direction matter?
    vs_plain: list[float]  # held-out - the best plain-optimizer control's: more than AdamW that learns slower?
    share: tuple[Optional[float], Optional[float], Optional[float]]
    step_ratio: Optional[float]
    benchmark: list[Optional[float]]
    flipped_kept: Optional[float]
    at_uniform: int  # runs whose dev loss ended at ln(classes): the 50/50 predictor, its score meaningless
    uniform_epochs: Optional[float]  # mean over seeds of the first epochs spent at the 50/50 predictor
    sam_rule: bool = True  # False for a plain optimizer (a control such as AdamW at another learning rate)


def perturbing_rule(row: RuleRow) -> bool:
    """A SAM rule the default may be: not a plain optimizer, not the random-direction control."""
    return row.sam_rule and not row.method.startswith(CONTROL)


def epochs_at_uniform(row: dict) -> Optional[int]:
    """How many of a run's first epochs ended with the dev loss at the 50/50 predictor's (before it
    learnt anything): the rules with SAM's gain here sit there for a few epochs, and a radius over the
    edge never leaves it. None for a run without per-epoch dev losses."""
    losses = [e.get("eval_loss") for e in row.get("epochs", [])]
    if not losses or None in losses:
        return None
    return next((i for i, loss in enumerate(losses) if not at_uniform_predictor(row["task"], loss)), len(losses))


def run_step(row: dict) -> Optional[float]:
    """A run's step time: its median, or for a SAM schedule (some steps plain) its mean, where recorded."""
    scheduled = benchmark_runner(row["settings"])[1] < 1.0
    return row["results"].get("train_mean_step_time") if scheduled else row["results"].get("train_median_step_time")


def step_ratio(rows: list[dict], method: str, baseline: str) -> Optional[float]:
    """Median over seeds of the run's step time / the baseline's (same seed, same machine)."""
    ratios = [run_step(r) / run_step(b) for r in rows for b in rows if r["method"] == method and b["method"] == baseline
              and b["seed"] == r["seed"] and run_step(r) and run_step(b) and r.get("machine") == b.get("machine")]
    return statistics.median(ratios) if ratios else None


def best_plain_control(rows: list[dict], baseline: str) -> Optional[str]:
    """The plain-optimizer method other than the baseline (AdamW at another learning rate or length)
    with the best mean held-out score; None where the cell has none."""
    plain = {r["method"] for r in rows if r["settings"]["optimizer"] in PLAIN_METHODS and r["method"] != baseline}
    scored = [(mean([r.get("heldout_score") for r in rows if r["method"] == m]), m) for m in sorted(plain)]
    scored = [(score, m) for score, m in scored if score is not None]
    return max(scored)[1] if scored else None


def rule_rows(rows: list[dict], baseline: str, sam: str, benchmarks: list[dict[str, float]],
              control: Optional[str] = None, plain: Optional[str] = None) -> list[RuleRow]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    methods = [m for m in (baseline, sam) if m in methods] + [m for m in methods if m not in (baseline, sam)]
    table = []
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        table.append(RuleRow(
            method, len(own), mean([r.get("heldout_score") for r in own]), mean([r["score"] for r in own]),
            mean([r.get("heldout_loss") for r in own]),
            mean([r["curve"][-1]["loss"] if r.get("curve") else None for r in own]),
            [] if method == baseline else paired(rows, method, baseline, "heldout_score"),
            [] if method == baseline else paired(rows, method, baseline, "score"),
            [] if method == baseline else paired(rows, method, baseline, "score", "best_epoch_score"),
            [] if method in (baseline, sam) else paired(rows, method, sam, "heldout_score"),
            [] if control is None or method in (baseline, control) else paired(rows, method, control, "heldout_score"),
            [] if plain is None or method in (baseline, plain) else paired(rows, method, plain, "heldout_score"),
            (None, None, None) if method in (baseline, sam) else kept_share(rows, method, baseline, sam),
            None if method == baseline else step_ratio(rows, method, baseline),
            [benchmark_cost(own[0]["settings"], ratios) for ratios in benchmarks],
            mean([r["results"].get("train_mean_kept_label_flipped") for r in own]),
            sum(at_uniform_predictor(r["task"], r.get("eval_loss")) for r in own),
            mean([epochs_at_uniform(r) for r in own]),
            own[0]["settings"]["optimizer"] not in PLAIN_METHODS))
    return table


def choose_default(table: list[RuleRow], baseline: str, sam: str, limit: float = DEFAULT_COST_LIMIT,
                   column: int = 0, checked: Optional[dict[str, list[float]]] = None) -> tuple[Optional[str], str]:
    """Issue 29's default from the table, costs from the benchmark in `column`: (method, why).
    `checked` (method -> score - AdamW's on each command of the defaults check it ran) leaves out the
    rules that fall more than DEFAULTS_TOLERANCE behind AdamW on one of them."""
    candidates = [r for r in table if r.method not in (baseline, sam) and perturbing_rule(r)
                  and len(r.benchmark) > column and r.benchmark[column] is not None and r.vs_sam]
    if not candidates:
        return None, "no rule has both a benchmark cost and paired seeds with SAM"
    if any(len(r.vs_sam) < 2 for r in candidates):
        return None, "undecided: a rule has fewer than 2 seeds paired with SAM, so no interval"
    checked = checked or {}
    failed = [r.method for r in candidates if checked.get(r.method) and min(checked[r.method]) < -DEFAULTS_TOLERANCE]
    candidates = [r for r in candidates if r.method not in failed]
    dropped = "" if not failed else "with " + ", ".join(
        f"`{m}` ({100 * min(checked[m]):+.1f})" for m in failed) + (
        f" left out by the defaults check (more than {100 * DEFAULTS_TOLERANCE:g} points behind AdamW on clean GLUE), ")

    def unchecked(method: str) -> str:
        return "" if checked.get(method) else "; not yet through the defaults check"

    kept = [r for r in candidates if interval(r.vs_sam)[2] >= 0]  # rule - SAM not separated below 0
    cheap = sorted((r for r in kept if r.benchmark[column] <= limit), key=lambda r: r.benchmark[column])
    if cheap:
        return cheap[0].method, (f"{dropped}the cheapest rule whose held-out gain is not separated from SAM's "
                                 f"({cheap[0].benchmark[column]:.2f}x AdamW, at most {limit}x){unchecked(cheap[0].method)}")

    def per_cost(r: RuleRow) -> float:
        return interval(r.vs_adamw)[0] / max(r.benchmark[column] - 1.0, 0.05)

    gaining = [r for r in candidates if interval(r.vs_adamw)[1] > 0]  # a gain per cost needs a gain: one above 0
    if not gaining:
        return None, (f"{dropped}no rule at most {limit}x AdamW keeps a gain not separated from SAM's, and no "
                      "rule's gain over AdamW is separated from 0" + (": the library's default stays" if failed else ""))
    best = max(gaining, key=per_cost)
    return best.method, (f"{dropped}no rule at most {limit}x AdamW keeps a gain not separated from SAM's: the best "
                         f"held-out gain per extra AdamW step ({per_cost(best) * 100:+.1f} points at "
                         f"{best.benchmark[column]:.2f}x){unchecked(best.method)}")


def defaults_check_lines(checked: dict[str, list[float]], folders: list[Path]) -> list[str]:
    """Each rule's worst command of the defaults check against AdamW, where it ran one."""
    if not folders:
        return []
    ran = [f"`{m}` {100 * min(gaps):+.1f} (worst of {len(gaps)})" for m, gaps in checked.items() if gaps]
    return ["", f"Defaults check ({', '.join(f'`{folder}`' for folder in folders)}; clean GLUE at run_glue's defaults, "
            f"score - AdamW's on the same command, a rule more than {100 * DEFAULTS_TOLERANCE:g} points behind on one "
            "is not the default): " + ("; ".join(ran) if ran else "no rule of this table ran it") + "."]


def plain_control_line(table: list[RuleRow], plain: Optional[str], baseline: str) -> str:
    """What the best plain-optimizer control gains at AdamW's cost, and which SAM rules (not the
    random-direction control) end separated above it: the gain that a perturbation adds."""
    rows = {r.method: r for r in table}
    if plain is None or plain not in rows or not rows[plain].vs_adamw:
        return "No plain-optimizer control in this cell."
    r = rows[plain]
    point, low, high = r.share
    share = "" if point is None else f", {fmt(point, 100, 0)} % of SAM's gain" + (
        f" [{fmt(low, 100, 0)}, {fmt(high, 100, 0)}]" if low is not None else "")
    above = [x.method for x in table if x.method != baseline and perturbing_rule(x) and len(x.vs_plain) >= 2
             and interval(x.vs_plain)[1] > 0]
    return (f"The best plain-optimizer control, `{plain}` (no SAM step): held-out - AdamW "
            f"{difference_cell(r.vs_adamw)}{share}. SAM rules whose held-out score is separated above it (paired "
            f"95 % interval above 0): " + (", ".join(f"`{m}`" for m in above) if above else "**none**") + ".")


def fmt(value: Optional[float], scale: float = 100, digits: int = 1) -> str:
    return "—" if value is None else f"{scale * value:.{digits}f}"


def share_cell(share: tuple[Optional[float], Optional[float], Optional[float]]) -> str:
    point, low, high = share
    return "" if point is None else fmt(point, 100, 0) + " %" + (
        f" [{fmt(low, 100, 0)}, {fmt(high, 100, 0)}]" if low is not None else "")


def table_lines(table: list[RuleRow], labels: list[str]) -> list[str]:
    head = ["method", "seeds", "held-out", "dev", "held-out loss", "final train loss", "held-out - AdamW",
            "dev - AdamW", "dev - AdamW's best epoch", "held-out - SAM", "held-out - control",
            "held-out - best plain control", "share of SAM's gain kept", "step / AdamW (runs)",
            *[f"bench. x AdamW ({label})" for label in labels], "flipped among kept", "first epochs at 50/50 (mean)",
            "runs at the 50/50 predictor"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in table:
        lines.append("| " + " | ".join([
            r.method, str(r.seeds), fmt(r.heldout), fmt(r.dev), fmt(r.heldout_loss, 1, 3), fmt(r.final_train_loss, 1, 3),
            *(difference_cell(values) if values else "" for values in
              (r.vs_adamw, r.vs_adamw_dev, r.vs_adamw_best_epoch, r.vs_sam, r.vs_control, r.vs_plain)), share_cell(r.share),
            fmt(r.step_ratio, 1, 2),
            *[fmt(cost, 1, 2) for cost in r.benchmark], fmt(r.flipped_kept, 100, 0) + (" %" if r.flipped_kept is not None else ""),
            fmt(r.uniform_epochs, 1, 1),
            f"**{r.at_uniform} of {r.seeds}**" if r.at_uniform else ""]) + " |")
    return lines


def seed_lines(rows: list[dict], table: list[RuleRow]) -> list[str]:
    """The held-out score of every run, one column per seed, beside the paired summaries: the spread
    behind each interval, and which seeds a rule has not run yet."""
    seeds = sorted({r["seed"] for r in rows})
    score = {(r["method"], r["seed"]): r.get("heldout_score") for r in rows}
    head = ["method", *[f"seed {s}" for s in seeds], "held-out - AdamW", "held-out - best plain control",
            "share of SAM's gain kept", "first epochs at 50/50 (mean)", "runs at the 50/50 predictor"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in table:
        per_seed = [fmt(score[(r.method, s)]) if score.get((r.method, s)) is not None else "" for s in seeds]
        lines.append("| " + " | ".join([
            r.method, *per_seed, *(difference_cell(values) if values else "" for values in (r.vs_adamw, r.vs_plain)),
            share_cell(r.share), fmt(r.uniform_epochs, 1, 1), f"**{r.at_uniform} of {r.seeds}**" if r.at_uniform else ""]) + " |")
    return lines


def plot_frontier(table: list[RuleRow], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^vP*Xph<>"
    legend_inches = 0.3 + 0.17 * ((len(table) + 2) // 3)  # three columns of entries under the panels
    height = 4.0 + legend_inches
    fig, axes = plt.subplots(1, max(len(labels), 1), figsize=(5.2 * max(len(labels), 1), height), squeeze=False)
    for column, label in enumerate(labels):
        ax = axes[0][column]
        for i, r in enumerate(table):
            cost = r.benchmark[column]
            if cost is None:
                continue
            middle, low, high = interval(r.vs_adamw) if r.vs_adamw else (0.0, None, None)
            error = None if low is None else [[100 * (middle - low)], [100 * (high - middle)]]
            color = plt.cm.tab20(i % 20)  # up to 20 methods without a repeated colour
            ax.errorbar([cost], [100 * middle], yerr=error, fmt=markers[i % len(markers)], color=color, capsize=3,
                        markerfacecolor="none" if r.at_uniform else color,
                        label=short_name(r.method) + (f" ({r.at_uniform} of {r.seeds} at 50/50)" if r.at_uniform else ""))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"step cost, x AdamW\n({label})")
        ax.set_ylabel("held-out - AdamW, points (mean, 95 % CI)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(rows: list[dict], methods: list[str], path: Path) -> None:
    """Per method, mean over seeds: the dev score after each epoch and the logged training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.4), sharex=True)
    for i, method in enumerate(methods):
        own = [r for r in rows if r["method"] == method]
        epochs: dict[float, list[float]] = {}
        losses: dict[float, list[float]] = {}
        for r in own:
            for e in r.get("epochs", []):
                epochs.setdefault(e["epoch"], []).append(100 * e["score"])
            for log in r.get("curve", []):
                losses.setdefault(round(log["epoch"], 2), []).append(log["loss"])
        label = f"{short_name(method)} ({len(own)} seeds)"
        top.plot(sorted(epochs), [statistics.mean(epochs[e]) for e in sorted(epochs)], marker=".", color=f"C{i}", label=label)
        bottom.plot(sorted(losses), [statistics.mean(losses[e]) for e in sorted(losses)], color=f"C{i}", lw=0.9)
    top.set_ylabel("dev score x 100 (mean over seeds)")
    bottom.set_ylabel("training loss (noisy labels)")
    bottom.set_xlabel("epoch")
    top.legend(fontsize=7)
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> tuple[list[RuleRow], Optional[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell_dir", type=Path, help="a folder holding one cell's results.jsonl")
    parser.add_argument("--baseline", default="adamw")
    parser.add_argument("--sam", required=True, help="the SAM method the shares are of, e.g. sam@sam_rho=0.1")
    parser.add_argument("--control", help="the control method (default: the cell's one random_direction method)")
    parser.add_argument("--benchmarks", type=Path, nargs="*", default=[],
                        help="step_time JSON files; the first one's costs decide the default")
    parser.add_argument("--defaults_check", type=Path, nargs="*", default=[],
                        help="folders of defaults check results (results.jsonl): a rule that falls more than "
                             f"{100 * DEFAULTS_TOLERANCE:g} points behind AdamW on one of their commands is not the default")
    args = parser.parse_args(argv)
    rows = [flat(r) for r in load_rows(args.cell_dir / "results.jsonl")]
    if not any(r["method"] == args.sam for r in rows):
        raise SystemExit(f"summarize_frontier: no run of --sam {args.sam} in {args.cell_dir / 'results.jsonl'}")
    labelled = [benchmark_ratios(path) for path in args.benchmarks]
    labels = [label for label, _ in labelled]
    controls = list(dict.fromkeys(r["method"] for r in rows if r["method"].startswith(CONTROL)))
    control = args.control or (controls[0] if len(controls) == 1 else None)
    plain = best_plain_control(rows, args.baseline)
    table = rule_rows(rows, args.baseline, args.sam, [ratios for _, ratios in labelled], control, plain)
    checks = [load_rows(folder / "results.jsonl") for folder in args.defaults_check]  # each against its own AdamW
    run_settings = {r["method"]: r["settings"] for r in rows}
    checked = {r.method: [gap for check in checks for gap in defaults_check_gaps(check, r.method, run_settings[r.method])]
               for r in table if perturbing_rule(r)}
    default, why = choose_default(table, args.baseline, args.sam, checked=checked)
    elsewhere = [(label, *choose_default(table, args.baseline, args.sam, column=column, checked=checked))
                 for column, label in enumerate(labels) if column > 0]
    best = sorted((r for r in table if r.method not in (args.baseline, args.sam) and r.vs_adamw),
                  key=lambda r: -interval(r.vs_adamw)[0])[:3]
    text = [f"Written by `python -m studies.summarize_frontier {' '.join(sys.argv[1:] if argv is None else argv)}`.",
            "", "Scores x 100, means over seeds; differences paired by seed (the same sample and noise draw), mean "
            "[95 % t-interval]; the control: " + (f"`{control}`" if control else "none (no single random_direction method)") +
            "; the best plain control: " + (f"`{plain}`" if plain else "none") + ". Share of SAM's gain kept: on the held-out score, [95 % paired bootstrap]. Step / "
            "AdamW (runs): median over seeds of the run's median step time over AdamW's (a SAM schedule's: its mean "
            "step time, where the run recorded one; runs share the machine with other work, so these move more "
            "than the benchmark's). Benchmark: `benchmarks.step_time`'s paired "
            "ratio, a schedule weighted by the share of steps it perturbs. Dev - AdamW's best epoch: against AdamW "
            "stopped at its best dev epoch, an oracle that reads the dev set it is scored on. Flipped among kept: the share of examples "
            "with a flipped label among those the rule kept for its ascent (the noise's share when drawn at random). "
            "First epochs at 50/50: how many epochs a run's dev loss stayed at ln 2 before it learnt. "
            "Runs at the 50/50 predictor: dev loss ln 2 at the end; such a run learnt nothing, and its score is the "
            "class balance or the tie-breaking of equal logits, not a measurement.",
            "", *table_lines(table, labels), "",
            "Default by issue 29's rule" + (f", costs from {labels[0]}" if labels else "") + f": **{default or 'none'}**: {why}.",
            *[f"With the costs from {label} instead: {method or 'none'}: {reason}." for label, method, reason in elsewhere],
            *defaults_check_lines(checked, args.defaults_check),
            "", plain_control_line(table, plain, args.baseline), "",
            "Held-out score per seed (x 100; each row's `heldout_score`), with the paired summaries above:", "",
            *seed_lines(rows, table), ""]
    (args.cell_dir / "frontier.md").write_text("\n".join(text))
    if labels:
        plot_frontier(table, labels, args.cell_dir / "frontier.png")
    plot_curves(rows, [args.baseline, args.sam] + [r.method for r in best], args.cell_dir / "frontier_curves.png")
    print("\n".join(text))
    return table, default


if __name__ == "__main__":
    main()
