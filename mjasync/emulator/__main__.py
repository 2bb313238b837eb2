"""Run the emulator from a shell: ``python -m mjasync.emulator [--port 8080] [--speed 5] [--token T ...]``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import anyio

from . import DEFAULT_BANNED_WORDS, DEFAULT_TOKEN, Emulator


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mjasync.emulator",
        description="Serve a local emulator of AceData Cloud's Midjourney API until Ctrl-C.",
    )
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
        help=f"accepted bearer token; repeat for several (default: {DEFAULT_TOKEN})",
    )
    parser.add_argument(
        "--banned-word", action="append", dest="banned_words", metavar="W", help="moderated word"
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    tokens = tuple(args.tokens or (DEFAULT_TOKEN,))
    banned = DEFAULT_BANNED_WORDS if args.banned_words is None else tuple(args.banned_words)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Emulator(
            host=args.host, port=args.port, speed=args.speed, tokens=tokens, banned_words=banned
        ) as emu:
            print(f"mjasync emulator listening on {emu.url}", flush=True)
            async for _ in signals:
                break


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM; return the exit status."""
    args = _parse(argv)
    if args.speed < 0:
        print("error: --speed must be >= 0", file=sys.stderr)
        return 2
    try:
        anyio.run(_serve, args, backend="asyncio")
    except KeyboardInterrupt:  # a Ctrl-C that lands before the signal receiver is installed
        pass
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
