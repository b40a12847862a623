"""The file source: listing, partitioning by murmur2, positions, resume, changed files, memory."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from bytewax_fraud.connectors.file_input import (
    FileInputChanged,
    FileInputError,
    file_line,
    file_offset,
    list_input,
)
from bytewax_fraud.connectors.file_source import FilePartition, FileSource, user_id_of
from bytewax_fraud.errors import SettingsError
from bytewax_fraud.partitioning import partition_for, routing_key
from bytewax_fraud.tools.produce import generated, write_file

PARTITIONS = 3


def _line(i: int, user: str) -> bytes:
    return json.dumps(
        {
            "transaction_id": f"t{i}",
            "user_id": user,
            "amount": 1.0,
            "currency": "EUR",
            "timestamp": 1.7e9 + i,
            "merchant": "m",
        }
    ).encode()


def _write(path: Path, lines: list[bytes], gz: bool = False) -> None:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)


def _source(spec: Path | str, lines_per_read: int = 7, **kw: Any) -> FileSource:
    return FileSource(tuple(list_input(str(spec))), PARTITIONS, lines_per_read, **kw)


def _drain(part: FilePartition, limit: int | None = None) -> list[tuple[str, int, bytes]]:
    """(file, offset, line) of every message until the end (or `limit` calls)."""
    out: list[tuple[str, int, bytes]] = []
    calls = 0
    while limit is None or calls < limit:
        calls += 1
        try:
            batches = part.next_batch()
        except StopIteration:
            break
        for b in batches:
            out += [(b.source, int(o), v or b"") for o, v in zip(b.offsets, b.values, strict=True)]
    return out


def _all_partitions(src: FileSource, resume: list[Any] | None = None) -> list[FilePartition]:
    return [
        src.build_part("s", routing_key(p), None if resume is None else resume[p])
        for p in range(PARTITIONS)
    ]


@pytest.fixture
def three_files(tmp_path: Path) -> tuple[Path, list[list[bytes]]]:
    """A directory of three inputs (one gzipped, one with blank lines) and their lines."""
    d = tmp_path / "in"
    d.mkdir()
    users = [f"user-{k}" for k in range(40)]
    content = [[_line(100 * f + i, users[(7 * i + f) % 40]) for i in range(50)] for f in range(3)]
    _write(d / "a.jsonl", content[0])
    _write(d / "b.jsonl.gz", content[1], gz=True)
    (d / "c.ndjson").write_bytes(b"\n".join([*content[2][:10], b"", b"  ", *content[2][10:]]))
    (d / "notes.txt").write_text("not an input\n")
    return d, content


def test_a_directory_lists_its_json_lines_files_sorted(three_files: Any) -> None:
    d, _ = three_files
    files = list_input(str(d))
    assert [Path(f.path).name for f in files] == ["a.jsonl", "b.jsonl.gz", "c.ndjson"]
    assert [f.gzipped for f in files] == [False, True, False]
    assert [Path(f.path).name for f in list_input(str(d / "*.jsonl*"))] == ["a.jsonl", "b.jsonl.gz"]
    assert len(list_input(str(d / "a.jsonl"))) == 1


def test_nothing_to_read_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="FRAUD_INPUT"):
        list_input(str(tmp_path / "none*.jsonl"))


def test_each_partition_gets_its_users_lines_in_file_order(three_files: Any) -> None:
    d, content = three_files
    got = {p: _drain(part) for p, part in enumerate(_all_partitions(_source(d)))}
    every: list[tuple[str, int, bytes]] = []
    for p, msgs in got.items():
        assert msgs, "every partition has users here"
        for _, _, line in msgs:
            assert partition_for(json.loads(line)["user_id"], PARTITIONS) == p
        offsets = [o for _, o, _ in msgs]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
        every += msgs
    # Together the partitions hold every line once, at its file and line number.
    want = []
    for f, name in enumerate(["a.jsonl", "b.jsonl.gz", "c.ndjson"]):
        for i, line in enumerate(content[f]):
            n = i + 1 if f < 2 or i < 10 else i + 3  # c.ndjson: two blank lines after line 10
            want.append((str(d / name), file_offset(f, n), line))
    assert sorted(every, key=lambda m: m[1]) == want
    assert file_line(file_offset(2, 13)) == (2, 13)


@pytest.mark.parametrize("stop_after", [1, 3, 9, 20, 23])
def test_resume_from_a_snapshot_continues_exactly(three_files: Any, stop_after: int) -> None:
    d, _ = three_files
    src = _source(d)
    whole = [_drain(part) for part in _all_partitions(src)]
    parts = _all_partitions(src)
    first = [_drain(part, stop_after) for part in parts]
    snaps = [part.snapshot() for part in parts]
    for part in parts:
        part.close()
    rest = [_drain(part) for part in _all_partitions(_source(d), snaps)]
    assert [a + b for a, b in zip(first, rest, strict=True)] == whole


def _half_read_snapshot(d: Path) -> Any:
    part = _source(d).build_part("s", routing_key(0), None)
    _drain(part, 10)  # into the second file
    snap = part.snapshot()
    assert snap["file"] == 1
    return snap


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shorten", "shorter"),
        ("append", "grew"),
        ("rewrite", "rewritten"),
        ("remove", "now FRAUD_INPUT lists"),
        ("insert-before", "now FRAUD_INPUT lists"),
    ],
)
def test_a_file_changed_under_a_resumed_run_is_refused(
    three_files: Any, change: str, message: str
) -> None:
    d, content = three_files
    snap = _half_read_snapshot(d)
    a = d / "a.jsonl"
    if change == "shorten":
        a.write_bytes(a.read_bytes()[:-10])
    elif change == "append":
        with a.open("ab") as f:
            f.write(_line(999, "user-1") + b"\n")
    elif change == "rewrite":
        data = bytearray(a.read_bytes())
        data[5:9] = b"XXXX"
        a.write_bytes(bytes(data))
    elif change == "remove":
        a.unlink()
    else:
        _write(d / "0.jsonl", content[0][:3])
    with pytest.raises(FileInputChanged, match=message):
        _source(d).build_part("s", routing_key(0), snap)


def test_files_after_the_position_may_change_and_new_ones_are_read(three_files: Any) -> None:
    d, content = three_files
    snap = _half_read_snapshot(d)
    _write(d / "c.ndjson", content[2][:5])  # not read yet: free to change
    user = next(u for u in (f"new-{k}" for k in range(100)) if partition_for(u, PARTITIONS) == 0)
    _write(d / "d.jsonl", [_line(7777, user)])
    rest = _drain(_source(d).build_part("s", routing_key(0), snap))
    assert rest[-1] == (str(d / "d.jsonl"), file_offset(3, 1), _line(7777, user))
    assert not any(name == str(d / "c.ndjson") and file_line(o)[1] > 5 for name, o, _ in rest)


def test_a_long_line_is_cut_so_parsing_rejects_it_and_the_next_line_is_intact(
    tmp_path: Path,
) -> None:
    p = tmp_path / "x.jsonl"
    _write(p, [b'{"user_id":"u","x":"' + b"y" * 100_000 + b'"}', _line(1, "u")])
    msgs = _drain(_source(p, max_line_bytes=1000).build_part("s", routing_key(0), None))
    msgs += _drain(_source(p, max_line_bytes=1000).build_part("s", routing_key(1), None))
    msgs += _drain(_source(p, max_line_bytes=1000).build_part("s", routing_key(2), None))
    by_offset = {o: v for _, o, v in msgs}
    assert len(by_offset[1]) == 1001
    assert by_offset[2] == _line(1, "u")


@pytest.mark.parametrize(
    ("line", "user"),
    [
        (b'{"user_id":"u1","amount":1}', "u1"),
        (b'{"user_id" : "u 2", "amount": 1}', "u 2"),
        (b'{"user_id":"\\u00fcser"}', "\u00fcser"),
        (b'{"device":{"user_id":"inner"},"user_id":"outer"}', "outer"),
        (b'{"user_id":5}', None),
        (b'{"amount":1}', None),
        (b"not json", None),
        (b'["user_id"]', None),
    ],
)
def test_user_id_of(line: bytes, user: str | None) -> None:
    assert user_id_of(line) == user


def test_reading_a_big_gzipped_file_keeps_memory_flat(tmp_path: Path) -> None:
    """200k lines (~34 MB of text) read through one partition in at most ~1 MB of Python memory."""
    path = tmp_path / "big.jsonl.gz"
    n = write_file(path, generated(5000, 1, 200_000))
    assert n == 200_000
    src = FileSource(tuple(list_input(str(path))), 1, 4096)
    part = src.build_part("s", routing_key(0), None)
    tracemalloc.start()
    seen = 0
    try:
        while True:
            try:
                batches = part.next_batch()
            except StopIteration:
                break
            seen += sum(len(b) for b in batches)
            del batches
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 200_000
    text_bytes = len(gzip.decompress(path.read_bytes()))
    print(f"\nread {text_bytes / 1e6:.0f} MB of text; Python peak {peak / 1e6:.2f} MB")
    assert peak < 8_000_000 < text_bytes


def test_a_damaged_gzip_file_stops_the_run_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b"\n".join(_line(i, "u") for i in range(5000)) + b"\n")
    p.write_bytes(data[: len(data) // 2])
    part = _source(p, lines_per_read=1000).build_part("s", routing_key(0), None)
    with pytest.raises(FileInputError, match=f"cannot read input file {p} after byte"):
        _drain(part)
