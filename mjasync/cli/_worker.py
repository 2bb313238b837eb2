"""Entry layer: `mjasync worker`, one process of a distributed run: takes jobs from Redis and runs them.

    mjasync worker --redis URL [--run NAME] [--account NAME] [--concurrency N] [--max-in-flight N]
                   [--provider P] [--base-url URL] [--api-key KEY]

Start as many as you like, on any host, and kill any of them: a dead worker's jobs go to the others
(`mjasync.redis.Worker`), and each paid job is submitted once. Every worker of an account shares one
in-flight cap (`--max-in-flight`, `SharedLimits`), submit pace, 429 cooldown and learnt cap. Without
`--run` it works on every run of the account that has jobs left.

A progress line every few seconds says what this worker has done and whether Redis answers: while it
does not, no submit goes out (waits on submitted tasks go on). Exit status: 0 the run(s) ended; 2 bad
usage; 4 Redis lost the run's data (the worker halts rather than submit anything twice); 130/143
interrupted.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from typing import Final

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

import anyio

import mjasync
from mjasync import MJError

from .._exceptions import CoordinatorUnavailableError, RunDataLostError
from .._providers import PROVIDERS, api_key_env, get_provider
from ..redis._connect import account_tag, connect, coordinator_errors
from ..redis._limits import SharedLimits
from ..redis._queue import RunQueue
from ..redis._worker import Worker, WorkerEvent, WorkerStatistics
from ._scale_out import EXIT_COORDINATOR, EXIT_OK, EXIT_USAGE, add_redis_arguments

__all__ = ["configure_parser", "run_worker"]

EXIT_SIGINT: Final = 130
EXIT_SIGTERM: Final = 143
#: Seconds between progress lines.
_PROGRESS_EVERY: Final = 5.0
#: Seconds between looks for runs with work, when the worker serves every run of an account.
_DISCOVER_EVERY: Final = 2.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """`mjasync worker`'s arguments."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Run a distributed batch's jobs, taken from Redis. Start any number, on any host; kill any of\n"
        "them. Each paid job is submitted once; a dead worker's jobs go to the others."
    )
    add_redis_arguments(parser, run_required=False)
    parser.add_argument(
        "--concurrency", type=int, default=8, metavar="N", help="jobs this worker runs at once (default: 8)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=32,
        metavar="N",
        help="the account's in-flight cap, shared by every worker (default: %(default)s)",
    )
    parser.add_argument("--name", metavar="NAME", help="this worker's name (default: host-pid)")
    parser.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a submit's fence lasts (default: %(default)s)",
    )
    parser.add_argument(
        "--slot-lease",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds a dead worker's in-flight slots stay taken before others may use them; keep it "
        "longer than a Redis outage you want to ride out (default: %(default)s)",
    )
    parser.add_argument(
        "--claim-after",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds before a silent worker's jobs go to others (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds before a submitted job's first status lookup (default: 2)",
    )
    parser.add_argument(
        "--until-done",
        action="store_true",
        help="exit once the run has ended every job (needs --run); default: serve until interrupted",
    )
    service = parser.add_argument_group("service")
    service.add_argument("--provider", choices=tuple(PROVIDERS), default="acedata", help="the API's provider")
    service.add_argument(
        "--base-url", metavar="URL", help="API origin (default: $MJASYNC_BASE_URL, else the provider's)"
    )
    service.add_argument(
        "--api-key",
        metavar="KEY",
        help="API key (default: $MJASYNC_API_KEY, else the provider's own); never printed",
    )


def run_worker(args: argparse.Namespace) -> int:
    """Run `mjasync worker`; return the exit status."""
    if args.redis is None:
        return _usage("--redis URL is required")
    if args.until_done and args.run is None:
        return _usage("--until-done needs --run NAME")
    if args.concurrency < 1 or args.max_in_flight < 1:
        return _usage("--concurrency and --max-in-flight must be >= 1")
    if not (args.lease > 0 and args.claim_after > 0 and args.slot_lease > 0):
        return _usage("--lease, --slot-lease and --claim-after must be > 0 seconds")
    key_names = api_key_env(get_provider(args.provider))
    if not (args.api_key or any(os.environ.get(name) for name in key_names)):
        return _usage(f"no API key: pass --api-key or set {' or '.join(key_names)}")
    try:
        try:
            return anyio.run(_main, args, backend="asyncio")
        except BaseExceptionGroup as group:
            raise _single(group) from None
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except RunDataLostError as exc:
        print(f"\nmjasync worker: halted. {exc}", file=sys.stderr)
        return EXIT_COORDINATOR
    except MJError as exc:
        print(f"mjasync worker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside nested task groups' wrapping (a group of several stays as it is)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def _usage(message: str) -> int:
    print(f"mjasync worker: error: {message}", file=sys.stderr)
    return EXIT_USAGE


async def _main(args: argparse.Namespace) -> int:
    received: list[int] = []
    async with (
        SharedLimits(
            args.redis, account=args.account, max_in_flight=args.max_in_flight, lease=args.slot_lease
        ) as limits,
        mjasync.Client(
            api_key=args.api_key,
            base_url=args.base_url,
            provider=args.provider,
            limiter=limits,
            wait_via="poll",
            poll=mjasync.PollPolicy(
                initial_interval=args.poll_interval, max_interval=max(10.0, args.poll_interval)
            ),
            # The shared limiter caps jobs; these are this process's sockets (lookups need some to spare).
            limits=mjasync.Limits(
                max_in_flight=args.concurrency,
                max_connections=args.concurrency + 64,
                max_connections_per_host=args.concurrency + 32,
            ),
        ) as mj,
        anyio.create_task_group() as group,
    ):
        board = _Board(args.name, limits)
        group.start_soon(_watch_signals, group.cancel_scope, received)
        group.start_soon(board.report_every, _PROGRESS_EVERY)
        if args.run is not None:
            await _serve_run(mj, limits, args, args.run, board, until_done=args.until_done)
        else:
            await _serve_account(mj, limits, args, board)
        group.cancel_scope.cancel()
    board.report()
    if received:
        return EXIT_SIGTERM if received[0] == signal.SIGTERM else EXIT_SIGINT
    return EXIT_OK


async def _serve_run(
    mj: mjasync.Client,
    limits: SharedLimits,
    args: argparse.Namespace,
    run: str,
    board: _Board,
    *,
    until_done: bool,
) -> None:
    async with RunQueue(args.redis, account=args.account, run=run) as queue:
        worker = Worker(
            mj,
            queue,
            name=args.name,
            concurrency=args.concurrency,
            lease=args.lease,
            claim_after=args.claim_after,
            limits=limits,
            on_event=board.event,
        )
        board.workers[run] = worker
        await worker.run(until_done=until_done)


async def _serve_account(
    mj: mjasync.Client, limits: SharedLimits, args: argparse.Namespace, board: _Board
) -> None:
    """Serve every run of the account: a worker per run found with jobs left, looked for again and again."""
    serving: set[str] = set()
    async with anyio.create_task_group() as group:
        while True:
            for run in await _runs(args):
                if run not in serving:
                    serving.add(run)
                    group.start_soon(
                        functools.partial(_serve_run, mj, limits, args, run, board, until_done=False)
                    )
            await anyio.sleep(_DISCOVER_EVERY)


async def _runs(args: argparse.Namespace) -> list[str]:
    """The account's runs (those with a meta hash), read with SCAN (bounded pages)."""
    owner = object()
    redis = connect(args.redis, owner=owner)
    prefix = f"{account_tag(args.account)}:run:"
    found: list[str] = []
    try:
        with coordinator_errors("looking for runs"):
            async for key in redis.scan_iter(
                match=prefix.replace("{", "\\{").replace("}", "\\}") + "*:meta", count=500
            ):
                name = key.decode() if isinstance(key, bytes) else str(key)
                found.append(name[len(prefix) : -len(":meta")])
    except CoordinatorUnavailableError:
        return []
    finally:
        await redis.aclose()
    return found


class _Board:
    """The worker's progress line: what it did, and whether Redis answers (submits pause while not)."""

    def __init__(self, name: str | None, limits: SharedLimits) -> None:
        self.name = name
        self.limits = limits
        self.workers: dict[str, Worker] = {}
        self.down = False
        self.started = time.monotonic()

    def event(self, event: WorkerEvent) -> None:
        if event.kind == "coordinator-down" and not self.down:
            self.down = True
            print(
                "Redis does not answer: no new submit goes out; waits on submitted jobs go on.",
                file=sys.stderr,
                flush=True,
            )
        elif event.kind == "coordinator-up" and self.down:
            self.down = False
            print("Redis answers again: submits resume.", file=sys.stderr, flush=True)

    async def report_every(self, seconds: float) -> None:
        while True:
            await anyio.sleep(seconds)
            self.report()

    def report(self) -> None:
        for run, worker in self.workers.items():
            print(
                _line(
                    run,
                    worker.statistics(),
                    time.monotonic() - self.started,
                    self.down,
                    self.limits.round_trips,
                ),
                file=sys.stderr,
                flush=True,
            )


def _line(run: str, stats: WorkerStatistics, elapsed: float, down: bool, limit_trips: int) -> str:
    state = "Redis DOWN: submits paused" if down or stats.coordinator_down else "ok"
    return (
        f"[{stats.name} run {run} {elapsed:6.0f}s] {stats.ended} ended ({stats.ok} ok, {stats.failed} failed, "
        f"{stats.ambiguous} ambiguous), {stats.in_flight} in hand, {stats.submitted} submitted, "
        f"{stats.adopted} adopted, {stats.resumed} resumed, "
        f"{stats.round_trips + limit_trips} Redis round trips; {state}"
    )


async def _watch_signals(stop: anyio.CancelScope, received: list[int]) -> None:
    """SIGINT/SIGTERM: stop (jobs in hand stay pending in the run; others take them after --claim-after)."""
    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                received.append(signum)
                stop.cancel()
                return
    except NotImplementedError:  # pragma: no cover
        return
