"""Run the emulator from a shell: ``mjasync emulator [--port 8080] [--speed 5] [--token T ...]``.

The same as ``python -m mjasync.emulator``, which needs no console script. Faults: ``--fault-rate 0.2
[--fault-kinds 429 500=2 reset] [--fault-seed 7] [--fault-scope submits]`` and ``--concurrency-limit N``;
counters at ``GET /_emulator/counters``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Final

import anyio

from . import DEFAULT_BANNED_WORDS, DEFAULT_TOKEN, FAULT_KINDS, Emulator, FaultPlan

#: The program name `--help` shows when run as a module; `mjasync emulator` passes its own.
MODULE_PROG: Final = "python -m mjasync.emulator"

_DESCRIPTION: Final = (
    "Serve mjasync's emulator until Ctrl-C or SIGTERM: a local stand-in, on one port, for AceData "
    "Cloud's Midjourney API (/midjourney/*, Bearer token), GoAPI's Midjourney API v2 (/mj/v2/*, "
    "X-API-KEY) and the midjourney-proxy protocol of self-hosted gateways (/mj/submit/*, /mj/task/*, "
    f"mj-api-secret), with real PNGs and injectable faults. It accepts the token {DEFAULT_TOKEN} unless "
    "--token is given, and prints 'mjasync emulator listening on URL' when ready."
)


def _parse(argv: Sequence[str] | None, prog: str = MODULE_PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to bind, 0 for any (default: %(default)s)"
    )
    parser.add_argument(
        "--speed", type=float, default=0.0, help="seconds each job takes end to end (default: %(default)s)"
    )
    parser.add_argument(
        "--token",
        action="append",
        dest="tokens",
        metavar="T",
        help=f"accepted token (bearer, X-API-KEY or mj-api-secret); repeat for several (default: {DEFAULT_TOKEN})",
    )
    parser.add_argument(
        "--banned-word",
        action="append",
        dest="banned_words",
        metavar="W",
        help=f"moderated word; repeat for several (default: {' '.join(DEFAULT_BANNED_WORDS)})",
    )
    faults = parser.add_argument_group("faults", "inject faults (counters at GET /_emulator/counters)")
    faults.add_argument(
        "--fault-rate", type=float, default=0.0, metavar="R", help="share of requests faulted, 0-1"
    )
    faults.add_argument(
        "--fault-kinds",
        nargs="+",
        metavar="KIND[=W]",
        help=f"kinds to draw, optionally weighted (default: all of {' '.join(FAULT_KINDS)})",
    )
    faults.add_argument("--fault-seed", type=int, default=0, metavar="N", help="seed (default: %(default)s)")
    faults.add_argument(
        "--fault-scope",
        choices=("all", "submits", "fetch"),
        default="all",
        help="paths faulted (default: all)",
    )
    faults.add_argument(
        "--concurrency-limit",
        type=int,
        metavar="N",
        help="open submits per token before a 429 (midjourney-proxy: running tasks per token)",
    )
    faults.add_argument(
        "--proxy-queue-size",
        type=int,
        default=10,
        metavar="N",
        help="midjourney-proxy tasks waiting per token before code 23 (default: %(default)s)",
    )
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> FaultPlan | None:
    """The fault plan the flags ask for, or None.

    Raises:
        ValueError: a bad rate, kind or weight.
    """
    if not args.fault_rate:
        return None
    kinds: dict[str, float] = {}
    for item in (part for value in args.fault_kinds or FAULT_KINDS for part in value.split(",") if part):
        kind, _, weight = item.partition("=")
        kinds[kind.strip()] = float(weight) if weight else 1.0
    return FaultPlan(rate=args.fault_rate, kinds=kinds, seed=args.fault_seed, scope=args.fault_scope)


async def _serve(args: argparse.Namespace, plan: FaultPlan | None) -> None:
    tokens = tuple(args.tokens or (DEFAULT_TOKEN,))
    banned = DEFAULT_BANNED_WORDS if args.banned_words is None else tuple(args.banned_words)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Emulator(
            host=args.host,
            port=args.port,
            speed=args.speed,
            tokens=tokens,
            banned_words=banned,
            faults=plan,
            concurrency_limit=args.concurrency_limit,
            proxy_queue_size=args.proxy_queue_size,
        ) as emu:
            print(f"mjasync emulator listening on {emu.url}", flush=True)
            async for _ in signals:
                break


def main(argv: Sequence[str] | None = None, *, prog: str = MODULE_PROG) -> int:
    """Run the emulator until SIGINT or SIGTERM; return the exit status.

    *prog* is the name its usage and usage errors show: ``python -m mjasync.emulator`` run as a
    module, ``mjasync emulator`` from the `mjasync` command.
    """
    args = _parse(argv, prog)
    if args.speed < 0:
        print("error: --speed must be >= 0", file=sys.stderr)
        return 2
    if args.concurrency_limit is not None and args.concurrency_limit < 1:
        print("error: --concurrency-limit must be >= 1", file=sys.stderr)
        return 2
    if args.proxy_queue_size < 0:
        print("error: --proxy-queue-size must be >= 0", file=sys.stderr)
        return 2
    try:
        plan = _plan(args)
    except ValueError as exc:
        print(f"error: faults: {exc}", file=sys.stderr)
        return 2
    try:
        anyio.run(_serve, args, plan, backend="asyncio")
    except KeyboardInterrupt:  # a Ctrl-C that lands before the signal receiver is installed
        pass
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
