"""The issue's invariants, as checks on what a client did against the hostile server.

- only `MJError`s escape;
- no secret surfaces in an exception (str, repr, attributes, the whole traceback chain) or a log record;
- every task the server created for a job is reported (result, error, `unfinished`, `unconfirmed`,
  or a cancelled job's `task_id` / `sent_at`);
- one task per job, unless the user opted in to resubmitting.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mjasync

from .server import API_KEY, HostileServer, Task, secret_forms

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

#: A run of this many characters of a secret is as bad as the whole (an excerpt cut at an edge).
PARTIAL = 12
#: Records of the hostile server's own aiohttp machinery, which shares the process, are not the client's.
SERVER_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web")


def leaked_in(text: str, secrets: Sequence[str] = (API_KEY,)) -> list[str]:
    """Which forms of `secrets` (whole, escaped, or a run of `PARTIAL` characters) `text` contains.

    Only what the client was given is its to keep: the API key, and the webhook secret once a
    receiver holds it.
    """
    found = []
    for secret in secrets:
        for form in secret_forms(secret):
            if form in text:
                found.append(form)
        for start in range(len(secret) - PARTIAL + 1):
            if secret[start : start + PARTIAL] in text:
                found.append(secret[start : start + PARTIAL])
                break
    return found


def _attribute_texts(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 3:
        return
    if isinstance(value, bytes | bytearray | memoryview):
        yield bytes(value).decode("latin-1")
        return
    yield repr(value)
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _attribute_texts(key, depth + 1)
            yield from _attribute_texts(item, depth + 1)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _attribute_texts(item, depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for item in vars(value).values():
            yield from _attribute_texts(item, depth + 1)


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def exception_texts(error: BaseException) -> Iterator[tuple[str, str]]:
    """(where, text) for everything an error shows: the whole chain's str, repr, attributes, traceback."""
    yield "traceback", "".join(traceback.format_exception(type(error), error, error.__traceback__))
    for link in _chain(error):
        name = type(link).__name__
        yield f"str({name})", str(link)
        yield f"repr({name})", repr(link)
        yield f"{name}.args", "".join(_attribute_texts(link.args))
        for attribute, value in vars(link).items():
            if attribute.startswith("__"):
                continue
            yield f"{name}.{attribute}", "".join(_attribute_texts(value))


def assert_no_secret_in_error(error: BaseException, secrets: Sequence[str] = (API_KEY,)) -> None:
    for where, text in exception_texts(error):
        leaks = leaked_in(text, secrets)
        assert not leaks, f"{type(error).__name__} shows a secret in {where}: {leaks} in {text[:600]!r}"


def assert_only_mj_error(error: BaseException | None) -> None:
    if error is None:
        return
    assert isinstance(error, mjasync.MJError), (
        f"a non-MJError escaped: {type(error).__module__}.{type(error).__qualname__}: {error!r}\n"
        + "".join(traceback.format_exception(type(error), error, error.__traceback__))[-3000:]
    )


class RecordCapture(logging.Handler):
    """Every log record of every logger (caplog's job, usable inside a hypothesis example)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> Iterator[tuple[str, str]]:
        for record in self.records:
            if record.name.startswith(SERVER_LOGGERS):
                continue
            assert self.formatter is not None
            yield record.name, self.formatter.format(record)
            yield (
                record.name,
                "".join(_attribute_texts({k: v for k, v in vars(record).items() if k != "exc_info"})),
            )
            if record.exc_info and record.exc_info[1] is not None:
                for where, text in exception_texts(record.exc_info[1]):
                    yield f"{record.name} {where}", text

    def assert_no_secret(self, secrets: Sequence[str] = (API_KEY,)) -> None:
        for where, text in self.texts():
            leaks = leaked_in(text, secrets)
            assert not leaks, f"a log record of {where} shows a secret: {leaks} in {text[:600]!r}"


@contextmanager
def capture_logs() -> Iterator[RecordCapture]:
    """Capture every record at DEBUG, from the root down (mjasync's own logger included)."""
    capture = RecordCapture()
    root = logging.getLogger()
    ours = logging.getLogger("mjasync")
    levels = (root.level, ours.level)
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(levels[0])
        ours.setLevel(levels[1])


def assert_one_task_per_job(server: HostileServer, *, resubmit_allowed: bool = False) -> None:
    """No job key was created twice (the client never paid twice); and the server itself did not break."""
    assert not server.faults, f"the hostile server failed by itself: {server.faults!r}"
    if resubmit_allowed:
        return
    seen: dict[str, Task] = {}
    for task in server.created:
        assert task.key not in seen, (
            f"the server created two tasks for one job ({task.key!r}): {seen[task.key].task_id} and "
            f"{task.task_id}; paths {server.paths}"
        )
        seen[task.key] = task


def unconfirmed_of(outcomes: Any) -> list[Any]:
    """`outcomes.unconfirmed` (helper H2's); an explicit failure while it does not exist."""
    kind = getattr(mjasync.types, "UnconfirmedSubmit", None)
    assert kind is not None and hasattr(outcomes, "unconfirmed"), (
        "Outcomes.unconfirmed (a list of mjasync.types.UnconfirmedSubmit(index, request, sent_at)) does not exist"
    )
    items = list(outcomes.unconfirmed)
    for item in items:
        assert isinstance(item, kind) and item.sent_at is not None, f"not an UnconfirmedSubmit: {item!r}"
    return items


def job_report(job: Any) -> tuple[str | None, float | None]:
    """A lone job's `task_id` and `sent_at` (helper H2's); an explicit failure while they do not exist."""
    assert hasattr(job, "task_id") and hasattr(job, "sent_at"), (
        "Job.task_id and Job.sent_at (the report of a cancelled job) do not exist"
    )
    return job.task_id, job.sent_at
