"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.testing_utils import SHARED, cpu_config

SLOW_TEST_TIMEOUT = 900
"""Seconds a `slow` test (a real training run, a group of processes) may take before pytest-timeout
fails it; every other test has pyproject's `timeout` (300 s)."""


def pytest_collection_modifyitems(config, items):
    """Give `slow` tests the larger limit, unless a test sets its own `@pytest.mark.timeout`."""
    for item in items:
        if item.get_closest_marker("slow") is not None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))


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
