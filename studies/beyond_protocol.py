"""The decisions issue 39's protocol makes from its own rows, each a command rather than a judgement: whether a
cell is too noisy to keep (the planned interval's half-width), which arm has a sign in the pilot (and so runs
seeds 3-5), and the input-blind floor an arm must clear to have learnt anything."""

from __future__ import annotations

import math
import statistics
from typing import Optional

from studies.beyond_outcomes import paired, paired_models
from studies.stats import bonferroni, half_width
from studies.tasks import replayed_heldout_floor, run_input_blind

PLANNED_SEEDS = 5
"""The seeds an arm with a sign in the pilot gets (the issue's 5+): the precision line's sample size."""


def pooled_paired_sd(rows: list[dict], baseline: str) -> tuple[Optional[float], int, int]:
    """The pooled standard deviation of the arms' paired held-out differences to the baseline (each arm's
    spread about its own mean, weighted by its degrees of freedom; a pair with an input-blind run left out),
    the arms pooled and the degrees of freedom: how much a cell's seeds disagree, whatever the arm."""
    blind = {(r["method"], r["seed"]) for r in rows if run_input_blind(r)}
    squares, dof, arms = 0.0, 0, 0
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != baseline):
        leaving_out = frozenset(seed for name, seed in blind if name in (method, baseline))
        values = paired_models(rows, method, "heldout", baseline, "heldout", leaving_out)
        if len(values) >= 2:
            squares += statistics.variance(values) * (len(values) - 1)
            dof, arms = dof + len(values) - 1, arms + 1
    return (math.sqrt(squares / dof) if dof else None), arms, dof


def planned_half_width(sd: float, planned_cells: int) -> float:
    """The half-width of a `PLANNED_SEEDS`-seed paired t-interval of spread `sd`, Bonferroni over the cells."""
    return half_width(sd, PLANNED_SEEDS, bonferroni(planned_cells))


def resolves_less(rows: list[dict], anchor: list[dict], baseline: str, planned_cells: int) -> Optional[bool]:
    """Whether a cell's planned interval is wider than the anchor cell's: the rule that sets a cell aside
    as too noisy (`studies/specs/beyond_training_less_noisy_mrpc.json`); None while either cell has no arm
    with two paired seeds (no spread to compare yet)."""
    spreads = [pooled_paired_sd(cell, baseline)[0] for cell in (rows, anchor)]
    if None in spreads:
        return None
    return planned_half_width(spreads[0], planned_cells) > planned_half_width(spreads[1], planned_cells)


def precision_line(rows: list[dict], baseline: str, planned_cells: int) -> list[str]:
    """What the cell can resolve: the half-width a `PLANNED_SEEDS`-seed paired interval would have at the
    study's final level, from the pooled spread of its pilot's differences (the test of "too noisy")."""
    sd, arms, dof = pooled_paired_sd(rows, baseline)
    if sd is None:
        return []
    level, half = bonferroni(planned_cells), planned_half_width(sd, planned_cells)
    return [f"Precision: the paired held-out differences to AdamW have a pooled SD of {100 * sd:.1f} points "
            f"({arms} arm{'s' * (arms != 1)}, {dof} degree{'s' * (dof != 1)} of freedom; a pair with an input-blind "
            f"run left out), so {PLANNED_SEEDS} paired seeds would give an arm an interval of ± {100 * half:.1f} at "
            f"{100 * level:.2f} % (Bonferroni over the {planned_cells} cells the study plans).", ""]


PILOT_SEEDS = (1, 2)
"""The seeds every arm of a cell runs first (the specs' `seeds`); a sign on them sends an arm to `PLANNED_SEEDS`."""


def pilot_signs(rows: list[dict], baseline: str) -> list[tuple[str, list[float]]]:
    """The arms with a sign in the pilot, the protocol's trigger for seeds 3-5: the held-out score (the primary
    outcome) ahead of the early-stopped baseline on every pilot seed, none of the arm's pilot runs input-blind
    (a near-tie at the 50/50 predictor is no sign), with the differences. An arm the baseline leads on both
    seeds gets no more seeds: the question is whether any arm beats it."""
    pilot = pilot_rows(rows)
    blind = {(r["method"], r["seed"]) for r in pilot if run_input_blind(r)}
    signs = []
    for method in dict.fromkeys(r["method"] for r in pilot if r["method"] != baseline):
        values = paired(pilot, method, baseline, "heldout")
        if (len(values) == len(PILOT_SEEDS) and all(v > 0 for v in values)
                and not any((method, seed) in blind for seed in PILOT_SEEDS)):
            signs.append((method, values))
    return signs


def later_seed_arms(signs: list[tuple[str, list[float]]], baseline: str, control: str) -> list[str]:
    """What runs seeds 3-5 once any arm has a sign (`pilot_signs`): the baseline, the plain control at its best
    on the pilot (`control`: so that each family at its best meets the plain family at its best on the same
    seeds), and every arm with a sign; nothing while no arm has one."""
    signed = [method for method, _ in signs]
    return list(dict.fromkeys([baseline, control, *signed])) if signed else []


def pilot_rows(rows: list[dict]) -> list[dict]:
    """The runs of the pilot's seeds."""
    return [r for r in rows if r["seed"] in PILOT_SEEDS]


def pilot_sign_line(rows: list[dict], baseline: str, control: tuple[str, str], set_aside: bool = False) -> list[str]:
    """`pilot_signs` as a sentence, with each signed arm against `control` (arm, model: `heldout` or `last`), the
    plain control at its best on the pilot (the stricter comparison, for information: the trigger is the
    early-stopped baseline). A cell `set_aside` (too noisy to decide anything) shows its signs but orders no seeds."""
    pilot = pilot_rows(rows)
    complete = [m for m in dict.fromkeys(r["method"] for r in pilot)
                if {r["seed"] for r in pilot if r["method"] == m} >= set(PILOT_SEEDS)]
    if baseline not in complete or len(complete) < 2:
        return []
    seeds = ", ".join(map(str, PILOT_SEEDS))
    signs = pilot_signs(rows, baseline)
    control, model = control

    def shown_arm(method: str, values: list[float]) -> str:
        ahead = ", ".join(f"{100 * v:+.1f}" for v in values)
        if (method, "heldout") == (control, model):
            return f"`{method}` ({ahead}; itself the plain control at its best on the pilot)"
        strict = paired_models(pilot, method, "heldout", control, model)
        return (f"`{method}` ({ahead}; against `{control}`'s {'last' if model == 'last' else 'early-stopped'} "
                f"model, the plain control at its best on the pilot: {', '.join(f'{100 * v:+.1f}' for v in strict)})")

    found = "; ".join(shown_arm(m, v) for m, v in signs) if signs else "none"
    later = [] if set_aside else later_seed_arms(signs, baseline, control)
    return [f"Signs in the pilot (seeds {seeds}; {len(complete) - 1} arm{'s' * (len(complete) != 2)} with both run), "
            "the trigger for seeds 3-5: held-out score ahead of the early-stopped AdamW on every pilot seed, no run of "
            f"the arm input-blind: {found}."
            + (f" Seeds 3-5 go to {', '.join(f'`{m}`' for m in later)} (the baseline, the plain control at its best "
               "and each signed arm): `--seeds 3 4 5 --methods " + " ".join(later) + "`." if later else "")
            + (" The cell is set aside, so no seeds 3-5 run here." if set_aside else ""), ""]


def recorded_floors(rows: list[dict]) -> dict[int, float]:
    """Each seed's input-blind floor as `run_glue.py` records it: the majority class's held-out score on the
    rows a run kept. Every arm of a seed trains on the same sample and so keeps the same rows, so one run that
    records it gives it for the seed's runs that predate the record."""
    return {r["seed"]: r["results"]["heldout_input_blind_score"] for r in rows
            if r["results"].get("heldout_input_blind_score") is not None}


def floors_by_seed(rows: list[dict], glue_dir: Optional[str] = None) -> dict[int, float]:
    """Each seed's floor: recorded, or else (`glue_dir`) replayed from its first run's settings
    (`studies.tasks.replayed_heldout_floor`); a seed with neither has none."""
    floors = recorded_floors(rows)
    for r in rows:
        if r["seed"] not in floors and (floor := replayed_heldout_floor(glue_dir, r)) is not None:
            floors[r["seed"]] = floor
    return floors


def floor_line(rows: list[dict], glue_dir: Optional[str] = None) -> list[str]:
    """The floor an arm must clear to have learnt anything, per seed (`floors_by_seed`)."""
    floors = floors_by_seed(rows, glue_dir)
    if not floors:
        return []
    low, high = 100 * min(floors.values()), 100 * max(floors.values())
    seeds = ", ".join(str(s) for s in sorted(floors))
    replayed = sorted(set(floors) - set(recorded_floors(rows)))
    return [f"Input-blind floor: predicting the majority class scores {low:.1f}"
            + (f"-{high:.1f}" if f"{high:.1f}" != f"{low:.1f}" else "")
            + f" on the held-out block (seed{'s' * (len(floors) > 1)} {seeds}"
            + (", replayed from the runs' settings, their rows predating the record" if len(replayed) == len(floors)
               else f"; seed{'s' * (len(replayed) > 1)} {', '.join(map(str, replayed))} replayed from the runs' "
               "settings, their rows predating the record" if replayed else "")
            + "); \"above the floor\": an arm's held-out score minus its seed's floor, the mean over its runs.", ""]


def above_floor(rows: list[dict], method: str, floors: dict[int, float]) -> Optional[float]:
    """The arm's mean held-out score minus each run's seed floor (`floors_by_seed`), over its runs whose seed
    has one."""
    margins = [r["heldout_score"] - floors[r["seed"]] for r in rows
               if r["method"] == method and r["seed"] in floors and r.get("heldout_score") is not None]
    return statistics.fmean(margins) if margins else None
