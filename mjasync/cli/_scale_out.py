"""Entry layer: the distributed batch on Redis: enqueue a run, show its status, collect its results.

    mjasync batch prompts.txt --redis URL --run NAME [--account NAME]     enqueue (idempotent by key)
    mjasync batch status  --redis URL --run NAME [--account NAME]         the whole run, from any host
    mjasync batch results --redis URL --run NAME --out DIR [--no-images]  results.jsonl and the images

Workers (`mjasync worker`, `_worker`) run the jobs. Enqueueing the same file twice adds nothing: each
job's key (its "id", else `L<line>-<hash>`, as in a one-process batch) is its identity in the run.
Results collected are the same `results.jsonl` lines a one-process batch writes; images are saved as
`images/<key>.<action>.png`. Collecting again rewrites both from what the run holds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, cast

import anyio

import mjasync
from mjasync import MJError

from .._exceptions import CoordinatorError
from .._types import Mode
from ..redis._connect import describe
from ..redis._queue import QueuedJob, RunOutcome, RunQueue, RunStatus
from ._batch_input import InputJob
from ._batch_run import _safe_name
from ._journal import RESULTS_NAME, ResultLine, encode_line

__all__ = [
    "DEFAULT_ACCOUNT",
    "add_redis_arguments",
    "enqueue_run",
    "queued_jobs",
    "results_main",
    "status_main",
]

#: The account name when none is given: every client of one provider account should use one name.
DEFAULT_ACCOUNT: Final = "default"
EXIT_OK: Final = 0
EXIT_UNFINISHED: Final = 1
EXIT_USAGE: Final = 2
EXIT_FAILED_JOBS: Final = 3
#: Redis is down, or lost the run's data.
EXIT_COORDINATOR: Final = 4


def add_redis_arguments(parser: argparse.ArgumentParser, *, run_required: bool) -> None:
    """`--redis`, `--run` and `--account`, shared by the distributed commands."""
    group = parser.add_argument_group("scale-out on Redis")
    group.add_argument(
        "--redis",
        metavar="URL",
        required=run_required,
        help="Redis URL (redis://host:6379/0) that every worker and batch command of the run shares",
    )
    group.add_argument(
        "--run",
        metavar="NAME",
        required=run_required,
        help="the run's name (letters, digits, . _ : -); the same name resumes it",
    )
    group.add_argument(
        "--account",
        metavar="NAME",
        default=DEFAULT_ACCOUNT,
        help="the provider account's name, shared by every worker using it (default: %(default)s)",
    )


def queued_jobs(jobs: Sequence[InputJob], *, mode: str | None) -> list[QueuedJob]:
    """The input's jobs as a run holds them (keys as a one-process batch makes them)."""
    queued: list[QueuedJob] = []
    for job in jobs:
        # Checked to be one of the modes when the input was read (and by argparse's choices).
        job_mode = cast("Mode | None", job.mode or mode or None)
        queued.append(
            QueuedJob(
                key=job.key,
                prompt=job.prompt,
                mode=job_mode,
                params=job.params,
                image_urls=job.image_urls,
                upscale=job.upscale,
            )
        )
    return queued


def enqueue_run(args: argparse.Namespace, jobs: Sequence[InputJob]) -> int:
    """`mjasync batch FILE --redis URL --run NAME`: enqueue the file's jobs; the exit status."""
    try:
        queued = queued_jobs(jobs, mode=args.mode)
        return anyio.run(_enqueue, args, queued, backend="asyncio")
    except CoordinatorError as exc:
        print(f"mjasync batch: {exc}", file=sys.stderr)
        return EXIT_COORDINATOR
    except MJError as exc:
        print(f"mjasync batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


async def _enqueue(args: argparse.Namespace, queued: list[QueuedJob]) -> int:
    async with RunQueue(args.redis, account=args.account, run=args.run) as queue:
        await queue.start()
        added = await queue.enqueue(queued)
        status = await queue.status()
    where = f"--redis {describe(args.redis)} --run {args.run}"
    if args.account != DEFAULT_ACCOUNT:
        where += f" --account {args.account}"
    print(
        f"Run {args.run!r}: {added} new jobs enqueued ({len(queued) - added} were there already), "
        f"{status.total} in all, {status.ended} ended.\n"
        f"Start workers on any host:   mjasync worker {where}\n"
        f"Watch it:                    mjasync batch status {where}\n"
        f"Collect results and images:  mjasync batch results {where} --out DIR"
    )
    return EXIT_OK


def _status_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="How far a distributed run is, from any host.")
    add_redis_arguments(parser, run_required=True)
    return parser


def status_main(argv: Sequence[str]) -> int:
    """`mjasync batch status`: print the run's counts; exit 0 when every job has ended, else 1."""
    args = _status_parser("mjasync batch status").parse_args(argv)
    try:
        status = anyio.run(_status, args, backend="asyncio")
    except CoordinatorError as exc:
        print(f"mjasync batch status: {exc}", file=sys.stderr)
        return EXIT_COORDINATOR
    except MJError as exc:
        print(f"mjasync batch status: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(format_status(args.run, status))
    return EXIT_OK if status.total and status.done else EXIT_UNFINISHED


async def _status(args: argparse.Namespace) -> RunStatus:
    async with RunQueue(args.redis, account=args.account, run=args.run) as queue:
        return await queue.status()


def format_status(run: str, status: RunStatus) -> str:
    """One line of a run's counts."""
    return (
        f"run {run}: {status.ended}/{status.total} ended ({status.ok} ok, {status.failed} failed, "
        f"{status.ambiguous} ambiguous); {status.accepted} running, {status.submitting} submitting, "
        f"{status.queued} queued"
    )


def _results_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Collect a distributed run's results.jsonl and images into --out, from any host.",
    )
    add_redis_arguments(parser, run_required=True)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for results.jsonl and images/"
    )
    parser.add_argument("--no-images", action="store_true", help="write results.jsonl only")
    return parser


def results_main(argv: Sequence[str]) -> int:
    """`mjasync batch results`: write results.jsonl (and the images) of every ended job."""
    args = _results_parser("mjasync batch results").parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"mjasync batch results: error: cannot create --out {args.out}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        written, status = anyio.run(_collect, args, backend="asyncio")
    except CoordinatorError as exc:
        print(f"mjasync batch results: {exc}", file=sys.stderr)
        return EXIT_COORDINATOR
    except MJError as exc:
        print(f"mjasync batch results: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{written} results in {args.out / RESULTS_NAME}; {format_status(args.run, status)}")
    if not status.done:
        return EXIT_UNFINISHED
    return EXIT_FAILED_JOBS if status.failed or status.ambiguous else EXIT_OK


async def _collect(args: argparse.Namespace) -> tuple[int, RunStatus]:
    lines: list[ResultLine] = []
    async with RunQueue(args.redis, account=args.account, run=args.run) as queue:
        status = await queue.status()
        outcomes = [outcome async for outcome in queue.outcomes(follow=False)]
    # Downloads need no key (image URLs are the provider's file hosts); the client only carries them.
    images_dir = args.out / "images"
    async with mjasync.Client(api_key="downloads-only", base_url="http://127.0.0.1") as downloads:
        for outcome in sorted(outcomes, key=lambda o: o.key):
            lines.append(await _line(outcome, downloads, images_dir, images=not args.no_images))
    part = args.out / (RESULTS_NAME + ".part")
    part.write_bytes(b"".join(encode_line(line) for line in lines))
    part.replace(args.out / RESULTS_NAME)
    return len(lines), status


async def _line(
    outcome: RunOutcome, downloads: mjasync.Client, images_dir: Path, *, images: bool
) -> ResultLine:
    result, error = outcome.result, outcome.error
    key = outcome.key
    job, _, action = key.partition("/")
    action = action or "imagine"
    saved: list[str] = []
    images_error: str | None = None
    if images and result is not None:
        # Named as a one-process batch names them: `<job key>.<action>.png`.
        name = f"{_safe_name(job)}.{action}.png"
        try:
            await downloads.download_to(result.image_url, images_dir / name)
            saved.append(f"images/{name}")
        except (MJError, OSError) as exc:
            images_error = f"{type(exc).__name__}: {exc}"
    return ResultLine(
        key=key,
        ok=outcome.ok,
        job=job,
        action=action,
        prompt=outcome.prompt,
        task_id=outcome.task_id,
        image_id=result.image_id if result is not None else None,
        image_url=result.image_url if result is not None else None,
        actions=list(result.actions) if result is not None else [],
        images=saved,
        images_error=images_error,
        error=error,
        retries=outcome.retries,
        at=time.time(),
    )
