"""Entry layer: the `mjasync` command (`demo`, `batch`, `worker`, `emulator`). Never imported by `import mjasync`.

`batch status` and `batch results` (a distributed run's, on Redis) are told apart from `batch FILE` by
their first word, before `batch`'s own parser reads the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._providers import PROVIDERS

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `mjasync` command line; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="mjasync", description="asyncio client for hosted Midjourney APIs")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="run imagine → variation → upscale → zoom out against the embedded emulator"
    )
    demo.add_argument("--out", default="mjasync-demo", help="folder for the PNGs (default: %(default)s)")
    demo.add_argument(
        "--speed", type=float, default=2.0, help="seconds each emulated job takes (default: %(default)s)"
    )
    demo.add_argument("--prompt", default="Lamborghini speeds inside a volcano", help="the prompt to imagine")
    demo.add_argument(
        "--provider",
        choices=tuple(PROVIDERS),
        default="acedata",
        help="which provider's API the emulator speaks to the client (default: %(default)s)",
    )
    batch = commands.add_parser("batch", help="run a file of prompts, resumably (see `mjasync batch --help`)")
    if args[:1] == ["batch"]:
        # Only `batch` itself needs its heavier module to describe its arguments.
        from ._batch import configure_parser

        configure_parser(batch)
    worker = commands.add_parser(
        "worker", help="run a distributed batch's jobs from Redis (see `mjasync worker --help`)"
    )
    if args[:1] == ["worker"]:
        from ._worker import configure_parser as configure_worker

        configure_worker(worker)
    commands.add_parser(
        "emulator", help="serve the emulator on 127.0.0.1 (see `mjasync emulator --help`)", add_help=False
    )

    if args[:2] in (["batch", "status"], ["batch", "results"]):
        from ._scale_out import results_main, status_main

        return status_main(args[2:]) if args[1] == "status" else results_main(args[2:])
    if args[:1] == ["emulator"]:
        from ..emulator.__main__ import main as emulator_main

        return emulator_main(args[1:])
    options = parser.parse_args(args)
    if options.command == "demo":
        from ._demo import run_demo

        return run_demo(
            out=options.out, speed=options.speed, prompt=options.prompt, provider=options.provider
        )
    if options.command == "batch":
        from ._batch import run_batch

        return run_batch(options)
    if options.command == "worker":
        from ._worker import run_worker

        return run_worker(options)
    parser.print_help()
    return 2
