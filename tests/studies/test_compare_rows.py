"""Your runs beside the committed runs with the same key, step ratios against the same seed's AdamW."""

from __future__ import annotations

import json

import pytest

from studies import compare_rows


def row(method: str, seed: int, key: str, heldout: float, dev: float, step: float) -> dict:
    return {"method": method, "seed": seed, "key": key, "heldout_score": heldout, "score": dev,
            "results": {"train_median_step_time": step}}


def write(folder, rows) -> None:
    folder.mkdir()
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_each_run_meets_its_committed_twin_by_key(tmp_path):
    write(tmp_path / "mine", [row("adamw", 1, "a1", 0.70, 0.64, 0.20), row("sam", 1, "s1", 0.79, 0.75, 0.42),
                              row("ksam", 1, "k1", 0.69, 0.63, 0.30)])
    write(tmp_path / "sam-wins", [row("adamw", 1, "a1", 0.699, 0.635, 0.40), row("sam", 1, "s1", 0.793, 0.757, 0.80),
                                  row("sam", 2, "s2", 0.5, 0.5, 1.0)])
    lines = compare_rows.main([str(tmp_path / "mine"), str(tmp_path / "sam-wins")])
    assert lines[2] == "| adamw | 1 | 70.0 | 69.9 | 64.0 | 63.5 | 0.200 | 0.400 | 1.00 | 1.00 |"
    assert lines[3] == "| sam | 1 | 79.0 | 79.3 | 75.0 | 75.7 | 0.420 | 0.800 | 2.10 | 2.00 |"
    assert lines[4] == "| ksam | 1 | 69.0 | — | 63.0 | — | 0.300 | — | 1.50 | — |"  # no committed twin


def test_no_runs_yet_is_one_line(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(SystemExit, match="no runs in .*run the grid first"):
        compare_rows.main([str(tmp_path / "mine"), str(tmp_path)])
