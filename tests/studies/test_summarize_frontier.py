"""The frontier summary against numbers computed here: rows built so that each quantity is known."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy import stats

from studies import summarize_frontier

SEEDS = [1, 2, 3, 4]
ADAMW = [0.70, 0.72, 0.69, 0.71]
SAM_GAIN = [0.08, 0.06, 0.09, 0.05]
SAM = "sam@sam_rho=0.1"
MOMENTUM = "momentum@sam_rho=0.1"
DEFAULT = "ksam@ksam_selection=top_k_ascent@ksam_k=0.25@sam_rho=0.1"
RANDOM = "ksam@ksam_selection=random_ascent@ksam_k=0.125@sam_rho=0.1"
LATE = "sam@sam_start_fraction=0.7@sam_rho=0.1"
CONTROL = "random_direction@sam_rho=0.1"
SLOW = "adamw@learning_rate=2e-5"  # a plain-AdamW control: reported, never the default
OFFSETS = {  # held-out score - AdamW's, per seed
    SAM: SAM_GAIN,
    MOMENTUM: [0.5 * g for g in SAM_GAIN],  # half of SAM's gain on every seed: separated below SAM
    DEFAULT: [g + d for g, d in zip(SAM_GAIN, [0.01, -0.02, 0.015, -0.01])],
    RANDOM: [g + d for g, d in zip(SAM_GAIN, [-0.01, 0.01, 0.0, -0.005])],
    LATE: [0.02, 0.01, 0.03, 0.0],
    CONTROL: [0.09, 0.07, 0.10, 0.06],  # better than SAM, but the control is never the default
    SLOW: [0.08, 0.06, 0.09, 0.05],  # SAM's gain at AdamW's cost: not a SAM rule, so never the default either
}
SETTINGS = {
    "adamw": {"optimizer": "adamw"},
    SAM: {"optimizer": "sam", "sam_rho": "0.1"},
    MOMENTUM: {"optimizer": "momentum", "sam_rho": "0.1"},
    DEFAULT: {"optimizer": "ksam", "ksam_selection": "top_k_ascent", "ksam_k": "0.25", "sam_rho": "0.1"},
    RANDOM: {"optimizer": "ksam", "ksam_selection": "random_ascent", "ksam_k": "0.125", "sam_rho": "0.1"},
    LATE: {"optimizer": "sam", "sam_start_fraction": "0.7", "sam_rho": "0.1"},
    CONTROL: {"optimizer": "random_direction", "sam_rho": "0.1"},
    SLOW: {"optimizer": "adamw", "learning_rate": "2e-05"},
}
BENCHMARK = {"adamw": 1.0, "sam": 2.0, "momentum": 1.05, "ksam@0.25+top_k_ascent": 1.6, "random_ascent@0.125": 1.1,
             "random_direction": 1.0}
FLIPPED_KEPT = [0.6, 0.7, 0.65, 0.65]


def write_cell(folder) -> None:
    lines = []
    for index, seed in enumerate(SEEDS):
        for method in ["adamw", *OFFSETS]:
            heldout = ADAMW[index] + (OFFSETS[method][index] if method != "adamw" else 0.0)
            results = {"train_median_step_time": 0.4 * (1.5 if method == DEFAULT else 1.0),
                       "eval_loss": math.log(2) if (method, seed) == (CONTROL, 2) else 0.5,  # one run at 50/50
                       "heldout_loss": 0.6, "train_mean_step_time": 0.4 * (1.3 if method == LATE else 1.1)}
            if method == DEFAULT:
                results["train_mean_kept_label_flipped"] = FLIPPED_KEPT[index]
            lines.append(json.dumps({
                "task": "sst2", "method": method, "seed": seed, "score": heldout - 0.01, "heldout_score": heldout,
                "machine": "m", "settings": SETTINGS[method], "results": results,
                "curve": [{"epoch": 1.0, "loss": 0.3}],
                "epochs": [{"epoch": 1.0, "score": heldout - 0.01 + (0.05 if method == "adamw" else -0.05),
                            "eval_loss": math.log(2) if method == SAM or (method, seed) == (CONTROL, 2) else 0.5},
                           {"epoch": 2.0, "score": heldout - 0.01,
                            "eval_loss": math.log(2) if (method, seed) == (CONTROL, 2) else 0.5}]}))
    (folder / "results.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def summarized(tmp_path):
    write_cell(tmp_path)
    benchmark = tmp_path / "bench.json"
    benchmark.write_text(json.dumps({"args": {"model": "minilm", "batch_size": 32, "seq_len": 128, "device": "cpu"},
                                     "rows": [{"method": m, "paired_ratio_to_adamw": r} for m, r in BENCHMARK.items()]}))
    table, default = summarize_frontier.main([str(tmp_path), "--sam", SAM, "--benchmarks", str(benchmark)])
    return tmp_path, {row.method: row for row in table}, default


def t_interval(values: list[float]) -> tuple[float, float, float]:
    middle = statistics.mean(values)
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return middle, middle - half, middle + half


def test_paired_differences_and_shares_are_the_ones_computed_by_hand(summarized):
    _, rows, _ = summarized
    from studies.stats import interval

    assert interval(rows[SAM].vs_adamw) == pytest.approx(t_interval(SAM_GAIN))
    assert rows[MOMENTUM].share == pytest.approx((0.5, 0.5, 0.5))  # the same share on every seed
    point, low, high = rows[DEFAULT].share
    assert point == pytest.approx(statistics.mean(OFFSETS[DEFAULT]) / statistics.mean(SAM_GAIN))
    assert low < point < high
    vs_sam = [d - g for d, g in zip(OFFSETS[RANDOM], SAM_GAIN)]
    assert interval(rows[RANDOM].vs_sam) == pytest.approx(t_interval(vs_sam))
    vs_control = [r - c for r, c in zip(OFFSETS[RANDOM], OFFSETS[CONTROL])]  # the cell's one random_direction
    assert interval(rows[RANDOM].vs_control) == pytest.approx(t_interval(vs_control)) and rows[CONTROL].vs_control == []
    # AdamW's best dev epoch is its first, 0.05 above its final dev (write_cell): SAM gains g - 0.05 on it
    assert interval(rows[SAM].vs_adamw_best_epoch) == pytest.approx(t_interval([g - 0.05 for g in SAM_GAIN]))


def test_costs_flipped_shares_and_the_default(summarized):
    folder, rows, default = summarized
    assert rows[LATE].benchmark == [pytest.approx(0.3 * 2.0 + 0.7 * 1.0)]  # SAM on the last 30 % of the steps
    assert rows[DEFAULT].benchmark == [1.6] and rows[DEFAULT].step_ratio == pytest.approx(1.5)  # medians
    assert rows[LATE].step_ratio == pytest.approx(1.3 / 1.0)  # a schedule: its mean step over AdamW's median
    assert rows[DEFAULT].flipped_kept == pytest.approx(statistics.mean(FLIPPED_KEPT))
    assert rows[SAM].flipped_kept is None
    assert rows[CONTROL].at_uniform == 1 and rows[SAM].at_uniform == 0
    # SAM's first epoch at ln 2 on every seed; the control's one run at ln 2 throughout: 2 epochs of 2, 0 elsewhere
    assert rows[SAM].uniform_epochs == 1 and rows[CONTROL].uniform_epochs == pytest.approx(2 / 4)
    assert rows[RANDOM].uniform_epochs == 0
    assert rows[SLOW].benchmark == [1.0] and rows[SLOW].vs_adamw == pytest.approx(OFFSETS[SLOW])
    assert not rows[SLOW].sam_rule and rows[RANDOM].sam_rule
    # momentum (1.05x) is separated below SAM; random_ascent (1.1x) is not, and is the cheapest such rule
    assert default == RANDOM
    text = (folder / "frontier.md").read_text()
    assert f"**{RANDOM}**" in text and "65 %" in text and "**1 of 4** |" in text
    assert (folder / "frontier.png").stat().st_size > 0 and (folder / "frontier_curves.png").stat().st_size > 0


def test_without_a_cheap_rule_the_best_gain_per_extra_step_is_the_default(summarized):
    _, rows, _ = summarized
    table = list(rows.values())
    default, why = summarize_frontier.choose_default(table, "adamw", SAM, limit=1.0)
    per_cost = {m: statistics.mean(OFFSETS[m]) / max(BENCHMARK[b] - 1.0, 0.05)
                for m, b in [(MOMENTUM, "momentum"), (DEFAULT, "ksam@0.25+top_k_ascent"), (RANDOM, "random_ascent@0.125")]}
    assert default == max(per_cost, key=per_cost.get) and "gain per extra AdamW step" in why


def test_each_further_benchmark_names_its_own_default(tmp_path):
    write_cell(tmp_path)
    files = []
    for name, costs in [("cpu", BENCHMARK), ("cuda", {**BENCHMARK, "random_ascent@0.125": 1.8, "momentum": 1.2})]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"args": {"model": "minilm", "batch_size": 32, "seq_len": 128, "device": name},
                                    "rows": [{"method": m, "paired_ratio_to_adamw": r} for m, r in costs.items()]}))
        files.append(str(path))
    table, default = summarize_frontier.main([str(tmp_path), "--sam", SAM, "--benchmarks", *files])
    assert default == RANDOM  # the first file decides
    # on the second no rule kept SAM's gain at most 1.1x: the best mean gain per extra step, by hand
    per_cost = {MOMENTUM: statistics.mean(OFFSETS[MOMENTUM]) / 0.2, DEFAULT: statistics.mean(OFFSETS[DEFAULT]) / 0.6,
                RANDOM: statistics.mean(OFFSETS[RANDOM]) / 0.8}  # late-phase SAM's gain is not separated from 0
    text = (tmp_path / "frontier.md").read_text()
    assert "costs from minilm 32x128 cpu: **" + RANDOM in text
    assert f"With the costs from minilm 32x128 cuda instead: {max(per_cost, key=per_cost.get)}: no rule" in text


def test_a_gain_not_separated_from_0_has_no_gain_per_cost(summarized):
    import dataclasses

    _, rows, _ = summarized
    # late-phase SAM made as cheap as AdamW: its mean gain (+1.5 points) per the floor of 0.05 extra steps would
    # be the best per cost, but its interval over the 4 seeds reaches below 0 (by hand: 0.015 +- 3.18 x 0.0129 / 2)
    assert t_interval(OFFSETS[LATE])[1] < 0
    table = [dataclasses.replace(r, benchmark=[1.0]) if r.method == LATE else r for r in rows.values()]
    default, why = summarize_frontier.choose_default(table, "adamw", SAM, limit=0.9)
    per_cost = {MOMENTUM: statistics.mean(OFFSETS[MOMENTUM]) / 0.05, DEFAULT: statistics.mean(OFFSETS[DEFAULT]) / 0.6,
                RANDOM: statistics.mean(OFFSETS[RANDOM]) / 0.1}
    assert default == max(per_cost, key=per_cost.get) != LATE
    only_late = [r for r in table if r.method in ("adamw", SAM, LATE)]
    assert summarize_frontier.choose_default(only_late, "adamw", SAM, limit=0.9)[0] is None


def test_each_rule_against_the_best_plain_control_and_who_ends_above_it(summarized):
    import dataclasses

    from studies.stats import interval

    folder, rows, _ = summarized
    vs_slow = [r - s for r, s in zip(OFFSETS[RANDOM], OFFSETS[SLOW])]  # AdamW at 2e-5, the cell's one plain control
    assert interval(rows[RANDOM].vs_plain) == pytest.approx(t_interval(vs_slow)) and rows[SLOW].vs_plain == []
    # the random direction ends 0.01 above it on every seed, but is a control; no SAM rule is separated above it
    text = (folder / "frontier.md").read_text()
    assert f"The best plain-optimizer control, `{SLOW}`" in text and "separated above it (paired 95 % interval " \
        "above 0): **none**." in text
    above = dataclasses.replace(rows[DEFAULT], vs_plain=[0.01, 0.02, 0.015, 0.012])
    line = summarize_frontier.plain_control_line([above if r.method == DEFAULT else r for r in rows.values()],
                                                 SLOW, "adamw")
    assert line.endswith(f"above 0): `{DEFAULT}`.")


def test_the_best_plain_control_is_the_one_with_the_best_held_out_mean():
    rows = [{"method": m, "settings": {"optimizer": o}, "heldout_score": h} for m, o, h in [
        ("adamw", "adamw", 0.9), ("adamw@learning_rate=2e-5", "adamw", 0.75), ("adamw@num_train_epochs=3", "adamw", 0.78),
        ("sam@sam_rho=0.1", "sam", 0.95)]]
    assert summarize_frontier.best_plain_control(rows, "adamw") == "adamw@num_train_epochs=3"
    assert summarize_frontier.best_plain_control(rows[:1] + rows[3:], "adamw") is None


def test_the_per_seed_table_holds_each_run_and_leaves_a_seed_not_run_empty(summarized):
    folder, rows, _ = summarized
    lines = (folder / "frontier.md").read_text().split("Held-out score per seed")[1].strip().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:5] == ["method", "seed 1", "seed 2", "seed 3", "seed 4"]
    by_method = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines[4:])}
    assert by_method[RANDOM][1:5] == [f"{100 * (a + o):.1f}" for a, o in zip(ADAMW, OFFSETS[RANDOM])]
    assert by_method[CONTROL][-1] == "**1 of 4**"
    # a rule missing a seed: its cell is empty, its summaries over the seeds it has
    partial = [r for r in summarize_frontier.load_rows(folder / "results.jsonl")
               if not (r["method"] == RANDOM and r["seed"] == 3)]
    flat_rows = [summarize_frontier.flat(r) for r in partial]
    table = summarize_frontier.rule_rows(flat_rows, "adamw", SAM, [])
    line = next(x for x in summarize_frontier.seed_lines(flat_rows, table) if x.startswith(f"| {RANDOM} "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "" and cells[4] == f"{100 * (ADAMW[3] + OFFSETS[RANDOM][3]):.1f}"
    three = [o for i, o in enumerate(OFFSETS[RANDOM]) if i != 2]
    assert cells[5] == f"{100 * statistics.mean(three):+.1f} [{100 * t_interval(three)[1]:+.1f}, {100 * t_interval(three)[2]:+.1f}]"


def check_row(task: str, batch: int, method: str, score: float, **ran) -> dict:
    """A grid row of the defaults check: `ran`, the SAM settings the run recorded (as the grid writes them)."""
    metric = {"mrpc": "eval_combined_score", "sst2": "eval_accuracy"}[task]
    return {"task": task, "seed": 1, "method": method,
            "settings": {"optimizer": method.split("@")[0], "per_device_train_batch_size": str(batch),
                         **{k: str(v) for k, v in ran.items()}},
            "results": {metric: score}}


def test_the_defaults_check_leaves_out_a_rule_behind_adamw_on_clean_glue(tmp_path):
    write_cell(tmp_path)
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    cpu.mkdir(), gpu.mkdir()
    random_rule = "ksam@ksam_selection=random_ascent@ksam_k=0.125@sam_rho=0.1"
    ran = dict(ksam_selection="random_ascent", ksam_k=0.125, sam_rho=0.1)
    cpu_rows = [check_row("mrpc", 8, "adamw", 0.80),
                check_row("mrpc", 8, random_rule, 0.77, **ran),  # 3 points behind: out
                check_row("mrpc", 8, random_rule.replace("rho=0.1", "rho=0.2"), 0.50, **{**ran, "sam_rho": 0.2}),  # another radius
                check_row("mrpc", 8, random_rule + "@ksam_uniform_mix=0.9", 0.30, **ran),  # a setting it lacks
                check_row("mrpc", 8, "sam@sam_rho=0.1", 0.40, sam_rho=0.1)]  # plain SAM, not LATE
    gpu_rows = [check_row("sst2", 32, "adamw", 0.90),
                check_row("sst2", 32, "ksam@ksam_selection=random_ascent", 0.905, **ran),  # k and rho as it recorded them
                check_row("mrpc", 8, random_rule, 0.79, **ran)]  # no AdamW of this command in this check: unpaired
    cpu.joinpath("results.jsonl").write_text("\n".join(json.dumps(r) for r in cpu_rows) + "\n")
    gpu.joinpath("results.jsonl").write_text("\n".join(json.dumps(r) for r in gpu_rows) + "\n")
    rows = [summarize_frontier.flat(r) for r in summarize_frontier.load_rows(tmp_path / "results.jsonl")]
    late_settings = next(r["settings"] for r in rows if r["method"] == LATE)
    assert summarize_frontier.defaults_check_gaps(cpu_rows, LATE, late_settings) == []
    benchmark = tmp_path / "bench.json"
    benchmark.write_text(json.dumps({"args": {}, "rows": [{"method": m, "paired_ratio_to_adamw": r}
                                                          for m, r in BENCHMARK.items()]}))
    table, default = summarize_frontier.main([str(tmp_path), "--sam", SAM, "--benchmarks", str(benchmark),
                                              "--defaults_check", str(cpu), str(gpu)])
    # without the check RANDOM is the default (test_costs_flipped_shares_and_the_default); out, no other rule
    # at most 1.1x keeps SAM's gain, and momentum (half SAM's gain, separated above 0, at 1.05x) has the best
    # gain per extra step: 0.035 / 0.05 against the default rule's 0.07 / 0.6
    assert default == MOMENTUM
    text = (tmp_path / "frontier.md").read_text()
    assert f"`{RANDOM}` (-3.0) left out by the defaults check" in text and "not yet through the defaults check" in text
    assert f"`{RANDOM}` -3.0 (worst of 2)" in text  # the CPU's -3.0 and the GPU's +0.5, each against its own AdamW
    rows_by = {r.method: r for r in table}
    checked = {RANDOM: [-0.03], MOMENTUM: [-0.021], DEFAULT: [0.0, -0.025]}
    method, why = summarize_frontier.choose_default(list(rows_by.values()), "adamw", SAM, checked=checked)
    assert method is None and why.endswith("the library's default stays")
    checked[DEFAULT] = [0.0, -0.02]  # exactly 2 points behind is within the bar
    assert summarize_frontier.choose_default(list(rows_by.values()), "adamw", SAM, checked=checked)[0] == DEFAULT
