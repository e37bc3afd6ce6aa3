"""Smoke tests of `python -m benchmarks.step_time`: a tiny random BERT, two timed steps, every
output written; and the guard that keeps an earlier run's files.

They check that the benchmark runs and reports every method with finite times, never how fast
anything is (the targets are the script's business, on a quiet machine at full size). One torch
thread: on a busy 2-core machine, two threads fighting for the cores make a tiny step 10x slower.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import step_time
from benchmarks.measure import LIBRARY_PHASES

METHODS = ["adamw", "sam", "ksam@0.1", "ksam@0.25", "ksam@0.5", "ksam@0.25+top_k", "ksam@0.25+top_k_ascent",
           "ksam@0.25+dropout_rank", "ksam@0.25+previous_loss", "random_ascent@0.25", "random_ascent@0.125",
           "momentum", "random_direction", "sam_every_2"]
SMOKE = ["--model", "tiny", "--inputs", "fixed", "--steps", "2", "--warmup", "1", "--batch-size", "8",
         "--seq-len", "16", "--threads", "1", "--quiet"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_step_time_benchmark_writes_every_method(tmp_path, restore_threads):
    result = step_time.main(SMOKE + ["--profile", "--output-dir", str(tmp_path), "--tag", "smoke"])

    with open(tmp_path / "smoke.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == METHODS
    for r in rows:
        for column in ("median_ms", "bound_ms", "ratio_to_adamw", "measured_over_bound", "peak_step_mib"):
            value = float(r[column])
            assert math.isfinite(value) and value >= 0, (r["method"], column, r[column])
        assert float(r["median_ms"]) > 0
    assert {r["method"]: int(r["k_examples"]) for r in rows if r["mode"] == "ksam"} == {
        "ksam@0.1": 1, "ksam@0.25": 2, "ksam@0.5": 4, "ksam@0.25+top_k": 2, "ksam@0.25+top_k_ascent": 2, "ksam@0.25+dropout_rank": 2,
        "ksam@0.25+previous_loss": 2, "random_ascent@0.25": 2, "random_ascent@0.125": 1}

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

    methods = saved["methods"]
    assert methods["ksam@0.25"]["ksam_selection"] == "loss_sampled"
    assert methods["ksam@0.25+top_k"]["ksam_selection"] == "top_k"
    assert methods["ksam@0.25+top_k_ascent"]["ksam_selection"] == "top_k_ascent"
    limits = {t["method"]: t["limit"] for t in saved["targets"] if t["target"].startswith("x AdamW")}
    assert limits["ksam@0.25+top_k_ascent"] > 1 > limits["ksam@0.25"]  # its descent is on the whole batch
    assert limits["random_ascent@0.25"] > 1  # so is random_ascent's
    assert methods["random_ascent@0.125"]["ksam_selection"] == "random_ascent"
    assert methods["momentum"]["sam_mode"] == "momentum" and methods["random_direction"]["sam_mode"] == "random_direction"
    assert methods["ksam@0.25+dropout_rank"]["ksam_rank_without_dropout"] is False
    previous = methods["ksam@0.25+previous_loss"]
    assert previous["ranked_from_memory"] == previous["steps"] == 2 + 1 + 1  # warm-up, timed, memory step

    phases = saved["profile"]["ksam@0.25"]["phases"]
    assert set(LIBRARY_PHASES) <= set(phases)  # read from the library's own record_function labels
    assert not any(key.startswith("ksam/") for key in saved["profile"]["adamw"]["phases"])
    profile_text = (tmp_path / "smoke_profile_ksam_k0.25.txt").read_text()
    assert all(phase in profile_text for phase in LIBRARY_PHASES)
    assert (tmp_path / "smoke_profile_adamw.txt").is_file()


def test_step_time_refuses_to_overwrite_an_earlier_run(tmp_path):
    earlier = tmp_path / "smoke.json"
    earlier.write_text("{}")
    with pytest.raises(SystemExit) as stopped:
        step_time.main(SMOKE + ["--output-dir", str(tmp_path), "--tag", "smoke"])
    message = str(stopped.value.code)
    assert str(earlier) in message and "--overwrite" in message and "\n" not in message
    assert earlier.read_text() == "{}"


def test_step_time_writes_outside_the_committed_results_by_default():
    output_dir = step_time.parse_args([]).output_dir
    assert output_dir == Path(step_time.__file__).resolve().parents[1] / "runs" / "benchmarks"


@pytest.mark.slow
def test_rank_dtype_benchmark_compares_the_kept_sets(tmp_path, restore_threads):
    from benchmarks import rank_dtype
    from benchmarks.common import MINILM_PATH

    if not (MINILM_PATH / "config.json").is_file() or not step_time.GLUE_BATCHES["sst2"][0].is_file():
        pytest.skip("needs ../shared's MiniLM and SST-2")
    torch.set_num_threads(1)
    result = rank_dtype.main(["--inputs", "sst2", "--batch-size", "8", "--train-steps", "1", "--batches", "2",
                              "--output", str(tmp_path / "rank.json")])
    assert json.loads((tmp_path / "rank.json").read_text()) == json.loads(json.dumps(result))
    assert result["k"] == 2 and result["batches"] == 2
    assert 0 <= result["mean_share_of_kept_differing"] <= 1 and 0 <= result["share_of_batches_identical"] <= 1
    assert all(value > 0 for value in result["median_ms"].values())


@pytest.mark.slow
def test_lora_step_time_times_every_lora_mode_paired(tmp_path, restore_threads):
    from benchmarks import lora_step_time

    torch.set_num_threads(1)
    result = lora_step_time.main(["--shape", "cpu-small", "--steps", "1", "--warmup", "0",
                                  "--output", str(tmp_path / "lora.json")])
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"lora_adamw", "lora_sam", "bi_lora", "flat_lora"}
    assert rows["lora_adamw"]["paired_ratio_to_lora_adamw"] == 1.0
    assert all(math.isfinite(row["median_ms"]) and row["median_ms"] > 0 for row in rows.values())
    assert (rows["lora_sam"]["pass_bound"], rows["bi_lora"]["pass_bound"]) == (2, 1)
    assert json.loads((tmp_path / "lora.json").read_text())["rows"] == result["rows"]


def test_the_bound_table_prices_passes_by_rows_and_reads_each_files_ratios(tmp_path):
    from benchmarks.bound_table import PASS_BOUNDS, table

    assert PASS_BOUNDS["ksam@0.25"][1] == pytest.approx(1 / 3 + 0.5)  # rank + ascent and descent on a quarter
    assert PASS_BOUNDS["ksam@0.25+top_k_ascent"][1] == pytest.approx(1 / 3 + 0.25 + 1)
    data = {"args": {"model": "m", "batch_size": 32, "seq_len": 128, "device": "cpu"}, "machine": {"cpu_model": "X"},
            "rows": [{"method": "adamw", "median_ms": 100.0, "bound_ms": 95.0, "paired_ratio_to_adamw": 1.0,
                      "measured_over_bound": 100 / 95},
                     {"method": "sam", "median_ms": 210.0, "bound_ms": 200.0, "paired_ratio_to_adamw": 2.1,
                      "measured_over_bound": 1.05}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    lines = table([path])
    assert "| `sam` | 2 over the batch | 2.00 | 2.10 | 2.00 | 1.05 |" in lines
    assert "| `momentum` | 1 (e from the optimizer's moment) | 1.00 | — | — | — |" in lines


def test_step_time_in_bf16_times_methods_and_bounds_under_autocast(tmp_path, restore_threads):
    """`--dtype bf16`: every trainer runs with `bf16=True` and the bounds under the same autocast;
    m-SAM's groups (`--group-sizes`) are timed beside them."""
    result = step_time.main(["--model", "tiny", "--inputs", "fixed", "--batch-size", "8", "--seq-len", "16",
                             "--ks", "0.25", "--variants", "--cheap-rules", "--group-sizes", "2", "--steps", "1",
                             "--warmup", "0", "--dtype", "bf16", "--output-dir", str(tmp_path), "--quiet"])
    assert [row["method"] for row in result["rows"]] == ["adamw", "sam", "ksam@0.25", "sam_m2"]
    assert result["args"]["dtype"] == "bf16" and (tmp_path / "step_time_tiny_fixed_bf16_cpu.json").is_file()
    assert all(math.isfinite(row["median_ms"]) and row["median_ms"] > 0 for row in result["rows"])
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["ksam@0.25"]["pass_bound"] == pytest.approx(1 / 3 + 0.5) and rows["sam_m2"]["pass_bound"] == 2.0
    assert rows["sam"]["over_pass_bound_ms"] == pytest.approx(rows["sam"]["median_ms"] - 2 * rows["adamw"]["median_ms"])


@pytest.mark.parametrize("bf16", [False, True])
def test_step_time_trainers_compute_in_the_dtype_they_are_timed_in(tmp_path, bf16):
    """A Trainer autocasts only once accelerate has prepared its model (`train()` does it first):
    the benchmark's trainers must be prepared too, or `--dtype bf16` times them in fp32 beside bf16
    bounds. Read from the dtype a Linear layer's output has inside the timed step."""
    from benchmarks.common import build_model, collate, random_examples
    from benchmarks.runners import BoundRunner, Method, MethodRunner, TrainerSettings, make_trainer

    settings = TrainerSettings(rho=0.05, seed=0, batch_size=4, use_cpu=True, output_dir=str(tmp_path), bf16=bf16)
    runner = MethodRunner(Method("sam", "sam"), make_trainer(Method("sam", "sam"), build_model("tiny", seq_len=16),
                                                             settings))
    dtypes = []
    linear = next(m for m in runner.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    batch = collate(random_examples(4, 16, 100, seed=0, varied_lengths=False))
    runner.step(batch)
    assert dtypes and set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}
    dtypes.clear()
    BoundRunner(runner).step(batch)  # the bound: the same passes, in the same precision
    assert len(dtypes) == 2  # SAM's two passes through the hooked layer
    assert set(dtypes) == {torch.bfloat16 if bf16 else torch.float32}
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())  # mixed precision: fp32 weights


def test_a_random_model_of_minilms_shape_for_a_gpu_session(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from benchmarks.common import main

    (tmp_path / "cfg").mkdir()
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path / "cfg")
    (tmp_path / "cfg" / "vocab.txt").write_text("[PAD]\n")
    main(["random-minilm", "--config", str(tmp_path / "cfg"), "--out", str(tmp_path / "out")])
    model = BertForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.hidden_size == 16 and model.config.num_labels == 2
    assert (tmp_path / "out" / "vocab.txt").read_text() == "[PAD]\n"


@pytest.mark.slow
def test_lora_step_time_of_every_rule_on_packed_rows(tmp_path, restore_threads):
    from benchmarks import lora_step_time

    torch.set_num_threads(1)
    result = lora_step_time.main(["--shape", "cpu-small", "--rules", "all", "--packed", "--steps", "1", "--warmup",
                                  "0", "--output", str(tmp_path / "llm.json")])
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == set(lora_step_time.METHODS) | set(lora_step_time.OTHER_RULES)
    assert rows["top_k_ascent"]["pass_bound"] == pytest.approx(1 / 3 + 0.25 + 1)
    assert all(math.isfinite(row["median_ms"]) and row["median_ms"] > 0 for row in rows.values())
    assert rows["lora_adamw"]["token_bound"] is None and rows["lora_sam"]["token_bound"] is None
    # the descent of top_k_ascent is the whole batch: its token bound is the ranking, the ascent's share and 1
    assert 1 / 3 + 1 < rows["top_k_ascent"]["token_bound"] <= 1 / 3 + 2


def test_packed_batch_is_trl_padding_free_layout_and_token_bound_prices_shares():
    from benchmarks.lora_step_time import packed_batch, token_bound
    from ksam_hf.packing import sequence_ids

    tokens = torch.arange(10, 1034)
    batch = packed_batch(tokens, torch.Generator().manual_seed(3))
    assert batch["input_ids"].shape == (1, 1024) and torch.equal(batch["input_ids"][0], tokens)
    assert "attention_mask" not in batch
    lengths = torch.bincount(sequence_ids(batch["position_ids"]))
    assert lengths.sum() == 1024 and (lengths[:-1] >= 64).all() and (lengths <= 512).all()
    assert torch.equal(batch["cu_seq_lens_q"][1:].long(), torch.cumsum(lengths, 0))
    # shares (ascent, descent) of two steps: (0.25, 1.0) and (0.5, 1.0) -> 1/3 + 0.375 + 1
    assert token_bound("top_k_ascent", [(0.25, 1.0), (0.5, 1.0)]) == pytest.approx(1 / 3 + 0.375 + 1)
    assert token_bound("random_ascent", [(0.25, 1.0)]) == pytest.approx(1.25)  # no ranking pass
    assert token_bound("momentum", []) is None


def test_alone_times_one_trainer_step_against_its_bound(restore_threads):
    from benchmarks import alone

    torch.set_num_threads(1)
    result = alone.main(["--method", "sam", "--model", "tiny", "--batch-size", "4", "--seq-len", "16", "--steps", "2",
                         "--dtype", "bf16"])
    assert [len(v) for v in result["step_times_s"].values()] == [2, 2]
    assert math.isfinite(result["measured_over_bound"]) and result["measured_over_bound"] > 0


def test_pass_bound_prices_every_k_and_m_sam():
    from benchmarks.bound_table import pass_bound

    assert pass_bound("adamw") == 1.0 and pass_bound("sam") == 2.0 and pass_bound("sam_m4") == 2.0
    assert pass_bound("ksam@0.1") == pytest.approx(1 / 3 + 0.2)
    assert pass_bound("ksam@0.5+top_k") == pytest.approx(1 / 3 + 1.0)
    assert pass_bound("ksam@0.5+top_k_ascent") == pytest.approx(1 / 3 + 0.5 + 1)
    assert pass_bound("random_ascent@0.125") == pytest.approx(1.125)
    assert pass_bound("ksam@0.25+previous_loss") is None  # no ranking pass: not priced here
