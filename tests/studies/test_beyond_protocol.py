"""Issue 39's protocol as commands: the precision line (the too-noisy rule), the input-blind floor (recorded or
replayed), and the pilot's signs (the trigger for seeds 3-5), each against figures computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

from scipy import stats

from studies import beyond_protocol, summarize_beyond
from studies.tasks import replayed_heldout_floor
from tests.studies.beyond_rows import row

REPO = Path(__file__).resolve().parents[2]


def test_the_precision_line_pools_the_arms_spread_by_hand():
    """Differences in points: SAM (+2, +4, +9), AdamW 2e-5 (-1, +1), SAM 0.05 (+30, -30) on seeds 2-3.
    While AdamW's seed 3 is input-blind its pairs are left out: SAM keeps (+2, +4), SAM 0.05 one pair."""
    rows = [row("adamw", s, 0.70, 0.70, {}) for s in (1, 2, 3)]
    rows += [row("sam@sam_rho=0.1", s, 0.70 + d, 0.70, {}) for s, d in zip((1, 2, 3), (0.02, 0.04, 0.09))]
    rows += [row("adamw@learning_rate=2e-5", s, 0.70 + d, 0.70, {}) for s, d in zip((1, 2), (-0.01, 0.01))]
    rows += [row("sam@sam_rho=0.05", s, 0.70 + d, 0.70, {}) for s, d in zip((2, 3), (0.30, -0.30))]
    rows[2]["results"]["heldout_predicted_classes"] = 1  # AdamW's seed 3: one class for every row
    rows[-1]["results"]["heldout_predicted_classes"] = 2
    sd, arms, dof = beyond_protocol.pooled_paired_sd(rows, "adamw")
    # seed 3 of SAM pairs with the input-blind AdamW run: SAM keeps (+2, +4), variance 2
    assert (arms, dof) == (2, 2) and math.isclose(100 * sd, math.sqrt((1 * 2 + 1 * 2) / 2))
    rows[2]["results"]["heldout_predicted_classes"] = 2
    sd, arms, dof = beyond_protocol.pooled_paired_sd(rows, "adamw")
    assert (arms, dof) == (3, 4) and math.isclose(100 * sd, math.sqrt((2 * 13 + 1 * 2 + 1 * 1800) / 4))
    half = stats.t.ppf(1 - 0.0125 / 2, 4) * sd / math.sqrt(5)
    line = beyond_protocol.precision_line(rows, "adamw", planned_cells=4)[0]
    assert f"pooled SD of {100 * sd:.1f} points (3 arms, 4 degrees of freedom" in line
    assert f"± {100 * half:.1f} at 98.75 %" in line


def test_the_floor_is_each_seeds_and_the_margin_above_it_is_paired_by_seed():
    """Seeds 1-2 record the floor (each seed trains on its own sample, so keeps its own rows); seed 3's
    runs predate the record; seed 1's SAM run predates it too and takes its seed's floor from AdamW's row."""
    rows = [row("adamw", s, 0.75, 0.70, {}) for s in (1, 2, 3)]
    rows += [row("sam@sam_rho=0.1", s, h, 0.70, {}) for s, h in ((1, 0.70), (2, 0.74), (3, 0.90))]
    assert beyond_protocol.floor_line(rows) == [] and beyond_protocol.floors_by_seed(rows) == {}
    assert beyond_protocol.above_floor(rows, "adamw", {}) is None
    rows[0]["results"]["heldout_input_blind_score"] = 0.6801
    rows[1]["results"]["heldout_input_blind_score"] = 0.7049
    rows[4]["results"]["heldout_input_blind_score"] = 0.7049
    line, floors = beyond_protocol.floor_line(rows)[0], beyond_protocol.floors_by_seed(rows)
    assert "scores 68.0-70.5 on the held-out block (seeds 1, 2)" in line
    # SAM: (0.70 - 0.6801) on seed 1, (0.74 - 0.7049) on seed 2; seed 3 has no floor
    assert math.isclose(beyond_protocol.above_floor(rows, "sam@sam_rho=0.1", floors), ((0.70 - 0.6801) + (0.74 - 0.7049)) / 2)
    assert math.isclose(beyond_protocol.above_floor(rows, "adamw", floors), ((0.75 - 0.6801) + (0.75 - 0.7049)) / 2)
    del rows[1]["results"]["heldout_input_blind_score"], rows[4]["results"]["heldout_input_blind_score"]
    assert "scores 68.0 on the held-out block (seed 1)" in beyond_protocol.floor_line(rows)[0]


def test_a_floor_replayed_from_a_runs_settings_is_the_floor_the_run_recorded(glue_dir):
    """Noisy MRPC's seed 1: its first runs predate the record, its later ones recorded 75.6 on the 584 rows
    they kept. Shaping the split again from a run's settings (the seeded sample, the noise, the held-out
    rows whose text sits inside a training row dropped) must give the recorded floor, on both seeds."""
    path = REPO / "docs/results/beyond-training-less/mrpc-n1000-noise30/results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    recorded = beyond_protocol.recorded_floors(rows)
    assert set(recorded) == {1, 2}
    for seed in (1, 2):
        older = next(r for r in rows if r["seed"] == seed)
        stripped = {**older, "results": {k: v for k, v in older["results"].items() if k != "heldout_input_blind_score"}}
        assert replayed_heldout_floor(str(glue_dir), stripped) == recorded[seed]
    # a cell whose seed 2 has no record takes the replayed floor for it, and says so
    rows = [{**r, "results": {k: v for k, v in r["results"].items() if k != "heldout_input_blind_score"}}
            if r["seed"] == 2 else r for r in rows]
    assert beyond_protocol.floors_by_seed(rows) == {1: recorded[1]}
    assert beyond_protocol.floors_by_seed(rows, str(glue_dir)) == recorded
    assert "(seeds 1, 2; seed 2 replayed from the runs' settings" in beyond_protocol.floor_line(rows, str(glue_dir))[0]
    assert replayed_heldout_floor(None, rows[0]) is None  # no GLUE files: no floor


def test_a_sign_in_the_pilot_is_every_pilot_seed_ahead_of_adamw_and_no_run_input_blind():
    """The trigger for seeds 3-5, by hand: ahead on both pilot seeds (a later seed does not count), not on one;
    an arm with a run at the 50/50 predictor or a seed missing has no sign; a lead over AdamW early-stopped is
    shown against the plain control at its best on the pilot too."""
    rows = [row("adamw", s, h, 0.60, {}) for s, h in ((1, 0.70), (2, 0.74), (3, 0.72))]
    rows += [row("adamw@learning_rate=2e-5", s, 0.69, last, {}) for s, last in ((1, 0.75), (2, 0.73))]
    rows += [row("sam@sam_rho=0.1", s, h, 0.60, {}) for s, h in ((1, 0.73), (2, 0.75), (3, 0.60))]
    rows += [row("sam@sam_rho=0.05", s, h, 0.60, {}) for s, h in ((1, 0.80), (2, 0.73))]  # behind on seed 2
    rows += [row("sam@sam_rho=0.01", s, h, 0.60, {}) for s, h in ((1, 0.80), (2, 0.80))]
    rows[-1]["results"]["last_eval_loss"] = math.log(2)  # its seed 2 ends at the 50/50 predictor
    rows += [row("sam@sam_group_size=4@sam_rho=0.01", 1, 0.90, 0.60, {})]  # seed 2 not run yet
    signs = beyond_protocol.pilot_signs(rows, "adamw")
    assert [m for m, _ in signs] == ["sam@sam_rho=0.1"]
    assert [round(v, 4) for v in signs[0][1]] == [0.03, 0.01]
    # the plain control at its best on seeds 1-2: lr 2e-5's last model (0.75, 0.73: mean 0.74 over AdamW's 0.72)
    control = summarize_beyond.plain_at_best(beyond_protocol.pilot_rows(rows), "adamw")
    assert control == ("adamw@learning_rate=2e-5", "last")
    line = beyond_protocol.pilot_sign_line(rows, "adamw", control)[0]
    assert "(seeds 1, 2; 4 arms with both run)" in line
    assert ("`sam@sam_rho=0.1` (+3.0, +1.0; against `adamw@learning_rate=2e-5`'s last model, the plain control at "
            "its best on the pilot: -2.0, +2.0)") in line
    # what runs next: the baseline, the plain control at its best, the signed arm; with no sign, nothing
    assert line.endswith("`--seeds 3 4 5 --methods adamw adamw@learning_rate=2e-5 sam@sam_rho=0.1`.")
    assert beyond_protocol.later_seed_arms(signs, "adamw", "adamw") == ["adamw", "sam@sam_rho=0.1"]
    unsigned = beyond_protocol.pilot_signs([r for r in rows if r["method"] != "sam@sam_rho=0.1"], "adamw")
    assert beyond_protocol.later_seed_arms(unsigned, "adamw", "adamw@learning_rate=2e-5") == []
    assert beyond_protocol.pilot_sign_line([r for r in rows if r["method"] != "sam@sam_rho=0.1"], "adamw", control)[0].endswith(
        "input-blind: none.")
    assert beyond_protocol.pilot_sign_line([r for r in rows if r["seed"] == 1], "adamw", control) == []  # no pilot yet
    # a cell set aside as too noisy shows its signs but orders no seeds
    aside = beyond_protocol.pilot_sign_line(rows, "adamw", control, set_aside=True)[0]
    assert "`sam@sam_rho=0.1` (+3.0, +1.0;" in aside and "--seeds" not in aside
    assert aside.endswith("The cell is set aside, so no seeds 3-5 run here.")

