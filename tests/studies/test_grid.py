"""The reproduction driver: method specs, skipping finished runs, and the summary table's arithmetic."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess

import pytest

from studies import grid as rg
from studies import grid_summary, plots, stats, tasks
from studies import methods as method_specs
from studies import rows as row_store


def grid(tmp_path, **overrides) -> rg.ReproductionArguments:
    settings = dict(model_name_or_path="m", tasks=["rte", "cola"], methods=["adamw", "ksam@ksam_k=0.1"], seeds=[1, 2],
                    results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    settings.update(overrides)
    return rg.ReproductionArguments(**settings)


def test_method_specs(tmp_path):
    """Every SAM field a method uses is written out (the library's defaults where the spec is silent),
    numbers in one spelling, so a run's key does not move with a default or a way of writing it."""
    from ksam_hf import KSAMConfig

    args = grid(tmp_path)
    defaults = KSAMConfig(output_dir=str(tmp_path))
    assert rg.method_settings("adamw", args) == {"optimizer": "adamw"}
    assert rg.method_settings("adamw@learning_rate=1e-4", args) == {"optimizer": "adamw", "learning_rate": "0.0001"}
    assert rg.method_settings("ksam@ksam_k=8@sam_rho=2e-2@ksam_selection=top_k", args) == {
        "optimizer": "ksam", "sam_rho": "0.02", "ksam_k": "8", "ksam_selection": "top_k",
        "ksam_uniform_mix": str(defaults.ksam_uniform_mix), "sam_adaptive": "False",
        "ksam_rank_without_dropout": "True", "sam_sync_ascent": "False"}
    assert rg.method_settings("sam", args) == {"optimizer": "sam", "sam_rho": "0.05", "sam_adaptive": "False",
                                               "sam_sync_ascent": "False"}
    with pytest.raises(ValueError, match="--methods"):
        rg.method_settings("adam", args)
    with pytest.raises(ValueError, match="--methods"):
        rg.method_settings("ksam@kk=3", args)


def test_grid_skips_finished_runs_and_summarises(tmp_path, monkeypatch):
    grid(tmp_path)
    scores = {("rte", "adamw", 1): 0.60, ("rte", "adamw", 2): 0.64, ("rte", "ksam@ksam_k=0.1", 1): 0.62,
              ("rte", "ksam@ksam_k=0.1", 2): 0.66, ("cola", "adamw", 1): 0.30, ("cola", "adamw", 2): 0.34,
              ("cola", "ksam@ksam_k=0.1", 1): 0.40, ("cola", "ksam@ksam_k=0.1", 2): 0.36}
    calls = []

    def fake_run(task, method, seed, settings, args):
        calls.append((task, method, seed))
        runtime = 100.0 if method == "adamw" else 80.0
        results = {f"eval_{tasks.MAIN_METRIC[task]}": scores[task, method, seed], "train_runtime": runtime,
                   "train_median_step_time": runtime / 50, "train_steps": 50, "eval_loss": 0.5 + seed / 10}
        return {"task": task, "method": method, "seed": seed, "key": rg.run_key(settings),
                "metric": tasks.MAIN_METRIC[task], "score": scores[task, method, seed], "settings": settings,
                "results": results}

    monkeypatch.setattr(rg, "run_one", fake_run)
    argv = ["--model_name_or_path", "m", "--tasks", "rte", "cola", "--methods", "adamw", "ksam@ksam_k=0.1",
            "--seeds", "1", "2", "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")]
    rg.main(argv)
    assert len(calls) == 8
    rg.main(argv)  # everything done: nothing runs again
    assert len(calls) == 8
    rg.main(argv[:-4] + ["--learning_rate", "1e-4", "--results_dir", str(tmp_path), "--runs_dir", "x"])
    assert len(calls) == 16  # a changed hyper-parameter is a new run

    rg.main(argv[:-4] + ["--tasks", "rte", "--summarize_only", "--results_dir", str(tmp_path),
                         "--runs_dir", str(tmp_path / "runs")])
    table = (tmp_path / "results.md").read_text()  # every task recorded, not only those of the last call
    # rte ksam: mean 64.0, sample std of (62, 66) = 2.83; cola adamw: 32.0 +- 2.8; averages over tasks.
    assert "| ksam@ksam_k=0.1 | 64.0 ± 2.8 (n=2) | 38.0 ± 2.8 (n=2) | 51.0 |" in table
    assert "| adamw | 62.0 ± 2.8 (n=2) | 32.0 ± 2.8 (n=2) | 47.0 |" in table
    assert "| adamw | 0.650 | 0.650 |" in table  # eval loss: mean of 0.6 and 0.7
    # Paired differences (x 100): rte +2, +2 -> [+2, +2]; cola +10, +2 -> 6 +- t(0.975, 1) * sd / sqrt(2),
    # t = 12.7062, sd = 5.657 -> half-width 50.82; average over tasks per seed: 6, 2 -> 4 +- 25.41.
    assert "| ksam@ksam_k=0.1 | +2.0 [+2.0, +2.0] | +6.0 [-44.8, +56.8] | +4.0 [-21.4, +29.4] |" in table
    assert "| ksam@ksam_k=0.1 | 0.80 | 0.80 | 0.80 | 0.80 |" in table  # step and time ratios
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and (tmp_path / "score_vs_time.png").stat().st_size > 0
    assert "| *input-blind" not in table  # no --glue_dir: no dev labels to read

    # With the dev labels: RTE 3 entailment (id 0), 1 not; CoLA (headerless) 1 unacceptable, 1 acceptable.
    glue = tmp_path / "glue"
    (glue / "RTE").mkdir(parents=True)
    (glue / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\ta\tb\t{label}\n" for i, label in enumerate(["entailment"] * 3 + ["not_entailment"])))
    (glue / "CoLA").mkdir()
    (glue / "CoLA" / "dev.tsv").write_text("src\t0\t*\tA b.\nsrc\t1\t\tC d.\n")
    rg.main(argv[:-4] + ["--summarize_only", "--results_dir", str(tmp_path), "--runs_dir", "x",
                         "--glue_dir", str(glue)])
    table = (tmp_path / "results.md").read_text()
    # RTE: -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562, majority accuracy 75.0; CoLA: ln 2, MCC 0.
    assert "| *input-blind: the majority class* | 75.0 | 0.0 |  |" in table
    assert "| *input-blind optimum* | 0.562 | 0.693 |" in table

    # Rows follow --methods (then methods recorded but not named), not the order the runs finished in.
    rg.main(argv[:-4] + ["--summarize_only", "--methods", "ksam@ksam_k=0.1", "--results_dir", str(tmp_path),
                         "--runs_dir", "x"])
    lines = (tmp_path / "results.md").read_text().splitlines()
    first_cells = [line.split(" | ")[0] for line in lines if line.startswith("| ksam@") or line.startswith("| adamw")]
    assert first_cells[:2] == ["| ksam@ksam_k=0.1", "| adamw"]


def test_a_truncated_line_is_reported_and_skipped(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"task": "rte"}) + "\n" + '{"task": "co' + "\n" + json.dumps({"task": "cola"}) + "\n")
    assert [row["task"] for row in row_store.load_rows(path)] == ["rte", "cola"]
    assert f"{path}:2: skipped" in capsys.readouterr().err


def test_pick_rho_takes_each_family_best_mean_over_the_tasks():
    from studies.pick_rho import pick

    def row(task, method, rho, score):
        optimizer, *overrides = method.split("@")  # the settings a run of this spec records
        settings = {"optimizer": optimizer, **dict(o.split("=") for o in overrides), "sam_rho": str(rho)}
        if optimizer == "ksam":
            settings.setdefault("ksam_selection", "top_k_ascent")
        return {"task": task, "method": method, "score": score, "settings": settings}

    rows = [row("mrpc", "sam@sam_rho=0.01", 0.01, 0.80), row("cola", "sam@sam_rho=0.01", 0.01, 0.30),   # mean 0.55
            row("mrpc", "sam@sam_rho=0.05", 0.05, 0.70), row("cola", "sam@sam_rho=0.05", 0.05, 0.36),   # mean 0.53
            row("mrpc", "ksam@ksam_selection=top_k@sam_rho=0.002", 0.002, 0.70),
            row("cola", "ksam@ksam_selection=top_k@sam_rho=0.002", 0.002, 0.0),                       # mean 0.35
            row("mrpc", "ksam@ksam_selection=top_k@sam_rho=0.01", 0.01, 0.70),
            row("cola", "ksam@ksam_selection=top_k@sam_rho=0.01", 0.01, 0.0),                         # a tie
            row("mrpc", "ksam@ksam_selection=loss_sampled@sam_rho=0.05", 0.05, 0.9),                  # one task only
            row("mrpc", "ksam@ksam_selection=loss_sampled@ksam_loss_share=0.5@sam_rho=0.01", 0.01, 0.8),
            row("cola", "ksam@ksam_selection=loss_sampled@ksam_loss_share=0.5@sam_rho=0.01", 0.01, 0.3),
            row("mrpc", "ksam@ksam_selection=top_k_ascent@sam_rho=0.05", 0.05, 0.8),
            row("cola", "ksam@ksam_selection=top_k_ascent@sam_rho=0.05", 0.05, 0.3),
            row("mrpc", "adamw", 0.0, 0.85), row("cola", "adamw", 0.0, 0.35)]
    assert pick(rows) == {"sam": 0.01, "top_k": 0.002, "adaptive_k": 0.01, "top_k_ascent": 0.05}
    only_sampled = [row(t, "ksam@ksam_selection=loss_sampled@sam_rho=0.01", 0.01, 0.5) for t in ("mrpc", "cola")]
    assert pick(only_sampled) == {"loss_sampled": 0.01, "adaptive_k": 0.01}  # adaptive k takes it


def test_pick_rho_by_method_keeps_schedules_and_ks_apart_and_reads_the_asked_score():
    from studies.pick_rho import pick

    def row(method, heldout, dev):
        settings = {"optimizer": method.split("@")[0]}
        settings.update(dict(part.split("=") for part in method.split("@")[1:]))
        return {"task": "sst2", "method": method, "score": dev, "heldout_score": heldout, "settings": settings}

    rows = [row("sam@sam_rho=0.1", 0.79, 0.70), row("sam@sam_rho=0.2", 0.75, 0.76),
            row("sam@sam_every_n_steps=2@sam_rho=0.1", 0.70, 0.70), row("sam@sam_every_n_steps=2@sam_rho=0.2", 0.72, 0.60),
            row("ksam@ksam_selection=random_ascent@ksam_k=0.125@sam_rho=0.1", 0.74, 0.74),
            row("ksam@ksam_selection=random_ascent@ksam_k=0.125@sam_rho=0.2", 0.73, 0.73),
            row("ksam@ksam_selection=random_ascent@ksam_k=0.25@sam_rho=0.2", 0.76, 0.76), row("adamw", 0.9, 0.9)]
    assert pick(rows, "heldout_score", by_method=True) == {
        "sam": 0.1, "sam@sam_every_n_steps=2": 0.2, "ksam@ksam_selection=random_ascent@ksam_k=0.125": 0.1,
        "ksam@ksam_selection=random_ascent@ksam_k=0.25": 0.2}
    assert pick(rows, "score", by_method=True)["sam"] == 0.2  # on dev, rho 0.2 wins


def test_runs_of_another_grid_with_the_same_settings_are_reused(tmp_path, monkeypatch):
    """A tuning run is the grid's run when every setting agrees: recorded under the grid's name."""
    tuning = grid(tmp_path / "tuning", methods=["adamw@learning_rate=1e-4"], learning_rate=1e-4, seeds=[1])
    (tmp_path / "tuning").mkdir()
    settings = rg.run_settings("rte", "adamw@learning_rate=1e-4", 1, tuning)
    other = rg.run_settings("rte", "adamw@learning_rate=5e-5", 1, tuning)
    rows = [{"task": "rte", "method": m, "seed": 1, "key": rg.run_key(s), "metric": "accuracy", "score": score,
             "settings": s, "results": {}} for m, s, score in
            [("adamw@learning_rate=1e-4", settings, 0.6), ("adamw@learning_rate=5e-5", other, 0.5)]]
    (tmp_path / "tuning" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(rg, "run_one", lambda *args: pytest.fail(f"ran {args[:3]} again"))
    argv = ["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "--seeds", "1",
            "--learning_rate", "1e-4", "--results_dir", str(tmp_path / "grid"), "--runs_dir", str(tmp_path / "runs"),
            "--reuse_runs_from", str(tmp_path / "tuning" / "results.jsonl")]
    rg.main(argv)
    recorded = [json.loads(line) for line in (tmp_path / "grid" / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["score"]) for r in recorded] == [("adamw", 0.6)]
    assert recorded[0]["reused_from"].endswith("results.jsonl: adamw@learning_rate=1e-4")


def test_runs_are_reused_from_several_files_in_order_and_never_twice(tmp_path, monkeypatch):
    sources = grid(tmp_path, methods=["adamw"], learning_rate=1e-4, seeds=[1, 2])
    key = {seed: rg.run_key(rg.run_settings("rte", "adamw", seed, sources)) for seed in (1, 2)}

    def source(name: str, runs: list[tuple[int, float]]) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"task": "rte", "method": "adamw", "seed": seed, "key": key[seed],
                                            "metric": "accuracy", "score": score, "results": {}}) + "\n"
                                for seed, score in runs))
        return str(path)

    first, second = source("first", [(1, 0.6)]), source("second", [(1, 0.1), (2, 0.7)])
    monkeypatch.setattr(rg, "run_one", lambda *args: pytest.fail(f"ran {args[:3]} again"))
    rg.main(["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "--seeds", "1", "2",
             "--learning_rate", "1e-4", "--results_dir", str(tmp_path / "grid"), "--runs_dir", str(tmp_path / "runs"),
             "--reuse_runs_from", first, second])
    recorded = [json.loads(line) for line in (tmp_path / "grid" / "results.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["score"], r["reused_from"].split(":")[0]) for r in recorded] == [(1, 0.6, first), (2, 0.7, second)]


def test_the_plan_lists_done_reused_and_pending_runs_and_writes_nothing(tmp_path, capsys):
    tuning = grid(tmp_path, methods=["adamw"], learning_rate=1e-4, seeds=[1])
    lent = {"task": "rte", "method": "adamw@learning_rate=1e-4", "seed": 1, "metric": "accuracy", "score": 0.6,
            "key": rg.run_key(rg.run_settings("rte", "adamw", 1, tuning)), "results": {}}
    done = {**lent, "task": "cola", "method": "adamw", "key": rg.run_key(rg.run_settings("cola", "adamw", 1, tuning))}
    (tmp_path / "tuning.jsonl").write_text(json.dumps(lent) + "\n")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "results.jsonl").write_text(json.dumps(done) + "\n")
    before = sorted(path.name for path in (tmp_path / "grid").iterdir())
    rg.main(["--model_name_or_path", "m", "--tasks", "rte", "cola", "--methods", "adamw", "sam", "--seeds", "1",
             "2", "--learning_rate", "1e-4", "--results_dir", str(tmp_path / "grid"), "--runs_dir", "runs",
             "--reuse_runs_from", str(tmp_path / "tuning.jsonl"), "--plan_only"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["reused  seed 1 rte adamw", "to run  seed 1 rte sam", "done    seed 1 cola adamw"]
    assert len(lines) == 9 and lines[-1] == "1 done, 1 reused, 6 to run of 8"
    assert sorted(path.name for path in (tmp_path / "grid").iterdir()) == before


def rte_run(eval_loss=lambda method, seed: 0.5, step_time=lambda method, seed: 0.1,
            runtime=lambda method, seed: 10.0):
    """A stand-in for `run_one`: an RTE run scoring 50 %, with the given dev loss, step time and runtime."""
    def run(task, method, seed, settings, args):
        return {"task": task, "method": method, "seed": seed, "key": rg.run_key(settings), "metric": "accuracy",
                "score": 0.5, "settings": settings,
                "results": {"eval_accuracy": 0.5, "eval_loss": eval_loss(method, seed),
                            "train_runtime": runtime(method, seed), "train_median_step_time": step_time(method, seed)}}
    return run


def test_runs_at_the_uniform_predictors_loss_are_counted_in_the_score_cell(tmp_path, monkeypatch):
    """RTE seed 1 ends at ln 2 = 0.69315 (within 0.002), seed 2 at 0.690 (0.003 away): one of two."""
    losses = {1: 0.6925, 2: 0.690}
    monkeypatch.setattr(rg, "run_one", rte_run(eval_loss=lambda method, seed: losses[seed]))
    rg.main(["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "--seeds", "1", "2",
             "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")])
    assert "| adamw | 50.0 ± 0.0 (n=2; 1 at ln 2) | 50.0 |" in (tmp_path / "results.md").read_text()
    assert tasks.at_uniform_predictor("mnli", math.log(3) + 0.001) and not tasks.at_uniform_predictor("stsb", 0.6931)


def test_a_run_predicting_one_class_is_input_blind_whatever_its_loss():
    """CoLA's class prior has entropy 0.618, not ln 2: a run stuck at one class ends near that loss, so
    only its predictions tell; rows written before the count: a Matthews correlation of exactly 0."""
    from sklearn.metrics import matthews_corrcoef

    def cola(**results):
        return {"task": "cola", "results": {"eval_loss": 0.600, **results}}

    assert not tasks.run_at_uniform_predictor(cola())
    assert tasks.run_input_blind(cola(heldout_predicted_classes=1, heldout_matthews_correlation=0.0))
    assert tasks.run_input_blind(cola(heldout_predicted_classes=2, last_heldout_predicted_classes=1))
    assert not tasks.run_input_blind(cola(heldout_predicted_classes=2, last_heldout_predicted_classes=2))
    constant = float(matthews_corrcoef([0, 1, 1, 0, 1], [1, 1, 1, 1, 1]))  # one class predicted throughout
    assert tasks.run_input_blind(cola(heldout_matthews_correlation=constant))
    assert not tasks.run_input_blind(cola(heldout_matthews_correlation=0.13, last_heldout_matthews_correlation=0.12))
    assert tasks.run_input_blind({"task": "rte", "results": {"eval_loss": 0.5, "last_eval_loss": math.log(2)}})


def test_the_time_ratios_are_medians_of_same_seed_ratios(tmp_path, monkeypatch):
    """AdamW's seed-3 run was slowed (2.0 s a step against 1.0): the same-seed ratios of a method at
    1.5 s are 1.5, 1.5, 0.75, median 1.5; the ratio of the means would say 1.5 / 1.333 = 1.125. The
    runtimes, paired the same way from their own values: SAM's seed-3 run was slowed (300 s against
    120): ratios 1.2, 1.2, 3.0, median 1.2 (the ratio of the means: 1.8)."""
    steps = {("adamw", 1): 1.0, ("adamw", 2): 1.0, ("adamw", 3): 2.0, ("sam", 1): 1.5, ("sam", 2): 1.5, ("sam", 3): 1.5}
    runtimes = {("adamw", 1): 100, ("adamw", 2): 100, ("adamw", 3): 100, ("sam", 1): 120, ("sam", 2): 120,
                ("sam", 3): 300}
    monkeypatch.setattr(rg, "run_one", rte_run(step_time=lambda method, seed: steps[method, seed],
                                               runtime=lambda method, seed: runtimes[method, seed]))
    rg.main(["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "sam", "--seeds", "1", "2", "3",
             "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")])
    assert "| sam | 1.50 | 1.50 | 1.20 |" in (tmp_path / "results.md").read_text()


def test_a_seed_whose_runs_were_made_on_two_machines_gives_no_time_ratio(tmp_path, monkeypatch):
    """Seed 1: AdamW and SAM on machine A, 1.0 and 1.5 s a step (ratio 1.5). Seed 2: AdamW on A at
    1.0 s, SAM on a slower machine B at 3.0 s: not a ratio of methods, so left out; the cell is 1.50
    (pairing across machines would give the median of 1.5 and 3.0, 2.25). The score difference of
    seed 2 still counts (both rows are there), and the header counts each machine's runs."""
    machines = {("adamw", 1): "A", ("adamw", 2): "A", ("sam", 1): "A", ("sam", 2): "B"}
    steps = {("adamw", 1): 1.0, ("adamw", 2): 1.0, ("sam", 1): 1.5, ("sam", 2): 3.0}
    run = rte_run(step_time=lambda method, seed: steps[method, seed])
    monkeypatch.setattr(rg, "run_one", lambda *a: {**run(*a), "machine": machines[a[1], a[2]]})
    rg.main(["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "sam", "--seeds", "1", "2",
             "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")])
    text = (tmp_path / "results.md").read_text()
    assert "| sam | 1.50 | 1.50 | 1.00 |" in text
    assert "| sam | +0.0 [+0.0, +0.0] | +0.0 [+0.0, +0.0] |" in text
    assert "Runs per machine: A: 3; B: 1." in text
    # With seed 1 only, SAM's one run on B has no AdamW run to pair with: no ratio, not NaN.
    machines[("sam", 1)] = "B"
    rg.main(["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "sam", "--seeds", "1",
             "--results_dir", str(tmp_path / "c"), "--runs_dir", str(tmp_path / "c" / "runs")])
    assert "| sam | — | — | — |" in (tmp_path / "c" / "results.md").read_text()


def test_rows_without_a_machine_pair_with_each_other():
    """Rows written before rows named their machine (no `machine` field) are one group, paired as before."""
    rows = [{"task": "rte", "method": m, "seed": 1, "metric": "accuracy", "score": 0.5,
             "results": {"train_median_step_time": t}} for m, t in (("adamw", 1.0), ("sam", 2.0))]
    table = grid_summary.per_run_table(rows)
    values = dict(zip(zip(table.task, table.method, table.seed, table.machine), table.median_step_time))
    assert set(table.machine) == {grid_summary.MACHINE_NOT_RECORDED}
    assert stats.paired_ratio(values, "rte", "sam", "adamw") == 2.0


def test_the_machine_is_the_cpu_model_lscpu_names():
    lscpu = shutil.which("lscpu")
    if lscpu is None:
        pytest.skip("no lscpu on this machine")
    model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
        [lscpu], capture_output=True, text=True, check=True, env={"LC_ALL": "C"}).stdout.splitlines()
        if line.startswith("Model name:"))
    description = rg.machine_description()
    assert description.startswith(f"{model}, {os.cpu_count()} CPUs, ")


def test_the_average_leaves_out_a_task_still_under_way(tmp_path, monkeypatch):
    """RTE is complete (AdamW 0.50 and 0.60, SAM 0.55 and 0.70 on seeds 1 and 2: differences +5 and
    +10, mean +7.5); CoLA has AdamW's seed 1 only (0.20). The average is RTE's alone, and says so:
    with CoLA, SAM would have no average and AdamW's would be (55 + 20) / 2."""
    scores = {("rte", "adamw", 1): 0.50, ("rte", "adamw", 2): 0.60, ("rte", "sam", 1): 0.55, ("rte", "sam", 2): 0.70,
              ("cola", "adamw", 1): 0.20}
    run = rte_run()
    monkeypatch.setattr(rg, "run_one", lambda task, method, seed, *a: {
        **run(task, method, seed, *a), "score": scores[task, method, seed]})
    common = ["--model_name_or_path", "m", "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")]
    rg.main(common + ["--tasks", "rte", "--methods", "adamw", "sam", "--seeds", "1", "2"])
    rg.main(common + ["--tasks", "cola", "--methods", "adamw", "--seeds", "1"])
    rg.main(common + ["--tasks", "rte", "cola", "--methods", "adamw", "sam", "--summarize_only"])
    text = (tmp_path / "results.md").read_text()
    assert "| method | rte (accuracy) | cola (matthews_correlation) | average of rte |\n" in text
    assert "| adamw | 55.0 ± 7.1 (n=2) | 20.0 (n=1) | 55.0 |" in text
    assert "| sam | +7.5 [-24.3, +39.3] | — | +7.5 [-24.3, +39.3] |" in text


def test_methods_with_every_task_get_the_average_of_all_while_one_is_under_way(tmp_path, monkeypatch):
    """RTE and CoLA complete for AdamW and SAM (seeds 1, 2), top-k only on RTE. SAM - AdamW: RTE +5
    and +10, CoLA -1 and +4, so per seed (5 - 1) / 2 = +2 and (10 + 4) / 2 = +7: mean +4.5,
    half-width t(0.975, 1) * stdev(2, 7) / sqrt(2) = 12.706 * 3.536 / 1.414 = 31.77. The common
    average stays RTE's; top-k has no average of all."""
    top = "ksam@ksam_selection=top_k"
    scores = {("rte", "adamw", 1): 0.50, ("rte", "adamw", 2): 0.60, ("rte", "sam", 1): 0.55, ("rte", "sam", 2): 0.70,
              ("cola", "adamw", 1): 0.20, ("cola", "adamw", 2): 0.30, ("cola", "sam", 1): 0.19,
              ("cola", "sam", 2): 0.34, ("rte", top, 1): 0.40, ("rte", top, 2): 0.40}
    run = rte_run()
    monkeypatch.setattr(rg, "run_one", lambda task, method, seed, *a: {
        **run(task, method, seed, *a), "score": scores[task, method, seed]})
    common = ["--model_name_or_path", "m", "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")]
    rg.main(common + ["--tasks", "rte", "cola", "--methods", "adamw", "sam", "--seeds", "1", "2"])
    rg.main(common + ["--tasks", "rte", "--methods", top, "--seeds", "1", "2"])
    rg.main(common + ["--tasks", "rte", "cola", "--methods", "adamw", "sam", top, "--summarize_only"])
    text = (tmp_path / "results.md").read_text()
    header = ("| method | rte (accuracy) | cola (matthews_correlation) | average of rte "
              "| average of all 2 (methods that have them) |")
    assert text.count(header) == 2  # scores, paired differences
    assert "| adamw | 55.0 ± 7.1 (n=2) | 25.0 ± 7.1 (n=2) | 55.0 | 40.0 |" in text
    assert "| sam | +7.5 [-24.3, +39.3] | +1.5 [-30.3, +33.3] | +7.5 [-24.3, +39.3] | +4.5 [-27.3, +36.3] |" in text
    assert f"| {top} | -15.0 [-78.5, +48.5] | — | -15.0 [-78.5, +48.5] | — |" in text


def test_warm_starts_from_each_tasks_own_run_share_one_colour_and_labels_stay_distinct():
    """A warm start names its task's run dir, so MRPC's and SST-2's are two methods with one plot
    label (the run's parent folder): one colour, one legend entry. Twelve labels are more than the
    ten default colours: each still gets its own."""
    warm = "ksam@ksam_selection=top_k@model_name_or_path=runs/c/{}/adamw_num_train_epochs-1/seed1-ab@num_train_epochs=2"
    methods = [warm.format("mrpc"), warm.format("sst2"), "adamw"]
    assert method_specs.short_name(methods[0]) == "ksam top_k from=adamw_num_train_epochs-1 epochs=2"
    colors = plots.label_colors(methods)
    assert list(colors) == [method_specs.short_name(methods[0]), "adamw"] and colors["adamw"] != colors[method_specs.short_name(methods[0])]
    many = plots.label_colors([f"ksam@sam_rho={i}" for i in range(12)])
    assert len(many) == 12 and len({tuple(c) for c in many.values()}) == 12


# ----------------------------------------------------------------------------- the SAM-wins protocol's options
def test_the_committed_grids_keep_their_run_keys():
    """New options are written into a run's settings only when used: every committed grid's rows still
    match their grid's arguments (a changed key would drop them from the tables)."""
    for folder in ("glue-full", "glue-tuning", "collapse"):
        path = rg.REPO / "docs" / "results" / folder
        args = rg.ReproductionArguments(**json.loads((path / "reproduction_arguments.json").read_text()))
        rows = row_store.load_rows(path / "results.jsonl")
        assert rows and len(rg.current_rows(rows, args)) == len(rows), folder


def test_the_protocol_options_reach_run_glue_and_the_row(tmp_path, monkeypatch):
    args = grid(tmp_path, tasks=["sst2"], train_sample=1000, label_noise=0.3, eval_every_epoch=True,
                test_split_rows=["sst2=62349:67349", "mrpc=2500:3668"])
    settings = rg.run_settings("sst2", "adamw", 1, args)
    assert {key: settings[key] for key in ("train_sample", "label_noise", "test_split_rows", "eval_strategy")} == \
        {"train_sample": "1000", "label_noise": "0.3", "test_split_rows": "62349:67349", "eval_strategy": "epoch"}
    assert "test_split_rows" not in rg.run_settings("rte", "adamw", 1, args)  # a task without a block
    plain = rg.run_settings("sst2", "adamw", 1, grid(tmp_path))
    assert not {"train_sample", "label_noise", "test_split_rows"} & set(plain) and plain["eval_strategy"] == "no"

    real_run = subprocess.run

    def fake_run_glue(command, **kwargs):
        if "glue_scripts.run_glue" not in command:  # lscpu, for the machine's name
            return real_run(command, **kwargs)
        output_dir = rg.Path(command[command.index("--output_dir") + 1])
        output_dir.mkdir(parents=True)
        assert command[command.index("--save_weights") + 1] == "False"  # grids keep no weights by default
        assert command[command.index("--label_noise") + 1] == "0.3"
        (output_dir / "all_results.json").write_text(json.dumps(
            {"eval_accuracy": 0.8, "heldout_accuracy": 0.75, "train_median_step_time": 0.5}))
        history = [{"loss": 0.6, "step": 25, "epoch": 0.8}, {"eval_accuracy": 0.7, "eval_loss": 0.6, "epoch": 1.0},
                   {"eval_accuracy": 0.8, "eval_loss": 0.5, "epoch": 2.0}]
        (output_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))

    monkeypatch.setattr(rg.subprocess, "run", fake_run_glue)
    row = rg.run_one("sst2", "adamw", 1, settings, args)
    assert row["score"] == 0.8 and row["heldout_score"] == 0.75
    assert row["epochs"] == [{"epoch": 1.0, "score": 0.7, "eval_loss": 0.6}, {"epoch": 2.0, "score": 0.8, "eval_loss": 0.5}]
    assert row["settings"]["train_sample"] == "1000" and row["seed"] == 1 and "machine" in row


def test_a_spec_runs_its_cells_seed_by_seed_each_in_its_own_folder(tmp_path, monkeypatch):
    spec = {"about": "two cells", "arguments": {"model_name_or_path": "m", "tasks": ["rte"], "methods": ["adamw"],
                                                 "seeds": [1, 2], "results_dir": str(tmp_path / "out"),
                                                 "runs_dir": str(tmp_path / "runs"), "learning_rate": 1e-4},
            "cells": {"small": {"train_sample": 100, "label_noise": 0.3}, "large": {"train_sample": 400}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    calls = []

    def fake_run(task, method, seed, settings, args):
        calls.append((args.results_dir.split("/")[-1], seed, settings.get("train_sample"), settings.get("label_noise"),
                      settings["learning_rate"]))
        return rte_run()(task, method, seed, settings, args)

    monkeypatch.setattr(rg, "run_one", fake_run)
    rg.main(["--spec", str(tmp_path / "spec.json")])
    assert calls == [("small", 1, "100", "0.3", "0.0001"), ("large", 1, "400", None, "0.0001"),
                     ("small", 2, "100", "0.3", "0.0001"), ("large", 2, "400", None, "0.0001")]
    assert (tmp_path / "out" / "small" / "results.md").is_file() and (tmp_path / "out" / "large" / "results.md").is_file()
    assert "| small | rte | 100 | 0.3 |" in (tmp_path / "out" / "cells.md").read_text()
    rg.main(["--spec", str(tmp_path / "spec.json")])  # resumes: nothing left to run
    assert len(calls) == 4
    rg.main(["--spec", str(tmp_path / "spec.json"), "--cells", "large", "--seeds", "3", "--learning_rate", "2e-4"])
    assert calls[4:] == [("large", 3, "400", None, "0.0002")]  # the command line overrides the spec
    arguments = json.loads((tmp_path / "out" / "large" / "reproduction_arguments.json").read_text())
    assert arguments["seeds"] == [1, 2, 3]  # a call on a part of the grid keeps the earlier calls' seeds
    with pytest.raises(SystemExit, match="--cells huge: not in .*its cells are small, large"):
        rg.main(["--spec", str(tmp_path / "spec.json"), "--cells", "huge"])
    # --results_dir on the command line: another study folder (a GPU's rows), each cell in its own folder
    rg.main(["--spec", str(tmp_path / "spec.json"), "--cells", "small", "--seeds", "1",
             "--results_dir", str(tmp_path / "gpu")])
    assert calls[5:] == [("small", 1, "100", "0.3", "0.0001")]  # not done in that folder: run again
    assert (tmp_path / "gpu" / "small" / "results.jsonl").is_file() and not (tmp_path / "gpu" / "results.jsonl").exists()


def test_a_grid_refuses_to_start_on_a_nearly_full_disk(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rg.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100e9, 96e9, 4e9))
    monkeypatch.setattr(rg, "run_one", lambda *args: pytest.fail("a run started"))
    with pytest.raises(SystemExit, match=r"4.0 GB free under .*less than --min_free_gb 5: delete finished runs"):
        rg.main(["--model_name_or_path", "m", "--tasks", "rte", "--methods", "adamw", "--seeds", "1",
                 "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")])
    assert "free disk under" in capsys.readouterr().out


@pytest.mark.parametrize("spec", sorted((rg.REPO / "studies" / "specs").glob("*.json")), ids=lambda p: p.name)
def test_every_committed_spec_plans_without_writing(spec, capsys, monkeypatch):
    """A spec with an unknown argument, method or field fails here, not hours into a grid."""
    monkeypatch.chdir(rg.REPO)
    rg.main(["--spec", str(spec), "--plan_only"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ done, \d+ reused, \d+ to run of [1-9]\d*", last), last


@pytest.mark.parametrize("name", ["glue_tuning_lr", "glue_tuning_rho", "glue_full", "collapse", "frontier_controls",
                                  "frontier_default"])
def test_the_finished_studies_specs_name_exactly_their_committed_runs(name, capsys, monkeypatch):
    """The specs that replaced the shell grids (tuning, GLUE grid, collapse study), and the frontier's that
    extend frontier.json, plan every committed run as done: the same settings, hence the same keys, the
    warm starts' folders included."""
    monkeypatch.chdir(rg.REPO)
    rg.main(["--spec", f"studies/specs/{name}.json", "--plan_only"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ done, 0 reused, 0 to run of \d+", last), last


def test_the_glue_grid_uses_the_values_its_tuning_picks():
    """glue_full.json's learning rate and radii are what studies.pick_rho picks from the tuning's rows
    (top_k_ascent: the library's default rho, as the grid has always run it)."""
    from ksam_hf import KSAMConfig
    from studies.pick_rho import pick, pick_learning_rate

    tuning = row_store.load_rows(rg.REPO / "docs/results/glue-tuning/results.jsonl")
    spec = json.loads((rg.REPO / "studies/specs/glue_full.json").read_text())["arguments"]
    rate = pick_learning_rate(tuning)
    assert float(rate) == spec["learning_rate"]
    assert (rg.REPO / "docs/results/glue-tuning/lr.txt").read_text().strip() == rate
    picked = pick(tuning)
    family = {"sam@": "sam", "top_k@": "top_k", "top_k_ascent@": None, "loss_sampled@ksam_uniform_mix=0.5@sam": "loss_sampled",
              "ksam_loss_share": "adaptive_k"}
    for method in spec["methods"][1:]:
        rho = float(method.rsplit("sam_rho=", 1)[1])
        name = next(value for key, value in reversed(family.items()) if key in method)
        assert rho == (KSAMConfig.sam_rho if name is None else picked[name]), method


def test_the_early_stopping_and_compression_options_reach_run_glue_only_when_used(tmp_path):
    args = grid(tmp_path, tasks=["sst2"], early_stopping_split=0.2, eval_compressed=True)
    settings = rg.run_settings("sst2", "sam@sam_group_size=4@sam_rho=0.1", 1, args)
    assert {k: settings[k] for k in ("early_stopping_split", "early_stopping_every", "eval_compressed",
                                     "sam_group_size")} == \
        {"early_stopping_split": "0.2", "early_stopping_every": "0.5", "eval_compressed": "True", "sam_group_size": "4"}
    plain = rg.run_settings("sst2", "adamw@label_smoothing_factor=0.1", 1, grid(tmp_path, tasks=["sst2"]))
    assert plain["label_smoothing_factor"] == "0.1"
    assert not {"early_stopping_split", "eval_compressed", "sam_group_size"} & set(plain)


def write_spec(path, spec: dict):
    path.write_text(json.dumps(spec))
    return path


def test_a_spec_that_extends_another_takes_its_arguments_cells_and_summary(tmp_path):
    write_spec(tmp_path / "first.json", {
        "about": ["the first"], "budget": "2 runs", "summary": ["studies.summarize_beyond", "{study_dir}"],
        "arguments": {"learning_rate": 1e-4, "results_dir": "r", "seeds": [1, 2], "methods": ["adamw"]},
        "cells": {"a": {"tasks": ["rte"]}, "b": {"tasks": ["mrpc"], "num_train_epochs": 5}, "c": {"tasks": ["cola"]}}})
    (tmp_path / "later").mkdir()
    by_name = write_spec(tmp_path / "later" / "by_name.json", {
        "about": ["the second"], "extends": "../first.json", "arguments": {"methods": ["sam"], "seeds": [3]},
        "cells": ["c", "b"]})
    assert rg.load_spec(by_name) == {
        "about": ["the second"], "summary": ["studies.summarize_beyond", "{study_dir}"],
        "arguments": {"learning_rate": 1e-4, "results_dir": "r", "seeds": [3], "methods": ["sam"]},
        "cells": {"c": {"tasks": ["cola"]}, "b": {"tasks": ["mrpc"], "num_train_epochs": 5}}}
    own = write_spec(tmp_path / "own.json", {"extends": "first.json", "summary": [], "cells": {"d": {"tasks": ["wnli"]}},
                                             "arguments": {"learning_rate": None}})
    assert rg.load_spec(own) == {"summary": [], "cells": {"d": {"tasks": ["wnli"]}},
                                 "arguments": {"results_dir": "r", "seeds": [1, 2], "methods": ["adamw"]}}
    assert list(rg.load_spec(write_spec(tmp_path / "all.json", {"extends": "first.json"}))["cells"]) == ["a", "b", "c"]


def test_a_spec_that_extends_badly_fails_in_one_line(tmp_path):
    write_spec(tmp_path / "first.json", {"arguments": {}, "cells": {"a": {}}})
    with pytest.raises(SystemExit, match=r"cells z: not in the spec it extends; its cells are a\.$"):
        rg.load_spec(write_spec(tmp_path / "second.json", {"extends": "first.json", "cells": ["a", "z"]}))
    with pytest.raises(SystemExit, match=r"lost\.json: no spec .*gone\.json; name a JSON file"):
        rg.load_spec(write_spec(tmp_path / "lost.json", {"extends": "gone.json"}))
    (tmp_path / "sub").mkdir()
    write_spec(tmp_path / "x.json", {"extends": "sub/../y.json"})  # the same file by another path
    with pytest.raises(SystemExit, match=r"y\.json: its `extends` leads back to itself"):
        rg.load_spec(write_spec(tmp_path / "y.json", {"extends": "x.json"}))
    with pytest.raises(SystemExit, match=r"--spec: no spec .*nothing\.json"):
        rg.main(["--spec", str(tmp_path / "nothing.json"), "--plan_only"])


@pytest.mark.parametrize("name", ["beyond_training_less_pilot", "beyond_training_less_clean", "beyond_training_less_m1",
                                  "beyond_training_less_noisy_mrpc"])
def test_a_running_studys_specs_plan_every_committed_row_of_theirs_as_done(name, capsys, monkeypatch):
    """The issue-39 specs extend the pilot rather than copy it: each still plans as done every committed
    row of its cells, seeds and arms (the same settings, hence the same keys, as when the rows ran)."""
    monkeypatch.chdir(rg.REPO)
    spec = rg.load_spec(rg.REPO / "studies" / "specs" / f"{name}.json")
    arms = set(spec["arguments"]["methods"])
    committed = sum(1 for cell in spec["cells"]
                    for row in row_store.load_rows(rg.REPO / spec["arguments"]["results_dir"] / cell / "results.jsonl")
                    if row["seed"] in spec["arguments"]["seeds"] and row["method"] in arms)
    rg.main(["--spec", f"studies/specs/{name}.json", "--plan_only"])
    first = capsys.readouterr().out.splitlines()[0]
    assert committed > 0 and f"cells, {committed} done, 0 reused" in first, (committed, first)
