"""Smoke tests of benchmarks/gpu_check.py: its skip path without CUDA, and its logic on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_is_skipped_cleanly(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--output", str(tmp_path / "out.json")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["skipped"] is True


def test_cpu_smoke_run_on_a_tiny_model(gpu_check, tmp_path, capsys):
    output = tmp_path / "results.json"
    status = gpu_check.main(["--device", "cpu", "--model", "tiny", "--batch-size", "8", "--seq-len", "16",
                             "--steps", "2", "--warmup", "1", "--strict", "--output", str(output)])
    assert status == 0
    results = json.loads(output.read_text())
    checks = {(r["precision"], r["mode"]): r for r in results["gradient_check"]}
    assert set(checks) == {(p, m) for p in ("bf16", "fp16") for m in ("sam", "ksam")}
    for row in checks.values():
        assert row["finite"] and row["same_selection"] and row["status"] == "PASS"
    assert 0.99 < checks["bf16", "sam"]["cosine"] < 1 + 1e-9
    assert checks["bf16", "sam"]["relative_error"] > 0  # bf16 autocast did run
    timing = {(r["method"], r["precision"]): r for r in results["timing"]}
    assert set(timing) == {(m, p) for m in ("adamw", "sam", "ksam") for p in ("fp32", "bf16", "fp16")}
    assert all(r["steps"] == 2 and r["median_ms"] > 0 for r in timing.values())
    printed = capsys.readouterr().out
    assert "Gradient after one training_step" in printed and "Optimizer step time" in printed
