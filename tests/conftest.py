"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.testing_utils import SHARED, cpu_config


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The offline GLUE copy: `../shared/glue` next to the repository, else $GLUE_DIR (skips without)."""
    candidates = [SHARED / "glue"] + ([Path(os.environ["GLUE_DIR"])] if os.environ.get("GLUE_DIR") else [])
    for candidate in candidates:
        if (candidate / "RTE" / "train.tsv").is_file():
            return candidate
    pytest.skip(f"no GLUE TSV release found (looked in {', '.join(map(str, candidates))}; set GLUE_DIR)")


@pytest.fixture
def make_config(tmp_path):
    """`make_config(**fields)`: `cpu_config` in `tmp_path`."""

    return lambda **overrides: cpu_config(tmp_path, **overrides)
