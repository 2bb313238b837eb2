"""Entry layer: the batch journal and results file, append-only ndjson that survives a kill at any moment.

`journal.ndjson` holds one JSON object per line; `key` names one unit of work (a grid, or one of its
upscales):

    {"event": "run", "at": T, "pid": P, "input": "prompts.txt"}          a run started (informational)
    {"event": "submitting", "key": K, "at": T}        fsync'd BEFORE the job is sent
    {"event": "accepted", "key": K, "task_id": ID, "at": T}             fsync'd the moment the id is known
    {"event": "finished", "key": K, "ok": B, "task_id": ID, "image_id": I, "at": T, "line": {...}}
                                                      after K's line is in results.jsonl; `line` is a copy

`results.jsonl` holds exactly one `ResultLine` per key, however many runs it takes. Its line is
written (and fsync'd) before the journal's `finished` record, and a key with a line in results.jsonl
counts as finished even when that record is missing, so a kill between the two never gives a key a
second line.

results.jsonl is repaired from the journal, never re-run: a key the journal shows finished whose line
is missing (the file cut short, or a torn last line dropped) gets its line back, written again from
the copy in its `finished` record (`Journal.restore_results`). No job is waited on or sent again for
it, so a lost line never costs a lookup, let alone a second submit. (A `finished` record of an older
journal has no copy: the line is rebuilt from what the record holds, and a failure's error then reads
`LineLost`.)

What a restart does with each key (`KeyState.plan`):

- finished (a `finished` record, or a line in results.jsonl): skipped;
- accepted: the last accepted task id is waited on again, never submitted;
- only submitting (killed between sending and learning the task id): the provider's recent tasks are
  searched for that request since the `submitting` time, leaving out every task id the journal or
  results.jsonl names (those are other keys'); found → resumed, none → submitted again (the killed
  process can no longer be sending it), ambiguous → ended with that error;
- nothing: submitted.

A torn last line (a kill mid-write) is ignored when read and cut off before the next append; a bad
line anywhere else is a `JournalError` naming it, rather than a guess that could pay twice.

For tests only, `MJASYNC_BATCH_KILL_AT="<point>:<key>"` makes the process SIGKILL itself at one
point of one key (`kill_point`); unset, as it always is outside tests, it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import msgspec

from .._models.errors import ErrorInfo

__all__ = [
    "JOURNAL_NAME",
    "LOCK_NAME",
    "RESULTS_NAME",
    "AcceptedRecord",
    "AppendLog",
    "ErrorInfo",
    "FinishedRecord",
    "Journal",
    "JournalError",
    "JournalRecord",
    "KeyState",
    "Lookup",
    "Plan",
    "Resume",
    "ResultLine",
    "RunRecord",
    "Skip",
    "Submit",
    "SubmittingRecord",
    "kill_now",
    "kill_point",
    "lock_folder",
    "read_ndjson",
    "read_results",
    "replay",
]

JOURNAL_NAME: Final = "journal.ndjson"
RESULTS_NAME: Final = "results.jsonl"
LOCK_NAME: Final = ".lock"

T = TypeVar("T")


class JournalError(Exception):
    """A journal or results file that cannot be trusted (a bad line other than a torn last one)."""


# -- records ------------------------------------------------------------------------------------------


class RunRecord(msgspec.Struct, tag="run", tag_field="event", kw_only=True, frozen=True):
    """A run started (for people reading the journal; recovery ignores it)."""

    at: float
    pid: int
    input: str = ""


class SubmittingRecord(msgspec.Struct, tag="submitting", tag_field="event", kw_only=True, frozen=True):
    """The job is about to be sent: written and fsync'd first, so a kill after sending is never blind."""

    key: str
    at: float


class AcceptedRecord(msgspec.Struct, tag="accepted", tag_field="event", kw_only=True, frozen=True):
    """The provider accepted the job under `task_id`."""

    key: str
    task_id: str
    at: float


class FinishedRecord(msgspec.Struct, tag="finished", tag_field="event", kw_only=True, frozen=True):
    """The job's line is in results.jsonl; `line` is a copy of it, to write it again if it is lost."""

    key: str
    ok: bool
    at: float
    task_id: str | None = None
    image_id: str | None = None
    line: ResultLine | None = None

    def result_line(self) -> ResultLine:
        """The key's results line: the copy, else (an older journal) what this record holds."""
        if self.line is not None:
            return self.line
        error = None if self.ok else ErrorInfo(type="LineLost", message=_NO_COPY)
        return ResultLine(
            key=self.key, ok=self.ok, task_id=self.task_id, image_id=self.image_id, error=error, at=self.at
        )


_NO_COPY: Final = "the job failed, and results.jsonl lost its line; the journal has no copy saying why"


JournalRecord = RunRecord | SubmittingRecord | AcceptedRecord | FinishedRecord


class ResultLine(msgspec.Struct, kw_only=True, frozen=True):
    """One line of results.jsonl: how one unit of work ended.

    `key` is the unit's key (`<job key>` for a grid, `<job key>/upscaleN` for a follow-up), `job` the
    input job's key, `line` its line in the input file, `images` paths relative to the output folder.
    """

    key: str
    ok: bool
    job: str = ""
    line: int = 0
    action: str = ""
    prompt: str = ""
    task_id: str | None = None
    image_id: str | None = None
    image_url: str | None = None
    actions: list[str] = []
    images: list[str] = []
    images_error: str | None = None
    error: ErrorInfo | None = None
    retries: int = 0
    at: float = 0.0


_encoder: Final = msgspec.json.Encoder()
_record_decoder: Final = msgspec.json.Decoder(JournalRecord)
_result_decoder: Final = msgspec.json.Decoder(ResultLine)


def encode_line(value: object) -> bytes:
    """One ndjson line (with its newline) for a record or result line."""
    return _encoder.encode(value) + b"\n"


# -- reading ------------------------------------------------------------------------------------------


def read_ndjson(path: Path, decoder: msgspec.json.Decoder[T]) -> tuple[list[T], bool]:
    """Every complete line of `path` decoded, and whether a torn last line was left out.

    A missing file is empty. A last line without its newline is torn (a kill mid-write) and left out
    whatever it holds; a bad complete line raises `JournalError` naming the file and line.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], False
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with its newline
    records: list[T] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            records.append(decoder.decode(raw))
        except msgspec.MsgspecError as exc:
            raise JournalError(f"{path}:{number}: unreadable line ({exc}); fix or remove it") from None
    return records, bool(tail)


def read_results(path: Path) -> tuple[dict[str, ResultLine], bool]:
    """The lines of results.jsonl by key (the first one wins), and whether a torn last line was left out."""
    lines, torn = read_ndjson(path, _result_decoder)
    by_key: dict[str, ResultLine] = {}
    for line in lines:
        by_key.setdefault(line.key, line)
    return by_key, torn


# -- what to do with each key -------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """Finished in an earlier run."""


@dataclass(frozen=True)
class Resume:
    """Accepted earlier: wait on this task, never submit again."""

    task_id: str


@dataclass(frozen=True)
class Lookup:
    """Sent earlier (maybe) with its task id never written down: search the provider's tasks since `since`."""

    since: float


@dataclass(frozen=True)
class Submit:
    """Never sent: submit it."""


Plan = Skip | Resume | Lookup | Submit


@dataclass
class KeyState:
    """What the journal (and results.jsonl) say about one key."""

    submitting_at: float | None = None
    task_id: str | None = None
    finished: bool = False
    ok: bool | None = None
    image_id: str | None = None

    def plan(self) -> Plan:
        """What a restart does with this key."""
        if self.finished:
            return Skip()
        if self.task_id is not None:
            return Resume(self.task_id)
        if self.submitting_at is not None:
            return Lookup(self.submitting_at)
        return Submit()


def replay(records: list[JournalRecord], results: dict[str, ResultLine] | None = None) -> dict[str, KeyState]:
    """Each key's state after `records` in order, with every key in `results` finished."""
    states: dict[str, KeyState] = {}
    for record in records:
        if isinstance(record, RunRecord):
            continue
        state = states.setdefault(record.key, KeyState())
        if state.finished:
            continue  # finished is final; nothing is sent for it again
        if isinstance(record, SubmittingRecord):
            # A newer submit supersedes an older task id: that task was given up on when it was sent.
            state.submitting_at = record.at
            state.task_id = None
        elif isinstance(record, AcceptedRecord):
            state.task_id = record.task_id
        else:
            state.finished = True
            state.ok = record.ok
            state.task_id = record.task_id or state.task_id
            state.image_id = record.image_id
    for key, line in (results or {}).items():
        state = states.setdefault(key, KeyState())
        # results.jsonl is the record of what ended: a line there with no finished record still counts.
        state.finished = True
        state.ok = line.ok
        state.task_id = line.task_id or state.task_id
        state.image_id = line.image_id or state.image_id
    return states


# -- writing ------------------------------------------------------------------------------------------


def _cut_torn_tail(path: Path) -> bool:
    """Truncate `path` after its last newline (dropping a torn line); whether anything was cut."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with path.open("rb+") as handle:
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            chunk = handle.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep == size:
            return False
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a new file's name durable too (POSIX; Windows cannot open a folder for this)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppendLog:
    """An append-only file of whole lines: each line one `write`, optionally fsync'd before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        #: Whether opening cut off a torn last line.
        self.repaired = _cut_torn_tail(path)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            _fsync_folder(path.parent)

    def append(self, line: bytes, *, sync: bool = True) -> None:
        """Append `line` (ending in a newline); with `sync`, it is on disk when this returns."""
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if sync:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Journal:
    """The journal of one output folder: its replayed state on open, then one method per event."""

    def __init__(self, folder: Path, results: dict[str, ResultLine] | None = None) -> None:
        path = folder / JOURNAL_NAME
        records, self.torn = read_ndjson(path, _record_decoder)
        results = results or {}
        #: Each key's state as the journal and results.jsonl left it.
        self.states = replay(records, results)
        #: Every task id the journal or results.jsonl names, oldest first: each is some key's task.
        self.task_ids = list(
            dict.fromkeys(
                [line.task_id for line in results.values() if line.task_id]
                + [
                    r.task_id
                    for r in records
                    if isinstance(r, (AcceptedRecord, FinishedRecord)) and r.task_id
                ]
            )
        )
        # A key's first finished record is final (as in `replay`); its line must be in results.jsonl.
        first_finished: dict[str, FinishedRecord] = {}
        for record in records:
            if isinstance(record, FinishedRecord):
                first_finished.setdefault(record.key, record)
        self._lost_lines = [
            record.result_line() for key, record in first_finished.items() if key not in results
        ]
        self._log = AppendLog(path)

    def restore_results(self, results: AppendLog) -> list[str]:
        """Write again the lines of finished keys that results.jsonl lost; return their keys."""
        for line in self._lost_lines:
            results.append(encode_line(line))
        restored, self._lost_lines = [line.key for line in self._lost_lines], []
        return restored

    def state(self, key: str) -> KeyState:
        """The key's state (a fresh one when the journal never saw it)."""
        return self.states.setdefault(key, KeyState())

    def run_started(self, input_name: str) -> None:
        """Note that a run started (not needed for recovery, so not fsync'd)."""
        self._log.append(
            encode_line(RunRecord(at=time.time(), pid=os.getpid(), input=input_name)), sync=False
        )

    def submitting(self, key: str) -> None:
        """Record, durably, that `key` is about to be sent."""
        at = time.time()
        self._log.append(encode_line(SubmittingRecord(key=key, at=at)))
        state = self.state(key)
        state.submitting_at = at
        state.task_id = None

    def accepted(self, key: str, task_id: str) -> None:
        """Record, durably, that `key` is task `task_id` (nothing is written if it already was)."""
        state = self.state(key)
        if state.task_id == task_id:
            return
        self._log.append(encode_line(AcceptedRecord(key=key, task_id=task_id, at=time.time())))
        state.task_id = task_id

    def finished(self, line: ResultLine) -> None:
        """Record that `line` (a copy goes with the record) is in results.jsonl."""
        record = FinishedRecord(
            key=line.key, ok=line.ok, at=time.time(), task_id=line.task_id, image_id=line.image_id, line=line
        )
        self._log.append(encode_line(record))
        state = self.state(line.key)
        state.finished, state.ok, state.image_id = True, line.ok, line.image_id
        state.task_id = line.task_id or state.task_id

    def close(self) -> None:
        """Close the file."""
        self._log.close()


#: Test-only: "<point>:<key>" where `kill_point` kills this process (unset outside tests).
_KILL_AT: Final = os.environ.get("MJASYNC_BATCH_KILL_AT")


def kill_point(point: str, key: str) -> bool:
    """Whether the tests asked for a SIGKILL at `point` of `key`; when so, call `kill_now` there.

    Tests use it to stop a run at an exact moment (e.g. a task accepted but not yet journalled)
    without racing it; the caller may first do the part of its work the kill should land inside.
    """
    return _KILL_AT is not None and f"{point}:{key}" == _KILL_AT


def kill_now() -> None:
    """SIGKILL this process, as `kill -9` would: no cleanup, no flush."""
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def lock_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its `.lock` file) so two runs never share a journal.

    Raises `JournalError` when another process holds it. The lock goes with the process, however it
    ends. Where `fcntl` is missing (Windows) there is no lock.
    """
    if sys.platform == "win32":  # pragma: no cover
        yield
        return
    import fcntl

    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(f"another mjasync batch is running with --out {folder}") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
