"""Input files: which files `FRAUD_INPUT` names, how a position in them is written, and reading.

The input is a file, a directory or a glob of JSON Lines files (gzipped or not:
gzip is recognised by its magic bytes, not by the name). The files are read one
after the other in sorted order, each line one message.

A position is (file index, line, byte offset in the decompressed text). The
offset a message carries is `file_index * LINE_SPAN + line` (line numbers start
at 1), so offsets grow through the whole input, as the state's replay fences
need, and a dead letter's origin names its file (`source`) and its line
(`offset % LINE_SPAN`; for the first file the offset *is* the line).

Each file is fingerprinted when the run starts: its size and a CRC-32 of its
first and last `SAMPLE_BYTES`. A resumed run compares the fingerprints of the
files it has read (all of them up to the one it is in) and stops with
`FileInputChanged` if one is missing, shorter, longer or rewritten. An edit
that keeps the size and falls outside both samples is not seen.
"""

from __future__ import annotations

import glob
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bytewax_fraud.errors import FraudError, SettingsError

#: Offsets of file k are k * LINE_SPAN + line: room for 10^12 lines per file.
LINE_SPAN = 10**12
#: Bytes of a file's head and tail that its fingerprint covers.
SAMPLE_BYTES = 1 << 20
#: The names a directory's files must have to be read (optionally followed by `.gz`).
DIRECTORY_SUFFIXES = (".jsonl", ".ndjson", ".json")
_GZIP_MAGIC = b"\x1f\x8b"


class FileInputError(FraudError):
    """The input files cannot be read."""


class FileInputChanged(FileInputError):
    """A file the run has (partly) read is not the one it read before the restart."""


def file_offset(file_index: int, line: int) -> int:
    """The message offset of `line` (from 1) of the `file_index`-th input file."""
    return file_index * LINE_SPAN + line


def file_line(offset: int) -> tuple[int, int]:
    """(file index, line) of a message offset: the inverse of `file_offset`."""
    return divmod(offset, LINE_SPAN)


@dataclass(frozen=True)
class InputFile:
    """One input file as it was when the run started.

    Attributes:
        path: The path, as listed.
        size: Bytes on disk.
        crc: CRC-32 of the first and the last `SAMPLE_BYTES` (one sample if the
            file is smaller than two).
        gzipped: Whether the file is gzip-compressed.
    """

    path: str
    size: int
    crc: int
    gzipped: bool

    def fingerprint(self) -> list[Any]:
        """What a snapshot keeps of the file (plain values)."""
        return [self.path, self.size, self.crc]


def fingerprint(path: str) -> InputFile:
    """Size, sampled CRC and compression of the file at `path`."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(SAMPLE_BYTES)
            crc = zlib.crc32(head)
            if size > 2 * SAMPLE_BYTES:
                f.seek(size - SAMPLE_BYTES)
                crc = zlib.crc32(f.read(SAMPLE_BYTES), crc)
            elif size > SAMPLE_BYTES:
                crc = zlib.crc32(f.read(), crc)
    except OSError as exc:
        raise FileInputError(
            f"cannot read input file {path}: {exc.strerror or exc}. Fix: check FRAUD_INPUT"
            " and the file's permissions"
        ) from exc
    return InputFile(path, size, crc, head[:2] == _GZIP_MAGIC)


def list_input(spec: str) -> list[InputFile]:
    """The files `spec` (FRAUD_INPUT) names, sorted, each fingerprinted.

    A directory gives its files named `*.jsonl`, `*.ndjson` or `*.json`
    (optionally `.gz`); a file gives itself; anything else is a glob.

    Raises:
        SettingsError: Nothing matches.
        FileInputError: A file cannot be read.
    """
    p = Path(spec)
    if p.is_dir():
        names = [
            str(x)
            for x in p.iterdir()
            if x.is_file() and x.name.removesuffix(".gz").endswith(DIRECTORY_SUFFIXES)
        ]
    elif p.is_file():
        names = [spec]
    else:
        names = [x for x in glob.glob(spec) if os.path.isfile(x)]
    if not names:
        raise SettingsError(
            f"FRAUD_INPUT={spec!r} names no file. Fix: set FRAUD_INPUT to a JSON Lines file,"
            f" a directory of *.jsonl[.gz] files, or a glob such as 'data/*.jsonl.gz'"
        )
    return [fingerprint(n) for n in sorted(names)]


@dataclass(frozen=True)
class Position:
    """Where reading continues: the next line of file `file` starts at byte `pos`.

    Attributes:
        file: Index of the file being read (len(files): all read).
        line: Lines of that file read so far.
        pos: Bytes of that file's (decompressed) text read so far.
        read: Fingerprints of the files up to and including `file`.
    """

    file: int
    line: int
    pos: int
    read: list[list[Any]]

    def to_state(self) -> dict[str, Any]:
        """The snapshot of this position (plain values only)."""
        return {"file": self.file, "line": self.line, "pos": self.pos, "read": self.read}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Position:
        """A position from its snapshot."""
        return cls(int(state["file"]), int(state["line"]), int(state["pos"]), state["read"])


def check_unchanged(files: list[InputFile], at: Position) -> None:
    """Raise unless every file `at` has read is, by its fingerprint, still the same.

    Raises:
        FileInputChanged: Naming the first file that differs and how.
    """
    fix = (
        " Fix: put back the original file, or start over with new (empty) FRAUD_STATE_DIR and"
        " FRAUD_RECOVERY_DIR: the state's replay fences hold positions in the old files"
    )
    for i, (path, size, crc) in enumerate(at.read):
        if i >= len(files) or files[i].path != path:
            now = "nothing" if i >= len(files) else files[i].path
            raise FileInputChanged(
                f"input file #{i} was {path} when the run started, now FRAUD_INPUT lists {now}"
                " there (a file was removed, renamed, or added before it)." + fix
            )
        f = files[i]
        if f.size < size:
            raise FileInputChanged(
                f"input file {path} is shorter than when the run read it ({f.size} bytes, was"
                f" {size})." + fix
            )
        if f.size > size:
            raise FileInputChanged(
                f"input file {path} grew since the run read it ({f.size} bytes, was {size}):"
                " lines appended to a file already read would be skipped; put new events in a"
                " new file that sorts after it." + fix
            )
        if f.crc != crc:
            raise FileInputChanged(
                f"input file {path} was rewritten since the run read it (same size, other"
                " content)." + fix
            )


class LineReader:
    """The lines of one input file from a byte position, each at most `max_bytes` long.

    A longer line is cut to `max_bytes + 1` bytes (so parsing rejects it as too
    long) and the rest of it skipped, so memory stays bounded whatever the file
    holds.
    """

    def __init__(self, f: InputFile, pos: int, line: int, max_bytes: int) -> None:
        """Open `f` and move to byte `pos` of its (decompressed) text, after `line` lines."""
        self.pos = pos
        self.line = line
        #: Whether a read found the end of the file.
        self.at_end = False
        self._max = max_bytes
        try:
            self._f: BinaryIO = (
                gzip.open(f.path, "rb")  # type: ignore[assignment]  # noqa: SIM115
                if f.gzipped
                else open(f.path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by close()
            )
            if pos:
                got = self._f.seek(pos)
                if got != pos:
                    raise FileInputChanged(f"input file {f.path} ends before byte {pos}")
        except (OSError, EOFError, zlib.error) as exc:
            raise FileInputError(f"cannot read input file {f.path}: {exc}") from exc
        self.path = f.path

    def read(self, n: int) -> tuple[list[int], list[bytes]]:
        """The next `n` lines (fewer: the file ended): their numbers and their bytes.

        Line ends are stripped. Blank lines are skipped, but counted, so line
        numbers stay those of the file.
        """
        numbers: list[int] = []
        values: list[bytes] = []
        readline = self._f.readline
        limit = self._max + 1
        line_no = self.line
        try:
            for _ in range(n):
                line = readline(limit)
                if not line:
                    self.at_end = True
                    break
                self.pos += len(line)
                line_no += 1
                if line[-1:] != b"\n" and len(line) == limit:
                    self.pos += self._skip_rest()
                value = line.rstrip(b"\r\n")
                if value.strip():
                    numbers.append(line_no)
                    values.append(value)
        except (OSError, EOFError, zlib.error) as exc:
            raise FileInputError(
                f"cannot read input file {self.path} after byte {self.pos}: {exc}. Fix: replace"
                " the damaged file; a resumed run continues from its last snapshot"
            ) from exc
        finally:
            self.line = line_no
        return numbers, values

    def _skip_rest(self) -> int:
        """Skip to the end of an over-long line; returns the bytes skipped."""
        skipped = 0
        while True:
            chunk = self._f.readline(1 << 16)
            skipped += len(chunk)
            if not chunk or chunk[-1:] == b"\n":
                return skipped

    def close(self) -> None:
        """Close the file."""
        self._f.close()
