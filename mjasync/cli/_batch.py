"""Entry layer: `mjasync batch`, many prompts through `Client.run_many`, resumable after any kill.

    mjasync batch prompts.txt|jobs.jsonl --out DIR [--concurrency N] [--upscale 1,2] [--via poll|stream]
                  [--no-images] [--dry-run] [--emulator] [--base-url URL] [--api-key KEY]

This module is the command: its arguments, the run's setup, signals and the summary. The input file
and the job keys are `_batch_input`'s; the run itself (resuming from the journal, results.jsonl, the
images) is `_batch_run`'s, its display `_batch_view`'s, the summary table and `index.html`
`_batch_report`'s, and `--dry-run`'s count `_batch_dry_run`'s. Exit status: 0 every job ended with its
result; 1 some did not end (a rerun resumes them); 2 bad input or usage; 3 every job ended, some of
them failed (their errors are in results.jsonl); 130 interrupted (SIGINT; 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio

import mjasync
from mjasync import InvalidRequestError

from .._limiter import JobLimiter
from .._models.params import MAX_PROMPT_CHARS
from .._providers import PROVIDERS, api_key_env, get_provider
from ._batch_dry_run import count_run, describe
from ._batch_input import (
    InputError,
    InputJob,
    iter_units,
    load_jobs,
    number_width,
    parse_upscale,
    validate_jobs,
)
from ._batch_report import INDEX_NAME, RefusalCounter, print_summary, summary_rows, write_contact_sheet
from ._batch_run import BatchRun, RunOptions
from ._batch_view import BatchView
from ._journal import (
    JOURNAL_NAME,
    RESULTS_NAME,
    AppendLog,
    Journal,
    JournalError,
    lock_folder,
    read_results,
)
from ._scale_out import add_redis_arguments, enqueue_run

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

__all__ = ["InputError", "configure_parser", "load_jobs", "run_batch"]

#: Exit statuses.
EXIT_OK: Final = 0
EXIT_UNFINISHED: Final = 1
EXIT_USAGE: Final = 2
EXIT_FAILED_JOBS: Final = 3
EXIT_SIGINT: Final = 130
EXIT_SIGTERM: Final = 143
#: For `--api-key`'s help: each provider's own key variable, read after $MJASYNC_API_KEY.
_OWN_KEY_ENV: Final = ", ".join(
    f"{' or '.join('$' + env for env in provider.api_key_env) or 'none'} for {name}"
    for name, provider in PROVIDERS.items()
)

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
  images/        007-a-red-fox.png for a grid, 007-a-red-fox.upscale2.png for an upscale (unless
                 --no-images): the job's number in the file, zero-padded, and its prompt's first words
  index.html     a contact sheet of every result: its image, prompt and task id (open it in a browser)
  journal.ndjson {"event": "submitting"|"accepted"|"finished", "key", ...}: what a rerun resumes from

before a paid run: --dry-run counts the submits (grids, upscales, by mode) and, for GoAPI, the quota
they use; it sends nothing, needs no key, and reads --out (if it exists) without writing to it.

at the end: a summary table (ok, failed by reason, skipped, not ended, retries, refusals, time).

resuming: run the same command again after Ctrl-C, a crash or a kill. Finished keys are skipped,
accepted ones are waited on by task id, and one killed between sending and learning its task id is
looked up at the provider first (found: resumed; not found: sent; ambiguous: ended with that error).
Nothing is submitted twice. A job's key is its "id", else L<line>-<hash of the line> (editing the
file renumbers unnamed jobs: give them ids if you edit it between runs); an upscale's key is
<key>/upscale<n>, sent once its grid has finished (if the grid failed, it gets a "Skipped" line).

distributed (on Redis, `pip install 'mjasync[redis]'`): `mjasync batch FILE --redis URL --run NAME`
only enqueues the file's jobs (again: adds nothing); `mjasync worker --redis URL --run NAME` runs them
on any number of hosts; `mjasync batch status|results --redis URL --run NAME [--out DIR]` watches and
collects them from any host. Exit 4: Redis could not be reached, or lost the run's data.

exit status: 0 every job ended with its result; 1 some jobs did not end (connection trouble, 5xx,
401, 429, wait deadline: rerun to resume them); 2 bad input or usage; 3 every job ended but some
failed (refused, failed by the provider, an undecodable answer, a task id the provider does not
know, an ambiguous submit: each error is in results.jsonl, and a rerun does not send them again);
130 interrupted (rerun to resume).
"""


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
    #: Upscales ended unsent because their grid failed (not failures of their own).
    skipped: int = 0

    @property
    def ended(self) -> int:
        """Units with their line written."""
        return self.ok + self.failed + self.skipped


def tally(jobs: Sequence[InputJob], journal: Journal) -> Tally:
    """Count the units of `jobs` by their journal state."""
    total = ok = failed = accepted = submitting = skipped = 0
    for unit in iter_units(jobs):
        total += 1
        state = journal.state(unit.key)
        if state.finished:
            if state.ok:
                ok += 1
            elif unit.upscale and journal.state(unit.job.key).ok is False:
                skipped += 1  # a failed grid's upscale is never sent: its line says "Skipped"
            else:
                failed += 1
        elif state.task_id:
            accepted += 1
        elif state.submitting_at is not None:
            submitting += 1
    return Tally(total, ok, failed, accepted, submitting, skipped)


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
        metavar="DIR",
        help="folder for results.jsonl, images/ and the journal (required, except with --redis)",
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
        "--max-prompt-chars",
        type=_positive_int,
        default=MAX_PROMPT_CHARS,
        metavar="N",
        help="refuse (before sending anything) a prompt longer than N characters (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="seconds before a submitted job's first status lookup (default: 2)",
    )
    add_redis_arguments(parser, run_required=False)
    connection = parser.add_argument_group("service")
    connection.add_argument(
        "--provider",
        choices=tuple(PROVIDERS),
        default="acedata",
        help="the API's provider (default: %(default)s)",
    )
    connection.add_argument(
        "--base-url", metavar="URL", help="API origin (default: $MJASYNC_BASE_URL, else the provider's)"
    )
    connection.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"API key (default: $MJASYNC_API_KEY, else the provider's own: {_OWN_KEY_ENV}); never printed",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="count the paid submits (grids, upscales) and the quota they use, send nothing, and exit",
    )
    connection.add_argument(
        "--emulator",
        action="store_true",
        help="run against the embedded emulator instead of the API: nothing leaves this machine (prints its URL)",
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
    distributed = args.redis is not None
    if distributed and args.run is None:
        return _usage("--redis needs --run NAME (the run's name; the same name resumes it)")
    if args.run is not None and not distributed:
        return _usage("--run names a distributed run: give --redis URL too")
    if distributed and (args.emulator or args.out is not None):
        return _usage(
            "with --redis the file is only enqueued: workers (mjasync worker) run it, and "
            "`mjasync batch results` collects it into a folder; drop --emulator and --out"
        )
    if not distributed and args.out is None and not args.dry_run:
        return _usage("--out DIR is required")
    if args.emulator and (args.base_url or args.api_key):
        return _usage("--emulator runs against the embedded emulator: drop --base-url and --api-key")
    if args.emulator_speed < 0:
        return _usage("--emulator-speed must be >= 0")
    try:
        jobs = load_jobs(
            args.input, upscale=args.upscale, fmt=args.format, max_prompt_chars=args.max_prompt_chars
        )
        key_names = api_key_env(get_provider(args.provider))
        # Enqueueing sends nothing to the provider: the workers hold the key; a dry run sends nothing.
        keyless = args.emulator or distributed or args.dry_run
        if not (keyless or args.api_key or any(os.environ.get(name) for name in key_names)):
            raise InputError(f"no API key: pass --api-key or set {' or '.join(key_names)}")
        # A client made here checks the key and URL too; it only builds jobs, so it never connects.
        builder = mjasync.Client(
            api_key="validation-only" if keyless else args.api_key,
            base_url="http://127.0.0.1" if keyless else args.base_url,
            provider=args.provider,
            max_prompt_chars=args.max_prompt_chars,
        )
        validate_jobs(jobs, source=args.input, mode=args.mode, builder=builder)
    except (InputError, InvalidRequestError) as exc:
        return _usage(str(exc))
    if args.dry_run:
        return _dry_run(args, jobs)
    if distributed:
        return enqueue_run(args, jobs)
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
                    restored = journal.restore_results(results)
                    if restored:
                        print(
                            f"{results_path}: {len(restored)} finished jobs had lost their line; "
                            "written again from the journal.",
                            file=sys.stderr,
                        )
                    journal.run_started(str(options.source))
                    return anyio.run(_main, args, options, jobs, journal, results, backend="asyncio")
                finally:
                    journal.close()
    except JournalError as exc:
        return _usage(str(exc))


def _dry_run(args: argparse.Namespace, jobs: list[InputJob]) -> int:
    """Print what a run would pay for, having sent and written nothing; exit 0."""
    try:
        plan = count_run(jobs, mode=args.mode, out=args.out)
    except JournalError as exc:
        return _usage(str(exc))
    for line in describe(
        plan, source=args.input, provider=args.provider, out=args.out, emulator=args.emulator
    ):
        print(line)
    return EXIT_OK


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
            print(f"Embedded emulator on {emulator.url} (nothing leaves this machine)", file=sys.stderr)
        # The run's own limiter, as the client would make it, counted: the summary reports the refusals.
        limiter = RefusalCounter(JobLimiter(options.concurrency))
        mj = mjasync.Client(
            api_key=api_key,
            base_url=base_url,
            provider=args.provider,
            max_prompt_chars=args.max_prompt_chars,
            wait_via=options.via,
            poll=mjasync.PollPolicy(
                initial_interval=args.poll_interval, max_interval=max(10.0, args.poll_interval)
            ),
            limits=mjasync.Limits(
                max_in_flight=options.concurrency,
                max_connections=options.concurrency + 256,
                max_connections_per_host=options.concurrency + 128,
            ),
            limiter=limiter,
        )
        await stack.enter_async_context(mj)
        return await _drive(mj, options, jobs, journal, results, stop, received, started, limiter)


async def _drive(
    mj: mjasync.Client,
    options: RunOptions,
    jobs: list[InputJob],
    journal: Journal,
    results: AppendLog,
    stop: anyio.CancelScope,
    received: list[int],
    started: float,
    limiter: RefusalCounter,
) -> int:
    before = tally(jobs, journal)
    view = BatchView(
        total=before.total,
        done=before.ended,
        ok=before.ok,
        failed=before.failed,
        skipped=before.skipped,
        width=number_width(len(jobs)),
    )
    run = BatchRun(mj, options, jobs, journal, results, view)
    if before.ended:
        view.note(
            f"Resuming: {before.ended} of {before.total} jobs already ended ({options.out / RESULTS_NAME})."
        )
    with view, stop:
        await run.run()
    after = tally(jobs, journal)
    elapsed = time.monotonic() - started
    _write_index(options, jobs)
    rows = summary_rows(run.counts, earlier=before.ended, refusals=limiter.refusals, elapsed=elapsed)
    title = f"mjasync batch {options.source.name}: {after.ended}/{after.total} jobs ended"
    print_summary(rows, title=title)
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
    skipped = f", {after.skipped} skipped" if after.skipped else ""
    summary = f"{after.ended}/{after.total} jobs ended ({after.ok} ok, {after.failed} failed{skipped}) in {elapsed:.1f} s"
    print(f"{summary}; results in {options.out / RESULTS_NAME}, contact sheet {options.out / INDEX_NAME}")
    if after.ended < after.total:
        print(
            f"{after.total - after.ended} jobs did not end (see above); run the same command again to resume them.",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    return EXIT_FAILED_JOBS if after.failed or after.skipped else EXIT_OK


def _write_index(options: RunOptions, jobs: Sequence[InputJob]) -> None:
    """Write `index.html` from results.jsonl as it stands (every run's lines); a failure only warns."""
    try:
        lines, _ = read_results(options.out / RESULTS_NAME)
        write_contact_sheet(
            options.out,
            lines.values(),
            order={job.key: job.number for job in jobs},
            title=f"mjasync batch: {options.source.name}",
        )
    except (OSError, JournalError) as exc:
        print(f"mjasync batch: could not write {options.out / INDEX_NAME}: {exc}", file=sys.stderr)
