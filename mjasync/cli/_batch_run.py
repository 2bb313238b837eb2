"""Entry layer: a `mjasync batch` run: plans each unit from the journal, feeds `run_many`, writes endings.

`--out` gets `results.jsonl` (one line per key, ever), `images/` and `journal.ndjson`, whose format and
recovery rules are in `_journal`. Images are named after the job's number and prompt (`image_stem`):
`007-a-red-fox.png` for a grid (`007-a-red-fox.1.png` ... for its four images, when the provider gives
them), `007-a-red-fox.upscale2.png` for an upscale. Rerunning the same command
resumes: finished keys are skipped, accepted ones are waited on by task id, and nothing is submitted
twice.

A job "ends" with its result, or with an error that running it again cannot change (the provider
failed it or refused it with a 4xx, the input is invalid, its submit is ambiguous, an answer about it
could not be decoded, the provider keeps saying it has no such task): both get their line. Other
errors (connection trouble, 5xx, 401, 429, our own wait deadline) leave it for a rerun, which
resumes it by task id when it has one.

Before anything is looked up, every task id the journal or results.jsonl names is held by the client
(`Client.task`), so looking up one key's lost submit never counts another key's identical request (the
same prompt twice in the input) as a match.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, cast

import anyio

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
    RateLimitError,
    ResponseDecodeError,
)

from .._exceptions import TaskNotFoundError
from .._job import ImagineHandle, ImagineJob
from .._models.errors import error_info
from .._models.results import ImagineUpdate
from ._batch_input import InputJob, Unit, digest, grid_job, image_stem, iter_units, number_width
from ._batch_report import SKIPPED_TYPE, RunCounts, reason
from ._batch_view import BatchView
from ._journal import (
    AppendLog,
    ErrorInfo,
    Journal,
    Lookup,
    ResultLine,
    Resume,
    Skip,
    encode_line,
    kill_now,
    kill_point,
)

__all__ = ["BatchRun", "RunOptions", "Work", "ends_job"]

_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")
_IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp", ".gif")
#: Seconds between progress lookups for the rows on screen (only with a live display).
_PROGRESS_EVERY: Final = 1.0


def ends_job(error: MJError) -> bool:
    """Whether `error` is the job's final outcome, or running it again (a rerun) could still succeed."""
    if isinstance(
        error,
        (JobFailedError, AmbiguousSubmitError, InvalidRequestError, ResponseDecodeError, TaskNotFoundError),
    ):
        return True
    if isinstance(error, (AuthenticationError, RateLimitError)):
        return False  # fix the key, or wait: the job itself is fine
    status = error.status if isinstance(error, APIStatusError) else None
    return status is not None and 400 <= status < 500 and status != 408


def _error_info(error: MJError, *, resumed: bool = False) -> ErrorInfo:
    """What results.jsonl says of `error`: its class and message (no traceback, no held secret)."""
    message = str(error)
    if resumed and isinstance(error, TaskNotFoundError):
        message = (
            f"the provider does not know the task id the journal recorded for this job ({message}); "
            "was this run resumed against another server or account than the one that accepted it?"
        )
    return error_info(error, message)


def _safe_name(key: str) -> str:
    """A file name stem for `key`: the key itself when it is safe, else a cleaned copy plus a hash.

    (A distributed run's `mjasync batch results` names its images so; a one-process run names them by
    the job's number and prompt, `image_stem`.)
    """
    safe = _UNSAFE_NAME.sub("_", key).strip("._")[:100] or "job"
    return safe if safe == key else f"{safe}-{digest(key.encode())[:8]}"


Work = ImagineJob | ImagineHandle


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
        self._claimed = set(journal.task_ids)
        for task_id in journal.task_ids:
            mj.task(task_id)  # held by the client from now on: `find_task` leaves it out of its matches
        #: Keys waited on by a task id an earlier run journalled.
        self._resumed: set[str] = set()
        #: Units that stopped without ending, with why.
        self.not_ended: dict[str, str] = {}
        #: What this run did with the units it handled, for the summary table.
        self.counts = RunCounts()
        #: Digits of a job's number in image names.
        self._width = number_width(len(jobs))
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

    def _build(self, unit: Unit, parent: ImagineResult | str | None) -> ImagineJob:
        if not unit.upscale:
            return grid_job(self._mj, unit.job, self._options.mode)
        if parent is None:
            raise InvalidRequestError(f"the grid {unit.job.key} has no image_id to upscale")
        mode = cast("mjasync.types.Mode | None", unit.job.mode or self._options.mode or None)
        # `unit.action` is `upscale<n>`, n checked to be 1-4 when the input was read.
        return self._mj.act(parent, unit.action, mode=mode)

    async def _prepare(self, unit: Unit, parent: ImagineResult | str | None = None) -> Work | None:
        """What run_many gets for `unit`, per its journal state; None when it ended (or stopped) here."""
        state = self._journal.state(unit.key)
        plan = state.plan()
        if isinstance(plan, Skip):
            return None
        if isinstance(plan, Resume):
            self._resumed.add(unit.key)
            return self._mj.task(plan.task_id)
        if unit.upscale and parent is None:
            grid = self._journal.state(unit.job.key)
            # The journal keeps both ids; the provider says which one a follow-up names.
            parent = self._mj.follow_up_id(ImagineUpdate(task_id=grid.task_id, image_id=grid.image_id))
        try:
            job = self._build(unit, parent)
        except InvalidRequestError as exc:
            self._end(unit, error=exc)
            return None
        if isinstance(plan, Lookup):
            try:
                found = await self._mj.find_task(job, since=plan.since)
            except AmbiguousSubmitError as exc:
                job.close()
                self._end(unit, error=exc)  # sending it again could pay twice
                return None
            except MJError as exc:
                job.close()
                self._leave(
                    unit,
                    f"could not look up its earlier submit: {type(exc).__name__}: {exc}",
                    kind=type(exc).__name__,
                )
                return None
            # An identical request's task that another key already holds is not this key's.
            if found is not None and found not in self._claimed:
                job.close()  # its earlier submit is followed instead
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
        if kill_point("answered", unit.key):
            kill_now()  # the task exists at the provider; the journal does not know its id
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

    async def _finish(self, outcome: mjasync.types.Outcome[ImagineResult]) -> None:
        """Handle one outcome: save, write its line (or leave it for a rerun), queue its follow-ups."""
        unit = self._by_index.pop(outcome.index)
        self.counts.retries += outcome.retries_taken
        try:
            if outcome.result is not None:
                await self._finish_ok(unit, outcome.result, outcome.retries_taken)
            else:
                assert outcome.error is not None
                if ends_job(outcome.error):
                    self._end(unit, error=outcome.error, task_id=outcome.task_id)
                else:
                    error = outcome.error
                    self._leave(unit, f"{type(error).__name__}: {error}", kind=type(error).__name__)
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
        urls += [(f".{i}", url) for i, url in enumerate(result.sub_image_urls or [], 1) if url]
        if not urls:
            raise InvalidRequestError("the result has no image URL")
        # A grid is `007-a-red-fox`, its upscales `007-a-red-fox.upscale2`: one job's files sort together.
        stem = image_stem(unit.job, self._width) + (f".{unit.action}" if unit.upscale else "")
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
            info = _error_info(error, resumed=unit.key in self._resumed)
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
        data = encode_line(line)
        if kill_point("mid-results", unit.key):
            self._results.append(data[: len(data) // 2])
            kill_now()
        self._results.append(data)
        if kill_point("results", unit.key):
            kill_now()  # its line is written, its finished record is not
        self._journal.finished(line)
        skipped = info is not None and info.type == SKIPPED_TYPE
        if info is None:
            self.counts.ok += 1
            detail = f"task {task_id}" + (f"  (images: {images_error})" if images_error else "")
        else:
            if skipped:
                self.counts.skipped += 1
            else:
                self.counts.failed[reason(info)] += 1
            detail = f"{info.type}: {info.message}"
        self.view.ended(unit, ok=line.ok, detail=detail, skipped=skipped)
        if not line.ok and not unit.upscale:
            for n in unit.job.upscale:
                follow = Unit(unit.job, n)
                if not self._journal.state(follow.key).finished:
                    self._skip_followup(follow)

    def _skip_followup(self, unit: Unit) -> None:
        info = ErrorInfo(
            type=SKIPPED_TYPE, message=f"its grid {unit.job.key} failed, so {unit.action} was not sent"
        )
        self._end(unit, info=info)

    def _leave(self, unit: Unit, why: str, *, kind: str) -> None:
        """`unit` stopped without ending (`kind`: the error's class, for the summary)."""
        self.not_ended[unit.key] = why
        self.counts.not_ended[kind] += 1
        self.view.left(unit, why + " (a rerun resumes it)")

    # -- live per-job progress ----------------------------------------------------------------------

    async def _show_progress(self) -> None:
        """Look up the on-screen jobs' progress now and then (one batched request; display only)."""
        while True:
            await anyio.sleep(_PROGRESS_EVERY)
            self.view.tick()
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
