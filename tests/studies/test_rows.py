"""The row store under the faults a grid meets: a run killed while writing its row, two grids
appending to one file at once."""

from __future__ import annotations

import json
import multiprocessing

from studies.rows import append_row, load_rows


def test_a_half_written_row_is_skipped_and_never_takes_the_next_row_with_it(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    append_row(path, {"run": 1})
    with open(path, "a") as handle:  # a run killed while its row was being written
        handle.write(json.dumps({"run": 2, "score": 0.5})[:9])
    append_row(path, {"run": 3})
    assert [row["run"] for row in load_rows(path)] == [1, 3]
    assert f"{path}:2: skipped" in capsys.readouterr().err
    assert path.read_text().splitlines()[1] == '{"run": 2'  # the broken line stays on its own line


def test_a_row_an_older_writer_glued_onto_a_broken_line_is_read_back(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text('{"run": 1}\n{"run": 2, "sco{"run": 3, "score": 0.7}\n')
    assert load_rows(path) == [{"run": 1}, {"run": 3, "score": 0.7}]
    assert "glued after it" in capsys.readouterr().err


def _append_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        append_row(path, {"writer": writer, "i": i, "padding": "x" * 70_000})  # larger than one write buffer


def test_two_grids_appending_at_once_cannot_interleave_their_lines(tmp_path):
    path = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(path), w, 150)) for w in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    lines = path.read_text().splitlines()
    assert len(lines) == 300
    rows = [json.loads(line) for line in lines]  # every line a whole row
    assert sorted((r["writer"], r["i"]) for r in rows) == [(w, i) for w in range(2) for i in range(150)]
