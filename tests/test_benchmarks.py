"""Smoke test of benchmarks/step_time.py: a tiny random BERT, two timed steps, every output written.

It checks that the benchmark runs and reports every method with finite times, never how fast
anything is (the targets are the script's business, on a quiet machine at full size).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "step_time.py"
METHODS = ["adamw", "sam", "ksam@0.1", "ksam@0.25", "ksam@0.5", "ksam@0.25+dropout_rank",
           "ksam@0.25+previous_loss"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("ksam_step_time_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_benchmark_writes_every_method(tmp_path):
    benchmark = load_benchmark()
    result = benchmark.main(["--model", "tiny", "--inputs", "fixed", "--steps", "2", "--warmup", "1",
                             "--batch-size", "8", "--seq-len", "16", "--profile", "--quiet",
                             "--output-dir", str(tmp_path), "--tag", "smoke"])

    with open(tmp_path / "smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        for column in ("median_ms", "bound_ms", "ratio_to_adamw", "measured_over_bound", "peak_step_mib"):
            value = float(r[column])
            assert math.isfinite(value) and value >= 0, (r["method"], column, r[column])
        assert float(r["median_ms"]) > 0

    with open(tmp_path / "smoke.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    runners = METHODS + [f"bound:{m}" for m in METHODS]
    assert sorted(saved["step_times_s"]) == sorted(runners)
    for name in runners:
        times = saved["step_times_s"][name]
        assert len(times) == 2 and all(math.isfinite(t) and t > 0 for t in times), name
        assert name in saved["peak_step_bytes"]
    for key in ("platform", "cpu_count", "torch", "torch_threads"):
        assert saved["machine"][key] is not None
    assert {t["method"] for t in saved["targets"]} == set(METHODS) - {"adamw"}
    assert (tmp_path / "smoke.png").stat().st_size > 0
    assert (tmp_path / "smoke_profile_ksam_k0.25.txt").read_text().count("ksam/") > 0
