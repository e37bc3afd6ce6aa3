"""The defaults check's table: each K-SAM variant against AdamW's run on the same command and seed."""

from __future__ import annotations

import json

from studies import summarize_defaults


def row(task, batch, method, score, loss, step, **settings):
    """A grid row of the defaults check (`settings`: the SAM fields it ran with, as the grid writes them)."""
    metric = summarize_defaults.METRIC[task]
    return {"task": task, "seed": 1, "method": method,
            "settings": {"optimizer": method.split("@")[0], "per_device_train_batch_size": str(batch),
                         **{k: str(v) for k, v in settings.items()}},
            "results": {metric: score, "eval_loss": loss, "train_median_step_time": step}}


def test_each_variant_beside_adamw_on_the_same_command(tmp_path):
    rows = [row("mrpc", 8, "adamw", 0.80, 0.45, 0.20),
            row("mrpc", 8, "ksam", 0.785, 0.693, 0.16, ksam_selection="top_k", sam_rho=0.05, ksam_k=0.25),
            row("mrpc", 32, "ksam", 0.70, 0.6, 0.5),                     # no AdamW row at batch 32: left out
            row("sst2", 8, "adamw", 0.90, 0.30, 0.10),
            row("sst2", 8, "ksam@ksam_k=0.5", 0.915, 0.28, 0.13, ksam_selection="loss_sampled", sam_rho=0.01, ksam_k=0.5)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summarize_defaults.main([str(tmp_path)])
    lines = (tmp_path / "results.md").read_text().splitlines()
    body = [line for line in lines if line.startswith("| mrpc") or line.startswith("| sst2")]
    assert body == [
        "| mrpc | 8 | 1 | `ksam` | ksam_selection=top_k, sam_rho=0.05, ksam_k=0.25 | 80.0 | 78.5 | -1.5 | 0.450 | 0.693 "
        "| 0.80 |",
        "| sst2 | 8 | 1 | `ksam@ksam_k=0.5` | ksam_selection=loss_sampled, sam_rho=0.01, ksam_k=0.5 | 90.0 | 91.5 | +1.5 "
        "| 0.300 | 0.280 | 1.30 |",
    ]


def test_the_input_blind_reference_comes_from_the_dev_labels(tmp_path):
    # MRPC dev labels 1, 1, 1, 0: entropy 0.562 nats; the majority class scores (3/4 + 6/7) / 2 = 80.4.
    (tmp_path / "results.jsonl").write_text(json.dumps(row("mrpc", 8, "adamw", 0.8, 0.45, 0.2)) + "\n")
    (tmp_path / "glue" / "MRPC").mkdir(parents=True)
    (tmp_path / "glue" / "MRPC" / "dev.tsv").write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + "".join(
        f"{label}\t{i}\t{i + 100}\ta\tb\n" for i, label in enumerate([1, 1, 1, 0])))
    summarize_defaults.main([str(tmp_path), str(tmp_path / "glue")])
    text = (tmp_path / "results.md").read_text()
    assert "eval_loss of 0.562 on mrpc" in text and "scores 80.4 on mrpc" in text


def test_the_machine_line_is_the_results_own_where_it_has_one(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps(row("mrpc", 8, "adamw", 0.8, 0.45, 0.2)) + "\n")
    summarize_defaults.main([str(tmp_path)])
    assert "Machine: 2 CPU cores (AVX-512), no GPU" in (tmp_path / "results.md").read_text()
    (tmp_path / "machine.txt").write_text("one NVIDIA H200 (the device tool)\n")
    summarize_defaults.main([str(tmp_path)])
    assert "Machine: one NVIDIA H200 (the device tool).\n" in (tmp_path / "results.md").read_text()


def test_a_run_of_another_optimizer_shows_its_method_not_the_k_sam_defaults_it_recorded(tmp_path):
    sam = row("mrpc", 8, "sam@sam_every_n_steps=2@sam_rho=0.2", 0.76, 0.6, 0.27, sam_every_n_steps=2, sam_rho=0.2)
    ksam = row("mrpc", 8, "ksam@ksam_selection=random_ascent@sam_rho=0.15", 0.764, 0.58, 0.26,
               ksam_selection="random_ascent", sam_rho=0.15, ksam_k=0.25)  # ksam_k left at its default
    assert summarize_defaults.variant_settings(sam) == {"optimizer": "sam", "sam_every_n_steps": "2", "sam_rho": "0.2"}
    assert summarize_defaults.variant_settings(ksam) == {"optimizer": "ksam", "ksam_selection": "random_ascent",
                                                        "sam_rho": "0.15", "ksam_k": "0.25"}
    rows = [row("mrpc", 8, "adamw", 0.80, 0.45, 0.20), sam, ksam]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summarize_defaults.main([str(tmp_path)])
    text = (tmp_path / "results.md").read_text()
    assert "| optimizer=sam, sam_every_n_steps=2, sam_rho=0.2 | 80.0 | 76.0 | -4.0 |" in text
    assert "| ksam_selection=random_ascent, sam_rho=0.15, ksam_k=0.25 | 80.0 | 76.4 | -3.6 |" in text
