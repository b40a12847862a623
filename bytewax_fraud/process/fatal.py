"""How the job ends on a fatal error: one line naming the cause and the fix, a non-zero exit.

Bytewax wraps an exception raised inside a worker (a source, a step, a sink) in
its own `BytewaxRuntimeError`s, chained with `raise ... from`; the cause the
operator needs is the `FraudError` at the bottom of that chain. `report` finds
it and prints one line; the whole traceback only with `FRAUD_DEBUG=1`. A full
disk met outside our code (e.g. Bytewax's recovery database) is recognised by
its OS error and reported the same way. Anything else is a bug and keeps
Python's usual traceback.

Both entry points use it: `python -m bytewax_fraud` calls `report` around the
run (exit status 2); `dataflows/fraud.py`, run by `python -m bytewax.run`,
calls `install`, which sets `sys.excepthook` (exit status 1, Python's own).
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import NoReturn, TextIO

from bytewax_fraud.errors import FraudError
from bytewax_fraud.status import STATS

#: Set to 1 to get the full traceback (and Rust's panic backtraces) as well.
DEBUG_ENV = "FRAUD_DEBUG"

#: Texts of a full volume in errors that are not an `OSError` (SQLite, RocksDB via Rust).
_DISK_FULL_TEXTS = ("no space left on device", "database or disk is full", "disk quota exceeded")


def debug_enabled() -> bool:
    """Whether `FRAUD_DEBUG` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then its causes (or contexts), outermost first."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(t in text for t in _DISK_FULL_TEXTS)


def one_line(exc: BaseException) -> str | None:
    """The line that explains a fatal error, or None when it is not one we know (a bug).

    The outermost `FraudError` in the chain wins: it was raised by the code that
    knows the context (which store, which topic) and names the fix.
    """
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, FraudError):
            return f"{type(e).__name__}: {e}"
    for e in chain:
        if _disk_full(e):
            where = getattr(e, "filename", None)
            at = f" ({where})" if where else ""
            return (
                f"DiskFull: a volume the job writes to is full{at}: {' '.join(str(e).split())}."
                " Fix: free space on the volume holding FRAUD_STATE_DIR, FRAUD_RECOVERY_DIR or"
                " FRAUD_OUTPUT_DIR, then restart: the job resumes from its last snapshot"
            )
    return None


def report(exc: BaseException, stream: TextIO | None = None) -> bool:
    """Print the one line for `exc` (and its traceback if FRAUD_DEBUG=1); False if unknown."""
    line = one_line(exc)
    if line is None:
        return False
    out = stream or sys.stderr
    with STATS.lock:
        STATS.failed = line.split(":", 1)[0]
    if debug_enabled():
        traceback.print_exception(exc, file=out)
    hint = "" if debug_enabled() else f" ({DEBUG_ENV}=1 shows the traceback)"
    print(f"error: {line}{hint}", file=out, flush=True)
    return True


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if not report(exc):
        sys.__excepthook__(kind, exc, tb)


#: Bytewax carries a Python exception across its Rust worker loop as a panic whose
#: payload is the exception; Rust's default hook prints these lines for it.
_PANIC_HEADER = re.compile(rb"^thread '[^']*' panicked at \S+:$")
_PANIC_PAYLOAD = b"Box<dyn Any>"
#: What Rust prints after the payload: a hint, or a backtrace (when RUST_BACKTRACE
#: was read before `install` could turn it off).
_PANIC_TAIL = re.compile(rb"^(note: |stack backtrace:|\s+\d+: |\s+at )")

_installed = False
#: Puts file descriptor 2 back and drains the filter (None until `install` set one up).
_restore_stderr: Callable[[], None] | None = None


def install() -> None:
    """Report fatal errors of this process as one line (both entry points call it first).

    Sets `sys.excepthook` (for `python -m bytewax.run`). Unless FRAUD_DEBUG=1, it
    also drops, from stderr, the lines Rust prints when Bytewax carries a Python
    exception through a worker as a panic ("thread ... panicked at ...",
    "Box<dyn Any>"): the exception itself is reported by `report`. Every other
    line passes through unchanged.
    """
    global _installed
    sys.excepthook = _excepthook
    if _installed or debug_enabled():
        return
    _installed = True
    os.environ["RUST_BACKTRACE"] = "0"  # Rust reads it at the first panic
    _filter_stderr()


def _filter_stderr() -> None:
    """Route file descriptor 2 through a pipe whose reader drops bytewax's panic lines."""
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        held: bytes | None = None  # a panic header, until the next line shows its payload
        skip_note = False
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                out: list[bytes] = []
                for line in lines:
                    if held is not None:
                        if line == _PANIC_PAYLOAD:
                            held, skip_note = None, True
                            continue
                        out.append(held)
                        held = None
                    if _PANIC_HEADER.match(line):
                        held = line
                        continue
                    if skip_note and (not line or _PANIC_TAIL.match(line)):
                        continue  # Rust's hint or backtrace, and the blank line after it
                    skip_note = False
                    out.append(line)
                if out:
                    os.write(original, b"\n".join(out) + b"\n")
        rest = [x for x in (held, pending) if x]
        if rest:
            os.write(original, b"\n".join(rest))

    thread = threading.Thread(target=pump, name="fraud-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        # Registered before the job's own exit hooks, so it runs after them (LIFO).
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the reader drains and ends
        thread.join(5.0)

    global _restore_stderr
    _restore_stderr = restore
    atexit.register(restore)


def exit_now(line: str, status: int, last_words: Callable[[], None] | None = None) -> NoReturn:
    """Print `line` as an error and end the process at once, from any thread.

    For a process that cannot finish (its workers wait on a peer forever): no
    exit hook runs and no thread is joined, except `last_words` (the summary),
    given 2 s; what they print is drained through the stderr filter before the
    exit. A hung step may hold the stats lock: nothing here waits on it for long.
    """
    if STATS.lock.acquire(timeout=1.0):
        STATS.failed = line.split(":", 1)[0]
        STATS.lock.release()
    print(f"error: {line}", file=sys.stderr, flush=True)
    if last_words is not None:
        words = threading.Thread(target=last_words, name="fraud-last-words", daemon=True)
        words.start()
        words.join(2.0)
    if _restore_stderr is not None:
        _restore_stderr()
    os._exit(status)
