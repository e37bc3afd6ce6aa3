"""`KSAMConfig`: the SAM fields' validation, and one reading of every value from Python, the
command line and JSON files."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser

from ksam_hf import KSAMConfig
from ksam_hf.selection import resolve_k


@pytest.mark.parametrize("field,value", [
    ("sam_rho", -0.1), ("sam_rho", float("nan")), ("sam_rho", "abc"), ("ksam_k", 0), ("ksam_k", 1.5),
    ("ksam_k", "abc"), ("ksam_k", -2), ("ksam_k", True), ("sam_mode", "adam"), ("ksam_selection", "forward"),
    ("ksam_uniform_mix", 1.5), ("ksam_uniform_mix", -0.1), ("ksam_uniform_mix", 0), ("ksam_loss_share", 0), ("ksam_loss_share", 2.0),
    ("sam_adaptive", "maybe"), ("ksam_rank_without_dropout", 2),
])
def test_bad_sam_arguments_are_refused_naming_the_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=f"`{field}`"):
        KSAMConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize("value,batch,kept", [
    (0.25, 32, 8), (0.25, 6, 2), (0.5, 1, 1), (0.999, 4, 4),  # below 1: a fraction, rounded up
    (1, 32, 1), (1.0, 32, 1), (8, 32, 8), (8.0, 32, 8), (100, 6, 6),  # 1 and above: a count
])
def test_ksam_k_below_one_is_a_fraction_and_from_one_a_count(value, batch, kept, tmp_path):
    """As Transformers reads `logging_steps` / `warmup_steps`."""
    assert resolve_k(KSAMConfig(output_dir=str(tmp_path), ksam_k=value).ksam_k, batch) == kept


@pytest.mark.parametrize("text,batch,kept", [("1", 32, 1), ("1.0", 32, 1), ("8", 32, 8), ("0.25", 32, 8)])
def test_ksam_k_reads_the_same_from_the_command_line_and_json(text, batch, kept, tmp_path):
    parser = HfArgumentParser(KSAMConfig)
    (from_cli,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--ksam_k", text])
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path), "ksam_k": json.loads(text)}))
    (from_json,) = parser.parse_json_file(str(path))
    assert resolve_k(from_cli.ksam_k, batch) == resolve_k(from_json.ksam_k, batch) == kept


@pytest.mark.parametrize("text,value", [("false", False), ("False", False), ("no", False), ("0", False),
                                        ("true", True), ("yes", True), ("1", True)])
def test_bool_fields_in_json_read_as_on_the_command_line(text, value, tmp_path):
    """`"sam_adaptive": "false"` in a JSON file is False (a non-empty string is truthy in Python)."""
    path = tmp_path / "args.json"
    fields = ("sam_adaptive", "ksam_rank_without_dropout", "sam_sync_ascent")
    path.write_text(json.dumps({"output_dir": str(tmp_path), **{name: text for name in fields}}))
    (args,) = HfArgumentParser(KSAMConfig).parse_json_file(str(path))
    assert all(getattr(args, name) is value for name in fields)


def test_sam_field_names_come_from_the_dataclass():
    assert KSAMConfig.sam_field_names() == [
        "sam_mode", "sam_rho", "ksam_k", "ksam_selection", "ksam_uniform_mix", "ksam_loss_share", "sam_adaptive",
        "ksam_rank_without_dropout", "sam_sync_ascent", "ksam_rank_dtype", "sam_every_n_steps", "sam_step_share",
        "sam_start_fraction", "bi_lora_rank", "bi_lora_learning_rate", "sam_group_size"]


def test_every_sam_field_is_documented_in_the_docstring():
    for name in KSAMConfig.sam_field_names():
        assert f"\n        {name} (`" in KSAMConfig.__doc__, name
