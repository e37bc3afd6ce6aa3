"""CI cannot hang: every test has a limit (pytest-timeout, pyproject.toml), `slow` tests a larger one
(tests/conftest.py), and `.ci/run` runs the README's test command under an overall limit.

The hung tests here run in a child pytest with a 3-second limit, so that each check costs seconds."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import SLOW_TEST_TIMEOUT
from tests.testing_utils import REPO

LIMIT = 3
"""The per-test limit given to the child pytest, in seconds."""


def run_pytest(test_file: Path, *options: str) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m pytest` on one file in a child process (killed after 120 s if the limit failed)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir",
                             str(test_file.parent), *options, str(test_file)],
                            cwd=test_file.parent, capture_output=True, text=True, timeout=120)
    return result, time.monotonic() - started


def test_a_test_waiting_on_a_hung_child_process_fails_at_its_limit_and_the_child_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    test_file = tmp_path / "test_hang.py"
    test_file.write_text(textwrap.dedent(f"""
        import subprocess, sys

        def test_waits_on_a_child_that_hangs():
            child = "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
            subprocess.run([sys.executable, "-c", child])

        def test_after_it_still_runs():
            assert 1 + 1 == 2
    """))
    result, seconds = run_pytest(test_file, f"--timeout={LIMIT}")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Timeout (>{LIMIT:.1f}s) from pytest-timeout" in output, output
    assert "1 failed, 1 passed" in output, output  # the suite went on past the hung test
    assert seconds < 60, f"took {seconds:.0f} s"
    child = int(pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_the_thread_method_ends_a_run_hung_where_the_timeout_signal_cannot_reach(tmp_path):
    test_file = tmp_path / "test_masked.py"
    test_file.write_text(textwrap.dedent(f"""
        import signal, time
        import pytest

        @pytest.mark.timeout({LIMIT}, method="thread")
        def test_blocks_with_sigalrm_masked():  # as a C library that masks signals would
            signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
            time.sleep(600)
    """))
    result, seconds = run_pytest(test_file)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Timeout" in output and "test_blocks_with_sigalrm_masked" in output, output  # the stack dump
    assert seconds < 60, f"took {seconds:.0f} s"


def test_the_limits_are_in_force_and_printed_in_pytests_header(tmp_path):
    test_file = tmp_path / "test_nothing.py"
    test_file.write_text("def test_nothing():\n    pass\n")
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    result, _ = run_pytest(test_file)
    assert "timeout: 300.0s" in result.stdout and "timeout method: signal" in result.stdout, result.stdout


@pytest.mark.slow
def test_slow_tests_get_the_larger_limit(request):
    assert request.node.get_closest_marker("timeout").args == (SLOW_TEST_TIMEOUT,)
    assert SLOW_TEST_TIMEOUT > 300


def test_ci_runs_the_readmes_test_command_under_an_overall_limit():
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="([^"]+)"', ci, re.M).group(1)
    tests_section = (REPO / "README.md").read_text().split("## Tests", 1)[1]
    readme_command = re.search(r"```bash\n(?:.*\n)*?(python -m pytest[^\n]*)\n", tests_section).group(1)
    assert readme_command == command
    assert re.search(r'^limited \$SUITE_LIMIT .* \$TEST_COMMAND$', ci, re.M)
    assert re.search(r"^SUITE_LIMIT=\d+m", ci, re.M)
