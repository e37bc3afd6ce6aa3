"""The reproduction driver: method specs, skipping finished runs, and the summary table's arithmetic."""

from __future__ import annotations

import json

import pytest

from glue_scripts import reproduce_glue as rg


def grid(tmp_path, **overrides) -> rg.ReproductionArguments:
    settings = dict(model_name_or_path="m", tasks=["rte", "cola"], methods=["adamw", "ksam@k=0.1"], seeds=[1, 2],
                    results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"))
    settings.update(overrides)
    return rg.ReproductionArguments(**settings)


def test_method_specs(tmp_path):
    args = grid(tmp_path)
    assert rg.method_settings("adamw", args) == {"optimizer": "adamw"}
    assert rg.method_settings("ksam@k=0.1@rho=0.2@selection=previous_loss", args) == {
        "optimizer": "ksam", "sam_rho": "0.2", "ksam_k": "0.1", "ksam_selection": "previous_loss"}
    assert rg.method_settings("ksam@rank_without_dropout=False", args) == {
        "optimizer": "ksam", "sam_rho": "0.05", "ksam_k": "0.25", "ksam_rank_without_dropout": "False"}
    with pytest.raises(ValueError, match="--methods"):
        rg.method_settings("adam", args)
    with pytest.raises(ValueError, match="--methods"):
        rg.method_settings("ksam@kk=3", args)


def test_grid_skips_finished_runs_and_summarises(tmp_path, monkeypatch):
    args = grid(tmp_path)
    scores = {("rte", "adamw", 1): 0.60, ("rte", "adamw", 2): 0.64, ("rte", "ksam@k=0.1", 1): 0.62,
              ("rte", "ksam@k=0.1", 2): 0.66, ("cola", "adamw", 1): 0.30, ("cola", "adamw", 2): 0.34,
              ("cola", "ksam@k=0.1", 1): 0.40, ("cola", "ksam@k=0.1", 2): 0.36}
    calls = []

    def fake_run(task, method, seed, settings, args):
        calls.append((task, method, seed))
        runtime = 100.0 if method == "adamw" else 80.0
        results = {f"eval_{rg.MAIN_METRIC[task]}": scores[task, method, seed], "train_runtime": runtime,
                   "train_median_step_time": runtime / 50, "train_steps": 50}
        return {"task": task, "method": method, "seed": seed, "key": rg.run_key(settings),
                "metric": rg.MAIN_METRIC[task], "score": scores[task, method, seed], "settings": settings,
                "results": results}

    monkeypatch.setattr(rg, "run_one", fake_run)
    argv = ["--model_name_or_path", "m", "--tasks", "rte", "cola", "--methods", "adamw", "ksam@k=0.1",
            "--seeds", "1", "2", "--results_dir", str(tmp_path), "--runs_dir", str(tmp_path / "runs")]
    rg.main(argv)
    assert len(calls) == 8
    rg.main(argv)  # everything done: nothing runs again
    assert len(calls) == 8
    rg.main(argv[:-4] + ["--learning_rate", "1e-4", "--results_dir", str(tmp_path), "--runs_dir", "x"])
    assert len(calls) == 16  # a changed hyper-parameter is a new run

    table = (tmp_path / "results.md").read_text()
    # rte ksam: mean 64.0, sample std of (62, 66) = 2.83; cola adamw: 32.0 +- 2.8; averages over tasks.
    assert "| ksam@k=0.1 | 64.0 ± 2.8 (n=2) | 38.0 ± 2.8 (n=2) | 51.0 | 80 | 0.80 | 0.80 |" in table
    assert "| adamw | 62.0 ± 2.8 (n=2) | 32.0 ± 2.8 (n=2) | 47.0 | 100 | 1.00 | 1.00 |" in table
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and (tmp_path / "score_vs_time.png").stat().st_size > 0
