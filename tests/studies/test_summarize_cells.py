"""The table over a spec's cells, against differences worked out by hand."""

from __future__ import annotations

import json

from studies import summarize_cells


def row(method: str, seed: int, heldout: float, dev: float, step: float, n: str = "1000", noise: str = "0.3",
        peak: float = -0.1, eval_loss: float = 0.5) -> dict:
    """A run whose dev score after its first epoch is `dev + peak` (above the final one for peak > 0)."""
    return {"task": "sst2", "method": method, "seed": seed, "score": dev, "heldout_score": heldout,
            "machine": "cpu", "settings": {"train_sample": n, "label_noise": noise, "num_train_epochs": "10"},
            "results": {"eval_loss": eval_loss, "heldout_loss": 0.4, "train_median_step_time": step},
            "epochs": [{"epoch": 1.0, "score": dev + peak}, {"epoch": 2.0, "score": dev}],
            "curve": [{"epoch": 0.5, "loss": 0.7}, {"epoch": 1.5, "loss": 0.6}]}


def test_the_cell_table_pairs_seeds_and_plots(tmp_path):
    rows = [row("adamw", 1, 0.78, 0.70, 1.0, peak=0.03), row("adamw", 2, 0.80, 0.72, 1.0, peak=0.03),
            row("sam@sam_rho=0.05", 1, 0.80, 0.69, 2.0), row("sam@sam_rho=0.05", 2, 0.84, 0.74, 2.1, eval_loss=0.6925)]
    other = [row("adamw", 1, 0.90, 0.88, 1.0, n="4000", noise="0"), row("sam@sam_rho=0.05", 1, 0.89, 0.88, 1.9,
                                                                          n="4000", noise="0")]
    for name, cell_rows in (("small", rows), ("large", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cell_rows))
    summarize_cells.main([str(tmp_path)])
    table = (tmp_path / "cells.md").read_text()
    # held-out: +2, +4 -> mean 3, sd sqrt(2), half-width t(0.975, 1) * sd / sqrt(2) = 12.706;
    # dev: -1, +2 -> mean 0.5, sd 2.121, half-width 12.706 * 1.5 = 19.06; steps 2.0 and 2.1 -> median 2.05.
    # against AdamW's best epoch (73, 75): -4, -1 -> mean -2.5, sd 2.121, half-width 19.06.
    # seed 2's dev loss 0.6925 is within 0.002 of ln 2 = 0.6931: one run at the 50/50 predictor.
    assert ("| small | sst2 | 1000 | 0.3 | 10 | sam@sam_rho=0.05 | 2 | 1 | 82.0 | 71.5 | 0.400 | 0.596 "
            "| +3.0 [-9.7, +15.7] | +0.5 [-18.6, +19.6] | -2.5 [-21.6, +16.6] | 2.05 |") in table
    assert "| small | sst2 | 1000 | 0.3 | 10 | adamw | 2 |  | 79.0 | 71.0 | 0.400 | 0.500 |  |  | 74.0 (best epoch) |" in table
    assert "| large | sst2 | 4000 | 0 | 10 | sam@sam_rho=0.05 | 1 |  | 89.0 | 88.0 | 0.400 | 0.500 | -1.0 (n=1) |" in table
    assert (tmp_path / "gap.png").stat().st_size > 0 and (tmp_path / "epochs.png").stat().st_size > 0
