"""Smoke tests of `python -m benchmarks.gpu_check`: its skip path without CUDA, its logic on the
CPU (one torch thread, see test_benchmarks), its exit status when a check fails, and the rule for
"selection differs" rows."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check

TINY = ["--device", "cpu", "--model", "tiny", "--batch-size", "8", "--seq-len", "16"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_without_cuda_it_is_skipped_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--output", str(tmp_path / "out.json")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["skipped"] is True


def test_cpu_smoke_run_on_a_tiny_model(tmp_path, capsys, one_thread):
    output = tmp_path / "results.json"
    status = gpu_check.main(TINY + ["--steps", "2", "--warmup", "1", "--output", str(output)])
    assert status == 0
    results = json.loads(output.read_text())
    checks = {(r["precision"], r["mode"]): r for r in results["gradient_check"]}
    assert set(checks) == {(p, m) for p in ("bf16", "fp16") for m in ("sam", "ksam")}
    for row in checks.values():
        assert row["finite"] and row["passed"]
        assert isinstance(row["same_selection"], bool)
    assert checks["bf16", "sam"]["status"] == checks["fp16", "sam"]["status"] == "PASS"
    assert 0.99 < checks["bf16", "sam"]["cosine"] < 1 + 1e-9
    assert checks["bf16", "sam"]["relative_error"] > 0  # bf16 autocast did run
    timing = {(r["method"], r["precision"]): r for r in results["timing"]}
    assert set(timing) == {(m, p) for m in ("adamw", "sam", "ksam") for p in ("fp32", "bf16", "fp16")}
    assert all(r["steps"] == 2 and r["median_ms"] > 0 for r in timing.values())
    printed = capsys.readouterr().out
    assert "Gradient after one training_step" in printed and "Optimizer step time" in printed


def test_a_failed_gradient_check_exits_non_zero(tmp_path, capsys, one_thread):
    output = tmp_path / "results.json"
    status = gpu_check.main(TINY + ["--precisions", "fp32,bf16", "--min-cosine-bf16", "1.1", "--no-timing",
                                    "--output", str(output)])
    assert status == 1
    rows = json.loads(output.read_text())["gradient_check"]
    assert {(r["mode"], r["passed"]) for r in rows} == {("sam", False), ("ksam", False)}
    assert "gradient check(s) failed" in capsys.readouterr().out


def test_selection_differs_counts_only_when_sam_of_that_precision_passes():
    rows = [{"precision": "bf16", "mode": "sam", "status": "PASS"},
            {"precision": "bf16", "mode": "ksam", "status": "selection differs"},
            {"precision": "fp16", "mode": "sam", "status": "FAIL"},
            {"precision": "fp16", "mode": "ksam", "status": "selection differs"},
            {"precision": "fp8", "mode": "sam", "error": "RuntimeError: unsupported"},
            {"precision": "fp8", "mode": "ksam", "status": "selection differs"}]
    gpu_check.judge(rows)
    assert [r["passed"] for r in rows] == [True, True, False, False, False, False]
