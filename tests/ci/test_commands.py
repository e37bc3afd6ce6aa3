"""Every command the documentation prints still runs: each `python -m MODULE`, `python SCRIPT.py`
and `bash SCRIPT.sh` in README.md, glue_scripts/, studies/ and docs/ is started with `--help` (in
this process, for speed), and every repository path it names exists. A moved script or spec cannot
leave a dead command behind."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = {"results.md", "frontier.md", "cells.md", "token_lengths.md"}
"""Tables the summaries write: they record the command that wrote them, as it was then."""
ROOTS = ("studies/", "docs/", "glue_scripts/", "examples/", "benchmarks/", "ksam_hf/", "tests/")


def documents() -> list[Path]:
    found = [REPO / "README.md", REPO / "glue_scripts" / "README.md", REPO / "studies" / "README.md"]
    return found + sorted(p for p in (REPO / "docs").rglob("*.md") if p.name not in GENERATED)


def commands(text: str) -> list[str]:
    """The commands in a Markdown text: the lines of ```bash blocks and the inline code spans that
    start with python, nice python, bash, torchrun or accelerate (a line ending in \\ continues)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " "))
    found += [span for span in spans if re.match(r"(nice )?(python|bash|torchrun|accelerate) ", span)]
    return [c for c in found if re.match(r"(nice )?(python|bash|torchrun|accelerate)\b", c)]


def entry_point(command: str) -> tuple[str, str] | None:
    """("module", NAME) for `python -m NAME`, ("path", FILE) for a script of the repository, or None."""
    words = command.split()
    if "-m" in words and words[0] in ("python", "nice") and words[words.index("-m") + 1] not in ("pytest", "pip") \
            and "<" not in words[words.index("-m") + 1]:  # studies.<name>: a pattern, not a command
        return "module", words[words.index("-m") + 1]
    script = next((w for w in words if w.endswith((".py", ".sh")) and w.startswith(ROOTS)), None)
    return ("path", script) if script else None


def named_paths(command: str) -> list[str]:
    return [w for w in command.split() if w.startswith(ROOTS) and not w.endswith("*")]


ALL = sorted({(str(doc.relative_to(REPO)), c) for doc in documents() for c in commands(doc.read_text())})


def test_the_documents_print_commands_to_check():
    modules = {entry_point(c) for _, c in ALL}
    assert ("module", "studies.grid") in modules and ("path", "glue_scripts/run_glue.py") in modules


@pytest.mark.parametrize("document,command", ALL, ids=[f"{d}: {c[:60]}" for d, c in ALL])
def test_every_documented_command_names_files_that_exist(document, command):
    missing = [p for p in named_paths(command) if not (REPO / p.split(":")[0]).exists()]
    assert not missing, f"{document}: `{command}` names {missing}, which do not exist"


ENTRY_POINTS = sorted({e for _, c in ALL if (e := entry_point(c)) is not None})


@pytest.mark.parametrize("kind,name", ENTRY_POINTS, ids=[n for _, n in ENTRY_POINTS])
def test_every_documented_entry_point_answers_help(kind, name, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    if kind == "path" and name.endswith(".sh"):
        assert (REPO / name).is_file()
        return
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        if kind == "module":
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(REPO / name), run_name="__main__")
    assert exit_.value.code in (0, None), f"{name} --help exited with {exit_.value.code}"
    assert "usage" in capsys.readouterr().out.lower()
