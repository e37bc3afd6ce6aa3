"""The table of issue 39's study: arms against the early-stopped AdamW, Bonferroni over the cells."""

from __future__ import annotations

import json
import math
import statistics

from scipy import stats

from studies import summarize_beyond
from tests.studies.beyond_rows import row, write


def test_differences_intervals_and_the_verdict(tmp_path):
    sam_gain = [0.05, 0.06, 0.07]  # held-out points over AdamW, per seed
    sam_drop = [-0.02, -0.03, -0.025]  # SAM loses 2-3 points less to int8
    a = [row("adamw", s, 0.70, 0.65, {"int8": 0.04}) for s in (1, 2, 3)]
    b = [row("sam@sam_rho=0.1", s, 0.70 + g, 0.66, {"int8": 0.04 + d}) for s, g, d in zip((1, 2, 3), sam_gain, sam_drop)]
    b[0]["results"]["last_eval_loss"] = math.log(2)  # its last model at the 50/50 predictor
    write(tmp_path / "cells" / "noisy", a + b)
    write(tmp_path / "cells" / "clean", [row("adamw", s, 0.80, 0.80, {"int8": 0.01}) for s in (1, 2, 3)]
          + [row("sam@sam_rho=0.1", s, 0.80 + d, 0.8, {"int8": 0.01}) for s, d in zip((1, 2, 3), (0.01, -0.01, 0.0))])
    benchmark = tmp_path / "bench.json"  # a clean paired benchmark, outside the results folder
    benchmark.write_text(json.dumps({"args": {"inputs": "sst2"}, "machine": {"cpu_model": "test CPU"},
                                     "rows": [{"method": "adamw", "paired_ratio_to_adamw": 1.0},
                                              {"method": "sam", "paired_ratio_to_adamw": 2.16}]}))
    text = summarize_beyond.main([str(tmp_path / "cells"), "--cost", str(benchmark)])
    level = 1 - 0.05 / 2  # two cells
    half = stats.t.ppf(1 - (1 - level) / 2, 2) * statistics.stdev(sam_gain) / math.sqrt(3)
    mean = statistics.fmean(sam_gain)
    assert f"+{100 * mean:.1f} [+{100 * (mean - half):.1f}, +{100 * (mean + half):.1f}]" in text
    assert "97.50 %" in text
    verdict = text.split("## Verdict, computed", 1)[1]
    assert "noisy: held-out score above AdamW's" in verdict and "noisy: int8 drop below AdamW's" in verdict
    assert "- `sam@sam_rho=0.1` (paired seeds: clean 3, noisy 3):" in verdict
    # trained to the end, SAM's last model (0.66) against AdamW's early-stopped one (0.70), on every seed
    assert "| -4.0 [-4.0, -4.0] |" in text
    assert "| `sam@sam_rho=0.1` | 75.0 / 66.0 | 76.0 / 66.0 | 77.0 / 66.0 |" in text  # each run, best / last
    assert "noisy: last model's held-out score (secondary) below AdamW's early-stopped one" in verdict
    assert "clean:" not in verdict  # nothing separated there (the last models tie AdamW's early-stopped ones)
    # after int8: SAM's (0.75 - 0.02, 0.76 - 0.01, 0.77 - 0.015) minus AdamW's 0.70 - 0.04: +7, +9, +9.5 points
    assert "| `sam@sam_rho=0.1` | +8.5 [" in text and "noisy: score after int8 above AdamW's" in verdict
    # the step's cost from the clean benchmark, and beside it what the study's runs paid (0.5 s against 1.0 s)
    assert text.count("| 2.16 | 0.50 |") == 2 and "| 1.00 | 1.00 |" in text and "test CPU" in text
    assert "| `sam@sam_rho=0.1` | 3 | 1 |" in text and "| `adamw` | 3 |  |" in text  # one run at ln 2
    assert (tmp_path / "cells" / "beyond.png").exists()


def test_step_cost_of_each_arm():
    benchmark = {"adamw": 1.0, "sam": 2.2, "sam_m4": 2.1}
    assert summarize_beyond.step_cost("adamw@learning_rate=5e-5", benchmark) == 1.0
    assert summarize_beyond.step_cost("adamw@label_smoothing_factor=0.1", benchmark) == 1.0
    assert summarize_beyond.step_cost("sam@sam_rho=0.05", benchmark) == 2.2
    assert summarize_beyond.step_cost("sam@sam_group_size=4@sam_rho=0.1", benchmark) == 2.1
    assert summarize_beyond.step_cost("sam@sam_group_size=1@sam_rho=0.1", benchmark) is None


def test_tuning_picks_by_the_validation_split_on_the_seeds_every_arm_has():
    """SAM's tuned radius and the tuned plain control are chosen by the validation score, never by the
    held-out one, on the seeds every arm of the family has run."""
    def run(method, seed, validation, heldout):
        r = row(method, seed, heldout, heldout, {})
        r["results"]["early_stopping_best_score"] = validation
        return r

    rows = [run("adamw", s, 0.60, 0.70) for s in (1, 2, 3)]
    rows += [run("adamw@learning_rate=5e-5", 1, 0.62, 0.60)]  # best on validation, worst held-out
    rows += [run("adamw@label_smoothing_factor=0.1", 1, 0.61, 0.90)]
    rows += [run("sam@sam_rho=0.1", s, 0.59, 0.95) for s in (1, 2, 3)]  # best held-out, worse validation
    rows += [run("sam@sam_rho=0.05", 1, 0.63, 0.72)]  # the family's common seeds: seed 1 alone
    rows += [run("sam@sam_group_size=4@sam_rho=0.05", s, 0.6, 0.71) for s in (1, 2)]
    rows += [run("sam@sam_group_size=4@sam_rho=0.1", s, v, 0.99) for s, v in ((1, 0.65), (2, 0.50))]  # lower mean
    chosen = summarize_beyond.tuned(rows)
    assert chosen == {"plain": ("adamw@learning_rate=5e-5", [1]), "sam": ("sam@sam_rho=0.05", [1]),
                      "sam m=4": ("sam@sam_group_size=4@sam_rho=0.05", [1, 2])}
    text = "\n".join(summarize_beyond.tuned_lines(rows, 0.95))
    assert "(`adamw@learning_rate=5e-5`, chosen on seeds 1)" in text
    assert "| sam | `sam@sam_rho=0.05` | 1 | +12.0 (n=1) |" in text  # 0.72 - 0.60, seed 1 the only pair


def test_each_family_at_its_best_on_the_heldout_block_arm_and_model():
    """The post hoc upper bound: per family the arm and the model (early-stopped or last) with the best mean
    held-out score on the family's common seeds; the SAM family's against the plain family's, paired by seed."""
    rows = [row("adamw", s, 0.70, 0.65, {}) for s in (1, 2, 3)]
    rows += [row("adamw@learning_rate=2e-5", s, 0.60, last, {}) for s, last in ((1, 0.80), (2, 0.82), (3, 0.78))]
    rows += [row("sam@sam_rho=0.1", s, best, 0.70, {}) for s, best in ((1, 0.77), (2, 0.79), (3, 0.79))]
    rows += [row("sam@sam_rho=0.05", s, 0.75, 0.76, {}) for s in (1, 2)]  # the family's common seeds: 1, 2
    chosen = summarize_beyond.at_best_on_heldout(rows)
    assert chosen == {"plain": ("adamw@learning_rate=2e-5", "last", [1, 2, 3]),
                      "sam": ("sam@sam_rho=0.1", "heldout", [1, 2])}
    text = "\n".join(summarize_beyond.heldout_tuned_lines(rows, 0.95))
    assert "(`adamw@learning_rate=2e-5`, its last model, chosen on seeds 1, 2, 3)" in text
    differences = [0.77 - 0.80, 0.79 - 0.82, 0.79 - 0.78]  # SAM's early-stopped minus the control's last, seeds 1-3
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.975, 2) * statistics.stdev(differences) / math.sqrt(3)
    assert (f"| sam | `sam@sam_rho=0.1` | early-stopped | 1, 2 | {100 * mean:+.1f} "
            f"[{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}] | — |") in text  # no seed outside both choices
    # a plain arm run on seeds 1-2 alone: the plain choice is made on 1, 2, so seed 3 is fresh for both families
    rows += [row("adamw@learning_rate=2e-4", s, 0.50, 0.50, {}) for s in (1, 2)]
    text = "\n".join(summarize_beyond.heldout_tuned_lines(rows, 0.95))
    assert (f"| sam | `sam@sam_rho=0.1` | early-stopped | 1, 2 | {100 * mean:+.1f} "
            f"[{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}] | +1.0 (n=1) |") in text  # fresh: 0.79 - 0.78


def test_the_runs_step_ratio_divides_by_the_median_plain_step_of_the_seed():
    """Seed 1's AdamW run was slowed by other work (3.0 s a step against its plain siblings' 1.0): the
    seed's plain step is their median, 1.0, so SAM's 2.0 s is 2.0x; seed 2 gives 1.8x: median 1.9."""
    def run(method, seed, step):
        r = row(method, seed, 0.7, 0.7, {})
        r["results"]["train_median_step_time"] = step
        return r

    rows = [run("adamw", 1, 3.0), run("adamw@learning_rate=2e-5", 1, 1.0), run("adamw@label_smoothing_factor=0.1", 1, 1.0),
            run("sam@sam_rho=0.1", 1, 2.0), run("adamw", 2, 1.0), run("sam@sam_rho=0.1", 2, 1.8)]
    assert math.isclose(summarize_beyond.runs_step_ratio(rows, "sam@sam_rho=0.1"), 1.9)
    assert math.isclose(summarize_beyond.runs_step_ratio(rows, "adamw"), 2.0)  # 3.0 and 1.0 over 1.0 and 1.0
    assert summarize_beyond.runs_step_ratio(rows, "sam@sam_rho=0.05") is None


def test_the_too_noisy_rule_compares_the_planned_intervals(tmp_path):
    """A cell whose seeds disagree by 10 points against an anchor whose seeds disagree by 2: the first
    resolves less (exit 0), the anchor does not (exit 1); a cell with one seed has nothing to compare."""
    import pytest

    def cell(name, gaps):
        rows = [row("adamw", s, 0.70, 0.70, {}) for s in (1, 2)]
        rows += [row("sam@sam_rho=0.1", s, 0.70 + g, 0.70, {}) for s, g in zip((1, 2), gaps)]
        write(tmp_path / name, rows)

    cell("wide", (0.05, -0.05))
    cell("anchor", (0.01, -0.01))
    write(tmp_path / "single", [row("adamw", 1, 0.7, 0.7, {}), row("sam@sam_rho=0.1", 1, 0.8, 0.8, {})])
    for pair, code in ((("wide", "anchor"), 0), (("anchor", "wide"), 1)):
        with pytest.raises(SystemExit) as stopped:
            summarize_beyond.main([str(tmp_path), "--resolves_less", *pair])
        assert stopped.value.code == code
    for pair in (("single", "anchor"), ("nowhere", "anchor")):  # an error is argparse's status 2, never an answer
        with pytest.raises(SystemExit) as stopped:
            summarize_beyond.main([str(tmp_path), "--resolves_less", *pair])
        assert stopped.value.code == 2
    assert not (tmp_path / "beyond.md").exists()  # the rule writes nothing


def test_a_cell_set_aside_is_reported_but_not_counted(tmp_path):
    """Three cells, one set aside: its table is written, the level is Bonferroni over the other two
    (97.5 %), and neither the verdict nor the plot names it; an unknown name is a one-line error."""
    import pytest

    for name, gain in (("first", 0.05), ("second", 0.0), ("noisy", 0.2)):
        write(tmp_path / name, [row("adamw", s, 0.7, 0.7, {}) for s in (1, 2, 3)]
              + [row("sam@sam_rho=0.1", s, 0.7 + gain + 0.01 * s, 0.7, {}) for s in (1, 2, 3)])
    text = summarize_beyond.main([str(tmp_path), "--set_aside", "noisy"])
    assert "### noisy" in text and "Set aside (--set_aside): noisy's tables stay" in text and "97.50 %" in text
    # the set-aside cell's pilot sign orders no seeds 3-5; a counted cell's does
    noisy, first = text.split("### noisy", 1)[1], text.split("### first", 1)[1].split("### ", 1)[0]
    assert "no seeds 3-5 run here" in noisy.split("### ", 1)[0] and "--seeds 3 4 5" not in noisy.split("### ", 1)[0]
    assert "--seeds 3 4 5 --methods adamw sam@sam_rho=0.1" in first
    verdict = text.split("## Verdict, computed", 1)[1]
    assert "Over the cells first, second (noisy set aside)." in verdict and "noisy:" not in verdict
    assert "first: held-out score above AdamW's" in verdict
    assert "(paired seeds: first 3, second 3)" in verdict
    with pytest.raises(SystemExit, match="--set_aside nowhere: no such cell"):
        summarize_beyond.main([str(tmp_path), "--set_aside", "nowhere"])
    # the study's record of a rule's outcome does the same, with its reason; a recorded cell with no rows is skipped
    (tmp_path / "set_aside.json").write_text(json.dumps({"noisy": "the too-noisy rule", "unrun": "a rule"}))
    recorded = summarize_beyond.main([str(tmp_path)])
    assert "Set aside (the too-noisy rule): noisy's tables stay" in recorded and "97.50 %" in recorded
    assert "Over the cells first, second (noisy set aside)." in recorded