"""The row store: one JSON object a line (`results.jsonl`), one row a finished run, appended as runs
end, read back to resume a grid and to summarise it.

Safe under the faults a grid meets. A run killed while its row was written leaves a broken last
line: it is reported and skipped (never read as a result), so its run is redone; the next append
starts on a new line, so the broken line never takes the next row with it (a broken line that an
older writer glued to the next row gives that row back). Appends hold an exclusive lock on the
file: two grids writing to one file cannot interleave their lines.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path


def parse_line(line: str) -> tuple[list[dict], bool]:
    """The rows of one line, and whether a broken part was left out: a whole row, nothing, or the
    row that begins after the broken start of another (a half-written row with the next glued on)."""
    try:
        return [json.loads(line)], False
    except json.JSONDecodeError:
        pass
    start = line.find('{"', 1)
    while start != -1:
        try:
            return [json.loads(line[start:])], True
        except json.JSONDecodeError:
            start = line.find('{"', start + 1)
    return [], True


def load_rows(path: Path) -> list[dict]:
    """The rows of a results file; a line that is not a JSON row (a run killed while writing) is
    reported with its file and line, and skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        found, broken = parse_line(line)
        if broken:
            kept = " (the row glued after it on the same line kept)" if found else ""
            print(f"[rows] {path}:{number}: skipped, a broken row{kept}: its run counts as not done",
                  file=sys.stderr)
        rows += found
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one row under an exclusive lock and flush it to disk: a later crash cannot take a
    finished run with it, and a broken last line left by a killed writer stays on its own line."""
    line = json.dumps(row) + "\n"
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = "\n" + line
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
