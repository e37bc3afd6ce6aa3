"""The one-time conversion of the defaults check's legacy rows into the grid's row format."""

from __future__ import annotations

import json

from studies import grid as rg
from studies.migrate_rows import legacy_method, migrate
from studies.rows import load_rows


def legacy(task, batch, variant, flags, **recorded):
    return {"run": f"runs/defaults/{task}-b{batch}-{variant}-seed1", "task": task, "batch": batch, "variant": variant,
            "flags": flags, "seed": 1, "curve": [{"step": 25, "loss": 0.6}],
            "results": {"eval_combined_score": 0.8, "eval_loss": 0.5, **recorded}}


def test_the_method_is_the_last_optimizer_its_flags_and_the_k_sam_settings_it_recorded():
    recorded = dict(ksam_selection="random_ascent", ksam_k=0.25, sam_rho=0.15)
    assert legacy_method(legacy("mrpc", 8, "ra4", "--optimizer ksam --ksam_selection random_ascent --sam_rho 0.15",
                                **recorded)) == "ksam@ksam_selection=random_ascent@ksam_k=0.25@sam_rho=0.15"
    assert legacy_method(legacy("mrpc", 8, "sam2", "--optimizer ksam --optimizer sam --sam_every_n_steps 2 --sam_rho 0.2",
                                **recorded)) == "sam@sam_every_n_steps=2@sam_rho=0.2"  # a SAM run: K-SAM's fields unused
    assert legacy_method(legacy("mrpc", 8, "adamw", "--optimizer adamw", **recorded)) == "adamw"


def test_converted_rows_are_the_runs_the_spec_plans_as_done(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "defaults"
    folder.mkdir()
    rows = [legacy("mrpc", 8, "adamw", "--optimizer adamw"),
            legacy("mrpc", 8, "tka", "--optimizer ksam --ksam_selection top_k_ascent --sam_rho 0.01",
                   ksam_selection="top_k_ascent", ksam_k=0.25, sam_rho=0.01)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert migrate(folder) == 2 and migrate(folder) == 0  # once: a converted file is left as it is
    converted = load_rows(folder / "results.jsonl")
    assert [r["method"] for r in converted] == ["adamw", "ksam@ksam_selection=top_k_ascent@ksam_k=0.25@sam_rho=0.01"]
    assert converted[1]["results"] == rows[1]["results"] and converted[1]["curve"] == rows[1]["curve"]
    assert converted[1]["migrated_from"]["flags"] == rows[1]["flags"]
    assert converted[1]["settings"]["per_device_train_batch_size"] == "8"
    monkeypatch.chdir(rg.REPO)
    rg.main(["--spec", "studies/specs/defaults_check.json", "--plan_only", "--cells", "mrpc-b8",
             "--results_dir", str(folder)])
    plan = capsys.readouterr().out.splitlines()
    assert "done    seed 1 mrpc adamw" in plan
    assert "done    seed 1 mrpc ksam@ksam_selection=top_k_ascent@ksam_k=0.25@sam_rho=0.01" in plan


def test_the_committed_defaults_checks_are_in_the_grids_format(capsys, monkeypatch):
    monkeypatch.chdir(rg.REPO)
    for folder in ("docs/results/defaults", "docs/results/defaults-gpu"):
        assert all("method" in r and "key" in r for r in load_rows(rg.REPO / folder / "results.jsonl")), folder
    rg.main(["--spec", "studies/specs/defaults_check.json", "--plan_only", "--cells", "mrpc-b8"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "7 done, 0 reused, 0 to run of 7"


def test_the_device_copy_rounds_to_fp16_and_back_to_fp32(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from studies.device_copy import main

    model, glue = tmp_path / "model", tmp_path / "glue" / "MRPC"
    model.mkdir(), glue.mkdir(parents=True)
    weights = {"w": torch.tensor([1.0, 1 / 3, 1e-8]), "ids": torch.tensor([1, 2])}
    save_file(weights, model / "model.safetensors")
    (model / "config.json").write_text("{}")
    for split in ("train.tsv", "dev.tsv"):
        (glue / split).write_text("x\n")
    main(["pack", "--model", str(model), "--glue_dir", str(tmp_path / "glue"), "--tasks", "MRPC",
          "--out", str(tmp_path / "packed")])
    main(["unpack", "--packed", str(tmp_path / "packed" / "model_fp16"), "--out", str(tmp_path / "back")])
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert back["w"].dtype == torch.float32 and torch.equal(back["w"], weights["w"].half().float())
    assert torch.equal(back["ids"], weights["ids"])
    assert (tmp_path / "back" / "config.json").exists() and (tmp_path / "packed" / "glue" / "MRPC" / "dev.tsv").exists()
