"""Entry layer: `mjasync batch`, many prompts through `Client.run_many`, resumable after any kill.

    mjasync batch prompts.txt|jobs.jsonl --out DIR [--concurrency N] [--upscale 1,2] [--via poll|stream]
                  [--no-images] [--emulator] [--base-url URL] [--api-key KEY]

Input: a `.txt` file (one prompt per line; blank lines and `#` comments skipped) or a `.jsonl` file,
one `JobSpec` object per line: `{"prompt": ..., "id"?: ..., "params"?: {PromptParams fields},
"mode"?: "fast"|"relax"|"turbo", "image_urls"?: [...], "upscale"?: [1, 2]}`. The whole file is read
and every job built (so validated) before anything is sent; a bad line is exit 2 naming it.

Each job has a key: its `id`, else `L<line>-<hash of its content>`; each upscale follow-up is
`<key>/upscale<n>`, sent after its grid finishes. `--out` gets `results.jsonl` (one line per key,
ever), `images/` (`<key>.<action>.png`) and `journal.ndjson`, whose format and recovery rules are in
`_journal`. Rerunning the same command resumes: finished keys are skipped, accepted ones are waited
on by task id, and nothing is submitted twice.

A job "ends" with its result, or with an error that running it again cannot change (the provider
failed it or refused it with a 4xx, the input is invalid, its submit is ambiguous): both get their
line. Other errors (connection trouble, 5xx, 401, 429, our own wait deadline) leave it for a rerun,
which resumes it by task id when it has one. Exit status: 0 every job ended; 1 some did not;
2 bad input or usage; 130 interrupted (SIGINT; 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, cast

import anyio
import msgspec

import mjasync
from mjasync import (
    AmbiguousSubmitError,
    APIStatusError,
    AuthenticationError,
    ImagineResult,
    InvalidRequestError,
    Job,
    JobFailedError,
    MJError,
    PromptParams,
    RateLimitError,
    TaskHandle,
)

from .._config import ENV_API_KEY, ENV_API_KEY_FALLBACK
from ._journal import (
    JOURNAL_NAME,
    RESULTS_NAME,
    AppendLog,
    ErrorInfo,
    Journal,
    JournalError,
    Lookup,
    ResultLine,
    Resume,
    Skip,
    encode_line,
    lock_folder,
    read_results,
)

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

__all__ = ["configure_parser", "load_jobs", "run_batch"]

#: Exit statuses.
EXIT_OK: Final = 0
EXIT_UNFINISHED: Final = 1
EXIT_USAGE: Final = 2
EXIT_SIGINT: Final = 130
EXIT_SIGTERM: Final = 143

_ID_RE: Final = re.compile(r"[^\s/]{1,200}")
_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp", ".gif")
#: In-flight jobs shown as their own progress rows (the overall bar counts the rest).
_MAX_ROWS: Final = 10
#: Seconds between progress lookups for the rows on screen (only with a live display).
_PROGRESS_EVERY: Final = 1.0

_EPILOG = """\
input:
  prompts.txt   one prompt per line; blank lines and lines starting with # are skipped
  jobs.jsonl    one object per line: {"prompt": "...", "id": "...", "params": {PromptParams fields},
                "mode": "fast|relax|turbo", "image_urls": ["https://..."], "upscale": [1, 2]}
                (only "prompt" is required; "upscale" overrides --upscale for that job)

output (--out DIR):
  results.jsonl  one line per job key, however many runs it takes: key, job, line, action, prompt, ok,
                 task_id, image_id, image_url, actions, images, images_error, error {type, message,
                 code, status}, retries, at
  images/        <key>.<action>.png for each result (unless --no-images)
  journal.ndjson {"event": "submitting"|"accepted"|"finished", "key", ...}: what a rerun resumes from

resuming: run the same command again after Ctrl-C, a crash or a kill. Finished keys are skipped,
accepted ones are waited on by task id, and one killed between sending and learning its task id is
looked up at the provider first (found: resumed; not found: sent; ambiguous: ended with that error).
Nothing is submitted twice. A job's key is its "id", else L<line>-<hash of the line> (editing the
file renumbers unnamed jobs: give them ids if you edit it between runs); an upscale's key is
<key>/upscale<n>, sent once its grid has finished (if the grid failed, it gets a "Skipped" line).

exit status: 0 every job ended (a failed job has ended: its error is in results.jsonl); 1 some jobs
did not end (connection trouble, 5xx, 401, 429, wait deadline: rerun to resume them); 2 bad input or
usage; 130 interrupted (rerun to resume).
"""


# -- input ----------------------------------------------------------------------------------------------


class InputError(Exception):
    """A bad input file or option, found before anything is sent."""


class JobSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One line of a .jsonl input file."""

    prompt: str
    id: str | None = None
    params: PromptParams | None = None
    mode: Literal["fast", "relax", "turbo"] | None = None
    image_urls: list[str] = []
    upscale: list[int] | None = None


_spec_decoder: Final = msgspec.json.Decoder(JobSpec)
_spec_encoder: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class InputJob:
    """One input job: where it came from, its key, and what to send."""

    key: str
    line: int
    prompt: str
    params: PromptParams | None = None
    mode: str | None = None
    image_urls: tuple[str, ...] = ()
    upscale: tuple[int, ...] = ()


@dataclass(frozen=True)
class Unit:
    """One unit of work: a job's grid (`upscale == 0`) or one upscale of it; one results line each."""

    job: InputJob
    upscale: int = 0

    @property
    def key(self) -> str:
        """The journal and results key: `<job key>` or `<job key>/upscale<n>`."""
        return self.job.key if not self.upscale else f"{self.job.key}/upscale{self.upscale}"

    @property
    def action(self) -> str:
        """`imagine`, or `upscale<n>` (also the images' name suffix)."""
        return f"upscale{self.upscale}" if self.upscale else "imagine"

    @property
    def label(self) -> str:
        """How progress lines name it."""
        return self.job.key if not self.upscale else f"{self.job.key} {self.action}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]


def _check_upscale(values: Sequence[int], where: str) -> tuple[int, ...]:
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
            raise InputError(f"{where}: upscale quadrants are 1 to 4, not {value!r}")
    return tuple(dict.fromkeys(values))


def parse_upscale(text: str) -> tuple[int, ...]:
    """`--upscale 1,2,4` as a tuple; argparse shows the error."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
        return _check_upscale(values, "--upscale")
    except (ValueError, InputError) as exc:
        raise argparse.ArgumentTypeError(
            f"expected quadrants 1-4 separated by commas, e.g. 1,2 ({exc})"
        ) from None


def load_jobs(path: Path, *, upscale: tuple[int, ...] = (), fmt: str | None = None) -> list[InputJob]:
    """Every job in a .txt or .jsonl file, checked against the schema; `InputError` names a bad line."""
    kind = fmt or {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{path}: name it .txt (one prompt per line) or .jsonl (one job per line), or pass --format"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    jobs: list[InputJob] = []
    lines_by_key: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or (kind == "txt" and line.startswith("#")):
            continue
        where = f"{path}:{number}"
        job = _txt_job(line, number, upscale) if kind == "txt" else _jsonl_job(line, number, where, upscale)
        if job.key in lines_by_key:
            raise InputError(f"{where}: key {job.key!r} is already used on line {lines_by_key[job.key]}")
        lines_by_key[job.key] = number
        jobs.append(job)
    if not jobs:
        raise InputError(f"{path}: no jobs in it")
    return jobs


def _txt_job(line: str, number: int, upscale: tuple[int, ...]) -> InputJob:
    return InputJob(key=f"L{number}-{_digest(line.encode())}", line=number, prompt=line, upscale=upscale)


def _jsonl_job(line: str, number: int, where: str, default_upscale: tuple[int, ...]) -> InputJob:
    try:
        spec = _spec_decoder.decode(line)
    except msgspec.MsgspecError as exc:
        raise InputError(f"{where}: {exc}") from None
    if spec.id is not None and not _ID_RE.fullmatch(spec.id):
        raise InputError(f"{where}: id must be 1-200 characters without spaces or '/', not {spec.id!r}")
    # The key must not move when only the follow-ups change, so `upscale` stays out of the hash.
    content = _spec_encoder.encode(msgspec.structs.replace(spec, id=None, upscale=None))
    key = spec.id if spec.id is not None else f"L{number}-{_digest(content)}"
    upscale = default_upscale if spec.upscale is None else _check_upscale(spec.upscale, where)
    return InputJob(
        key=key,
        line=number,
        prompt=spec.prompt,
        params=spec.params,
        mode=spec.mode,
        image_urls=tuple(spec.image_urls),
        upscale=upscale,
    )


def validate_jobs(
    jobs: Sequence[InputJob], *, source: Path, mode: str | None, builder: mjasync.Client | None = None
) -> None:
    """Build every grid job, so the client's own checks run before anything is sent."""
    # Building a job sends nothing, and a client that never sends never opens a session.
    builder = builder or mjasync.Client(api_key="validation-only", base_url="http://127.0.0.1")
    for job in jobs:
        try:
            _grid_job(builder, job, mode)
        except InvalidRequestError as exc:
            raise InputError(f"{source}:{job.line}: {exc}") from None


def _grid_job(mj: mjasync.Client, job: InputJob, mode: str | None) -> Job[ImagineResult]:
    chosen = cast("mjasync.Mode | None", job.mode or mode)
    return mj.imagine(job.prompt, image_urls=job.image_urls, params=job.params, mode=chosen)


def iter_units(jobs: Sequence[InputJob]) -> Iterator[Unit]:
    """Every unit of `jobs`: each grid, then its upscales."""
    for job in jobs:
        yield Unit(job)
        for n in job.upscale:
            yield Unit(job, n)


@dataclass(frozen=True)
class Tally:
    """Where the units of an input stand, per the journal."""

    total: int
    ok: int
    failed: int
    #: Accepted (a task id is known) and not ended.
    accepted: int
    #: Sent, or about to be, with no task id written down yet.
    submitting: int

    @property
    def ended(self) -> int:
        """Units with their line written."""
        return self.ok + self.failed


def tally(jobs: Sequence[InputJob], journal: Journal) -> Tally:
    """Count the units of `jobs` by their journal state."""
    total = ok = failed = accepted = submitting = 0
    for unit in iter_units(jobs):
        total += 1
        state = journal.state(unit.key)
        if state.finished:
            ok, failed = (ok + 1, failed) if state.ok else (ok, failed + 1)
        elif state.task_id:
            accepted += 1
        elif state.submitting_at is not None:
            submitting += 1
    return Tally(total, ok, failed, accepted, submitting)


# -- progress -------------------------------------------------------------------------------------------


class BatchView:
    """An overall bar and a row per in-flight job with rich on a terminal; else a line per ended job."""

    def __init__(self, *, total: int, done: int, ok: int, failed: int, live: bool | None = None) -> None:
        self.total, self.done, self.ok, self.failed = total, done, ok, failed
        self.live = _rich_available() and sys.stderr.isatty() if live is None else live
        self._progress: Any = None
        self._overall: Any = None
        #: key → [rich task id or None, task id at the provider or None, visible]
        self._rows: dict[str, list[Any]] = {}

    def __enter__(self) -> BatchView:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<32.32}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                refresh_per_second=4,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task("batch", total=self.total, completed=self.done, status="")
            self._refresh_overall()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def note(self, text: str) -> None:
        """A line above the bars (or on stderr)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def started(self, unit: Unit, status: str) -> None:
        """A unit was handed to the run."""
        if self._progress is None:
            return
        visible = sum(1 for row in self._rows.values() if row[2]) < _MAX_ROWS
        row = self._progress.add_task(f"  {unit.label}", total=100, status=status, visible=visible)
        self._rows[unit.key] = [row, None, visible]
        self._refresh_overall()

    def accepted(self, unit: Unit, task_id: str) -> None:
        """The provider accepted the unit as `task_id`."""
        row = self._rows.get(unit.key)
        if row is not None and self._progress is not None:
            row[1] = task_id
            self._progress.update(row[0], status="queued")

    def progress(self, key: str, percent: float | None, state: str | None) -> None:
        """A progress reading for the unit `key`."""
        row = self._rows.get(key)
        if row is None or self._progress is None:
            return
        if percent is None:
            self._progress.update(row[0], status=state or "queued")
        else:
            self._progress.update(row[0], completed=percent, status=f"{percent:.0f}%")

    def shown_task_ids(self) -> dict[str, str]:
        """Task id → key for the rows on screen (what the progress lookups ask about)."""
        return {row[1]: key for key, row in self._rows.items() if row[2] and row[1]}

    def ended(self, unit: Unit, *, ok: bool, detail: str) -> None:
        """The unit's line is written."""
        self.done += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self._drop_row(unit.key)
        text = f"[{self.done}/{self.total}] {'ok    ' if ok else 'FAILED'} {unit.label}  {detail}"
        if self._progress is None:
            print(text, file=sys.stderr, flush=True)
        else:
            if not ok:
                self.note(text)
            self._refresh_overall()

    def left(self, unit: Unit, detail: str) -> None:
        """The unit stopped without ending (a rerun picks it up)."""
        self._drop_row(unit.key)
        self.note(f"[not ended] {unit.label}  {detail}")

    def _drop_row(self, key: str) -> None:
        row = self._rows.pop(key, None)
        if row is None or self._progress is None:
            return
        self._progress.remove_task(row[0])
        if row[2]:
            for other in self._rows.values():
                if not other[2]:
                    other[2] = True
                    self._progress.update(other[0], visible=True)
                    break

    def _refresh_overall(self) -> None:
        if self._progress is None:
            return
        hidden = sum(1 for row in self._rows.values() if not row[2])
        more = f"  (+{hidden} more in flight)" if hidden else ""
        status = f"{self.done}/{self.total}  ok {self.ok}  failed {self.failed}{more}"
        self._progress.update(self._overall, completed=self.done, status=status)


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


# -- the run --------------------------------------------------------------------------------------------


def ends_job(error: MJError) -> bool:
    """Whether `error` is the job's final outcome, or running it again (a rerun) could still succeed."""
    if isinstance(error, (JobFailedError, AmbiguousSubmitError, InvalidRequestError)):
        return True
    if isinstance(error, (AuthenticationError, RateLimitError)):
        return False  # fix the key, or wait: the job itself is fine
    status = error.status if isinstance(error, APIStatusError) else None
    return status is not None and 400 <= status < 500 and status != 408


def _error_info(error: MJError) -> ErrorInfo:
    return ErrorInfo(
        type=type(error).__name__,
        message=str(error),
        code=getattr(error, "code", None),
        status=getattr(error, "status", None),
    )


def _safe_name(key: str) -> str:
    """A file name stem for `key`: the key itself when it is safe, else a cleaned copy plus a hash."""
    safe = _UNSAFE_NAME.sub("_", key).strip("._")[:100] or "job"
    return safe if safe == key else f"{safe}-{_digest(key.encode())[:8]}"


Work = Job[ImagineResult] | TaskHandle[ImagineResult]


@dataclass(frozen=True)
class RunOptions:
    """What the command line asked for."""

    source: Path
    out: Path
    concurrency: int
    via: Literal["poll", "stream"]
    images: bool
    mode: str | None


class BatchRun:
    """One run over the input: plans each unit from the journal, feeds `run_many`, writes each ending."""

    def __init__(
        self,
        mj: mjasync.Client,
        options: RunOptions,
        jobs: Sequence[InputJob],
        journal: Journal,
        results: AppendLog,
        view: BatchView,
    ) -> None:
        self._mj = mj
        self._options = options
        self._jobs = jobs
        self._journal = journal
        self._results = results
        self.view = view
        #: Units handed to run_many, by run_many's index, until their outcome is handled.
        self._by_index: dict[int, Unit] = {}
        self._next_index = 0
        #: Follow-ups ready to go (ahead of new jobs: their grid is paid for).
        self._ready: deque[tuple[Unit, Work]] = deque()
        #: Grids in flight that will add follow-ups; the input is not over while there are any.
        self._parents_in_flight = 0
        self._wake = anyio.Event()
        #: Task ids some key already holds: a lookup must not adopt one of those.
        self._claimed = {s.task_id for s in journal.states.values() if s.task_id}
        #: Units that stopped without ending, with why.
        self.not_ended: dict[str, str] = {}
        self._finish_slots = anyio.Semaphore(options.concurrency)

    # -- planning -----------------------------------------------------------------------------------

    def _first_units(self) -> list[Unit]:
        """Units to hand to run_many at the start: resumes first (paid for), then lookups, then new ones."""
        first: list[Unit] = []
        for unit in iter_units(self._jobs):
            state = self._journal.state(unit.key)
            if state.finished:
                continue
            if unit.upscale:
                grid = self._journal.state(unit.job.key)
                if not grid.finished:
                    continue  # sent once its grid finishes in this run
                if not grid.ok:
                    self._skip_followup(unit)
                    continue
            first.append(unit)
        order = {Resume: 0, Lookup: 1}
        first.sort(key=lambda u: order.get(type(self._journal.state(u.key).plan()), 2))
        return first

    def _build(self, unit: Unit, parent: ImagineResult | str | None) -> Job[ImagineResult]:
        if not unit.upscale:
            return _grid_job(self._mj, unit.job, self._options.mode)
        if parent is None:
            raise InvalidRequestError(f"the grid {unit.job.key} has no image_id to upscale")
        mode = unit.job.mode or self._options.mode
        return self._mj.upscale(parent, unit.upscale, **({"mode": mode} if mode else {}))

    async def _prepare(self, unit: Unit, parent: ImagineResult | str | None = None) -> Work | None:
        """What run_many gets for `unit`, per its journal state; None when it ended (or stopped) here."""
        state = self._journal.state(unit.key)
        plan = state.plan()
        if isinstance(plan, Skip):
            return None
        if isinstance(plan, Resume):
            return self._mj.task(plan.task_id)
        if unit.upscale and parent is None:
            parent = self._journal.state(unit.job.key).image_id
        try:
            job = self._build(unit, parent)
        except InvalidRequestError as exc:
            self._end(unit, error=exc)
            return None
        if isinstance(plan, Lookup):
            try:
                found = await self._mj.find_task(job, since=plan.since)
            except AmbiguousSubmitError as exc:
                self._end(unit, error=exc)  # sending it again could pay twice
                return None
            except MJError as exc:
                self._leave(unit, f"could not look up its earlier submit: {type(exc).__name__}: {exc}")
                return None
            # An identical request's task that another key already holds is not this key's.
            if found is not None and found not in self._claimed:
                self._journal.accepted(unit.key, found)
                self._claimed.add(found)
                return self._mj.task(found)
        return job  # `find_task` only reads the job: it is still unsent

    # -- feeding run_many ---------------------------------------------------------------------------

    async def _work(self) -> AsyncGenerator[Work, None]:
        """The items for run_many, pulled one per free slot."""
        first = iter(self._first_units())
        while True:
            if self._ready:
                unit, item = self._ready.popleft()
            else:
                next_unit = next(first, None)
                if next_unit is None:
                    if not self._parents_in_flight:
                        return
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                unit = next_unit
                prepared = await self._prepare(unit)
                if prepared is None:
                    continue
                item = prepared
            yield self._dispatch(unit, item)

    def _dispatch(self, unit: Unit, item: Work) -> Work:
        """Note `unit` as run_many's next index; journal a job as submitting before it can be sent."""
        self._by_index[self._next_index] = unit
        self._next_index += 1
        if isinstance(item, Job):
            self._journal.submitting(unit.key)
            self.view.started(unit, "submitting")
        else:
            self.view.started(unit, "resuming")
        if not unit.upscale and unit.job.upscale:
            self._parents_in_flight += 1
        return item

    def _on_accepted(self, index: int, task_id: str) -> None:
        """run_many's callback: journal the task id the moment it is known."""
        unit = self._by_index.get(index)
        if unit is None:
            return
        self._journal.accepted(unit.key, task_id)  # synchronously: durable before the wait goes on
        self._claimed.add(task_id)
        self.view.accepted(unit, task_id)

    async def run(self) -> None:
        """Run every unit that has not ended; return when all did or stopped (see `not_ended`)."""
        async with anyio.create_task_group() as helpers:
            if self.view.live:
                helpers.start_soon(self._show_progress)
            async with (
                aclosing(self._work()) as work,
                self._mj.run_many(
                    work,
                    concurrency=self._options.concurrency,
                    via=self._options.via,
                    on_accepted=self._on_accepted,
                ) as outcomes,
                anyio.create_task_group() as finishers,
            ):
                async for outcome in outcomes:
                    # Images download while other jobs run; this bound keeps the finishers few.
                    await self._finish_slots.acquire()
                    finishers.start_soon(self._finish, outcome)
            helpers.cancel_scope.cancel()

    async def _finish(self, outcome: mjasync.Outcome[ImagineResult]) -> None:
        """Handle one outcome: save, write its line (or leave it for a rerun), queue its follow-ups."""
        unit = self._by_index.pop(outcome.index)
        try:
            if outcome.result is not None:
                await self._finish_ok(unit, outcome.result, outcome.retries_taken)
            else:
                assert outcome.error is not None
                if ends_job(outcome.error):
                    self._end(unit, error=outcome.error, task_id=outcome.task_id)
                else:
                    error = outcome.error
                    self._leave(unit, f"{type(error).__name__}: {error}")
        finally:
            self._finish_slots.release()
            if not unit.upscale and unit.job.upscale:
                self._parents_in_flight -= 1
                self._wake.set()

    async def _finish_ok(self, unit: Unit, result: ImagineResult, retries: int) -> None:
        images: list[str] = []
        images_error: str | None = None
        if self._options.images:
            try:
                images = await self._save_images(unit, result)
            except (MJError, OSError) as exc:
                images_error = f"{type(exc).__name__}: {exc}"
        self._end(
            unit,
            result=result,
            task_id=result.task_id,
            images=images,
            images_error=images_error,
            retries=retries,
        )
        if not unit.upscale:
            for n in unit.job.upscale:
                follow = Unit(unit.job, n)
                item = await self._prepare(follow, result)
                if item is not None:
                    self._ready.append((follow, item))

    async def _save_images(self, unit: Unit, result: ImagineResult) -> list[str]:
        urls = [("", result.image_url)] if result.image_url else []
        urls += [(f"-{i}", url) for i, url in enumerate(result.sub_image_urls or [], 1) if url]
        if not urls:
            raise InvalidRequestError("the result has no image URL")
        stem = f"{_safe_name(unit.job.key)}.{unit.action}"
        saved: list[str] = []
        for suffix, url in urls:
            ext = Path(url.split("?", 1)[0]).suffix.lower()
            name = f"{stem}{suffix}{ext if ext in _IMAGE_SUFFIXES else '.png'}"
            await self._mj.download_to(url, self._options.out / "images" / name)
            saved.append(f"images/{name}")
        return saved

    # -- endings ------------------------------------------------------------------------------------

    def _end(
        self,
        unit: Unit,
        *,
        result: ImagineResult | None = None,
        error: MJError | None = None,
        task_id: str | None = None,
        images: list[str] | None = None,
        images_error: str | None = None,
        retries: int = 0,
        info: ErrorInfo | None = None,
    ) -> None:
        """Write the unit's one results line, then its finished record; follow-ups of a failed grid end too."""
        if info is None and error is not None:
            info = _error_info(error)
        task_id = task_id or self._journal.state(unit.key).task_id
        line = ResultLine(
            key=unit.key,
            ok=info is None,
            job=unit.job.key,
            line=unit.job.line,
            action=unit.action,
            prompt=unit.job.prompt,
            task_id=task_id,
            image_id=result.image_id if result else None,
            image_url=result.image_url if result else None,
            actions=list(result.actions) if result else [],
            images=images or [],
            images_error=images_error,
            error=info,
            retries=retries or int(getattr(error, "retries_taken", 0) or 0),
            at=time.time(),
        )
        self._results.append(encode_line(line))
        self._journal.finished(unit.key, ok=line.ok, task_id=task_id, image_id=line.image_id)
        if info is None:
            detail = f"task {task_id}" + (f"  (images: {images_error})" if images_error else "")
        else:
            detail = f"{info.type}: {info.message}"
        self.view.ended(unit, ok=line.ok, detail=detail)
        if not line.ok and not unit.upscale:
            for n in unit.job.upscale:
                follow = Unit(unit.job, n)
                if not self._journal.state(follow.key).finished:
                    self._skip_followup(follow)

    def _skip_followup(self, unit: Unit) -> None:
        info = ErrorInfo(
            type="Skipped", message=f"its grid {unit.job.key} failed, so {unit.action} was not sent"
        )
        self._end(unit, info=info)

    def _leave(self, unit: Unit, why: str) -> None:
        self.not_ended[unit.key] = why
        self.view.left(unit, why + " (a rerun resumes it)")

    # -- live per-job progress ----------------------------------------------------------------------

    async def _show_progress(self) -> None:
        """Look up the on-screen jobs' progress now and then (one batched request; display only)."""
        while True:
            await anyio.sleep(_PROGRESS_EVERY)
            shown = self.view.shown_task_ids()
            if not shown:
                continue
            try:
                batch = await self._mj.retrieve_tasks(list(shown))
            except MJError:
                continue  # progress is cosmetic; the run itself polls and retries
            for record in batch.items:
                key = shown.get(record.id or "")
                if key is None:
                    continue
                response: Any = record.response  # a result Struct (or a dict for an unknown type)
                percent = (
                    response.get("progress")
                    if isinstance(response, dict)
                    else getattr(response, "progress", None)
                )
                state = "running" if record.state in ("running", "started") else record.state
                self.view.progress(key, float(percent) if isinstance(percent, (int, float)) else None, state)


# -- the command ----------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add `mjasync batch`'s arguments to its subparser."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Run every prompt of a .txt or .jsonl file through the API, N at a time, with progress; write\n"
        "results.jsonl and the images to --out. Killed at any moment (Ctrl-C, a crash), the same command\n"
        "run again resumes where it stopped, and nothing is submitted twice."
    )
    parser.epilog = _EPILOG
    parser.add_argument(
        "input", type=Path, help="prompts.txt (one prompt a line) or jobs.jsonl (one job a line)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder for results.jsonl, images/ and the journal",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="jobs in flight at once (default: 8)",
    )
    parser.add_argument(
        "--upscale",
        type=parse_upscale,
        default=(),
        metavar="1,2,3,4",
        help="after each grid, upscale these quadrants as follow-up jobs",
    )
    parser.add_argument(
        "--via", choices=("poll", "stream"), default="poll", help="how to wait (default: poll)"
    )
    parser.add_argument(
        "--mode", choices=("fast", "relax", "turbo"), help="speed mode for jobs that set none"
    )
    parser.add_argument(
        "--no-images", action="store_true", help="write results.jsonl only, download no image"
    )
    parser.add_argument(
        "--format", choices=("txt", "jsonl"), help="input format (default: from the file name)"
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="seconds before a submitted job's first status lookup (default: 2)",
    )
    connection = parser.add_argument_group("service")
    connection.add_argument(
        "--base-url", metavar="URL", help="API origin (default: $MJASYNC_BASE_URL, else AceData's)"
    )
    connection.add_argument(
        "--api-key",
        metavar="KEY",
        help="API key (default: $MJASYNC_API_KEY, else $ACEDATACLOUD_API_TOKEN); never printed",
    )
    connection.add_argument(
        "--emulator",
        action="store_true",
        help="dry run: start the embedded emulator and use it (prints its URL)",
    )
    connection.add_argument(
        "--emulator-speed",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds each emulated job takes (default: 1)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def run_batch(args: argparse.Namespace) -> int:
    """Run `mjasync batch`; return the exit status."""
    try:
        return _run_batch(args)
    except KeyboardInterrupt:  # a Ctrl-C before the signal handler was in place (or after it left)
        print("\nInterrupted; run the same command again to resume.", file=sys.stderr)
        return EXIT_SIGINT
    except Exception as exc:  # only to name an OS failure (disk full, ...) plainly; others re-raise
        failure = _os_error(exc)
        if failure is None:
            raise
        print(f"mjasync batch: {failure}; run the same command again to resume", file=sys.stderr)
        return EXIT_UNFINISHED


def _run_batch(args: argparse.Namespace) -> int:
    if args.emulator and (args.base_url or args.api_key):
        return _usage("--emulator runs against the embedded emulator: drop --base-url and --api-key")
    if args.emulator_speed < 0:
        return _usage("--emulator-speed must be >= 0")
    try:
        jobs = load_jobs(args.input, upscale=args.upscale, fmt=args.format)
        if not (
            args.emulator
            or args.api_key
            or os.environ.get(ENV_API_KEY)
            or os.environ.get(ENV_API_KEY_FALLBACK)
        ):
            raise InputError(f"no API key: pass --api-key or set {ENV_API_KEY} (or {ENV_API_KEY_FALLBACK})")
        # A client made here checks the key and URL too; it only builds jobs, so it never connects.
        builder = None if args.emulator else mjasync.Client(api_key=args.api_key, base_url=args.base_url)
        validate_jobs(jobs, source=args.input, mode=args.mode, builder=builder)
    except (InputError, InvalidRequestError) as exc:
        return _usage(str(exc))
    options = RunOptions(
        source=args.input,
        out=args.out,
        concurrency=args.concurrency,
        via=args.via,
        images=not args.no_images,
        mode=args.mode,
    )
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _usage(f"cannot create --out {options.out}: {exc.strerror or exc}")
    try:
        # The files are read, repaired and opened before the event loop starts, so a bad journal is a
        # plain error here rather than one wrapped by the run's task group.
        with lock_folder(options.out):
            results_path = options.out / RESULTS_NAME
            results_by_key, _ = read_results(results_path)
            with AppendLog(results_path) as results:
                journal = Journal(options.out, results_by_key)
                try:
                    journal.run_started(str(options.source))
                    return anyio.run(_main, args, options, jobs, journal, results, backend="asyncio")
                finally:
                    journal.close()
    except JournalError as exc:
        return _usage(str(exc))


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc`, unwrapping exception groups (task groups wrap what their tasks raise)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None


def _usage(message: str) -> int:
    print(f"mjasync batch: error: {message}", file=sys.stderr)
    return EXIT_USAGE


async def _main(
    args: argparse.Namespace, options: RunOptions, jobs: list[InputJob], journal: Journal, results: AppendLog
) -> int:
    # The run goes inside `stop` once set up; a signal cancels it there, so the summary still prints.
    stop = anyio.CancelScope()
    received: list[int] = []
    async with anyio.create_task_group() as group:
        group.start_soon(_watch_signals, stop, received)
        status = await _run(args, options, jobs, journal, results, stop, received)
        group.cancel_scope.cancel()
    return status


async def _watch_signals(stop: anyio.CancelScope, received: list[int]) -> None:
    """First SIGINT/SIGTERM: stop the run cleanly (the journal keeps what was accepted). Second: exit now."""
    try:
        receiver = anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        with receiver as signals:
            async for signum in signals:
                if received:
                    # Everything durable is already on disk: the journal is fsync'd record by record.
                    print("\nInterrupted again: exiting now.", file=sys.stderr, flush=True)
                    os._exit(EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT)
                received.append(signum)
                stop.cancel()
    except NotImplementedError:  # pragma: no cover - no signal handlers on this platform's loop
        return


async def _run(
    args: argparse.Namespace,
    options: RunOptions,
    jobs: list[InputJob],
    journal: Journal,
    results: AppendLog,
    stop: anyio.CancelScope,
    received: list[int],
) -> int:
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        base_url, api_key = args.base_url, args.api_key
        if args.emulator:
            from ..emulator import DEFAULT_TOKEN, Emulator

            emulator = await stack.enter_async_context(Emulator(speed=args.emulator_speed))
            base_url, api_key = emulator.url, DEFAULT_TOKEN
            print(
                f"Embedded emulator on {emulator.url} (a dry run: nothing leaves this machine)",
                file=sys.stderr,
            )
        mj = mjasync.Client(
            api_key=api_key,
            base_url=base_url,
            wait_via=options.via,
            poll=mjasync.PollPolicy(
                initial_interval=args.poll_interval, max_interval=max(10.0, args.poll_interval)
            ),
            limits=mjasync.Limits(
                max_in_flight=options.concurrency,
                max_connections=options.concurrency + 256,
                max_connections_per_host=options.concurrency + 128,
            ),
        )
        await stack.enter_async_context(mj)
        return await _drive(mj, options, jobs, journal, results, stop, received, started)


async def _drive(
    mj: mjasync.Client,
    options: RunOptions,
    jobs: list[InputJob],
    journal: Journal,
    results: AppendLog,
    stop: anyio.CancelScope,
    received: list[int],
    started: float,
) -> int:
    before = tally(jobs, journal)
    view = BatchView(total=before.total, done=before.ended, ok=before.ok, failed=before.failed)
    run = BatchRun(mj, options, jobs, journal, results, view)
    if before.ended:
        view.note(
            f"Resuming: {before.ended} of {before.total} jobs already ended ({options.out / RESULTS_NAME})."
        )
    with view, stop:
        await run.run()
    after = tally(jobs, journal)
    if received:
        waiting = f"{after.accepted} accepted and not finished"
        if after.submitting:
            waiting += f", {after.submitting} sent with no task id written down"
        print(
            f"\nInterrupted after {after.ended}/{after.total} jobs ended: {waiting}. Their state is in "
            f"{options.out / JOURNAL_NAME}; run the same command again to resume them "
            "(nothing is submitted twice).",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_SIGTERM if received[0] == signal.SIGTERM else EXIT_SIGINT
    elapsed = time.monotonic() - started
    summary = (
        f"{after.ended}/{after.total} jobs ended ({after.ok} ok, {after.failed} failed) in {elapsed:.1f} s"
    )
    print(f"{summary}; results in {options.out / RESULTS_NAME}")
    if after.ended < after.total:
        print(
            f"{after.total - after.ended} jobs did not end (see above); run the same command again to resume them.",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return EXIT_OK
