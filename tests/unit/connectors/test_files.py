"""The JSON Lines sink: each line once across a resume, a fresh run starts empty."""

from __future__ import annotations

from pathlib import Path

from bytewax_fraud.connectors.files import JsonLinesSink


def test_a_resume_truncates_to_the_snapshot_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "out" / "predictions.jsonl"
    sink = JsonLinesSink(path, fresh=True)
    assert sink.list_parts() == ["predictions.jsonl"]
    part = sink.build_part("out", "predictions.jsonl", None)
    part.write_batch([b'{"a":1}\n', b'{"a":2}\n'])
    mark = part.snapshot()
    part.write_batch([b'{"a":3}\n'])  # written after the snapshot, then the crash
    part.close()
    assert mark == len(b'{"a":1}\n{"a":2}\n')

    resumed = JsonLinesSink(path, fresh=False).build_part("out", path.name, mark)
    resumed.write_batch([b'{"a":3}\n'])  # replayed
    resumed.close()
    assert path.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'


def test_a_fresh_run_empties_an_old_file(tmp_path: Path) -> None:
    path = tmp_path / "dead_letters.jsonl"
    path.write_bytes(b"old\n")
    JsonLinesSink(path, fresh=False)
    assert path.read_bytes() == b"old\n"
    JsonLinesSink(path, fresh=True)
    assert path.read_bytes() == b""
