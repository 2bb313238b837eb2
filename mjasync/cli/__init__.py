"""Entry layer: the `mjasync` command (`demo`, `batch`, `worker`, `emulator`). Never imported by `import mjasync`.

`batch status` and `batch results` (a distributed run's, on Redis) are told apart from `batch FILE` by
their first word, before `batch`'s own parser reads the rest.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from typing import Final, NoReturn

from .._providers import PROVIDERS

__all__ = ["DOCS_URL", "main", "version_line"]

#: Where the documentation site lives (the same address as the package metadata's Documentation URL).
DOCS_URL: Final = "https://mjasync.github.io/mjasync/"


def version_line() -> str:
    """What `mjasync --version` prints: the installed distribution's version and the Python running it."""
    # Imported here, not at the top: importing importlib.metadata and scanning sys.path is slow, and no
    # other command should pay for it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("mjasync")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        installed = "(not installed)"
    return f"mjasync {installed} (Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """`--version`, whose line is only worked out when asked for (argparse's own wants it up front)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        # argparse's signature; a version line needs none of these.
        namespace: argparse.Namespace,  # noqa: ARG002
        values: str | Sequence[object] | None,  # noqa: ARG002
        option_string: str | None = None,  # noqa: ARG002
    ) -> NoReturn:
        print(version_line())
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `mjasync` command line; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="mjasync",
        description=(
            "The asyncio client for hosted Midjourney APIs (AceData Cloud, GoAPI, midjourney-proxy "
            "gateways), from a shell: a demo that needs no account, a local emulator of all three "
            "providers, resumable batch runs, and workers that share one account's limits on Redis."
        ),
        epilog=f"Documentation: {DOCS_URL}",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print mjasync's and Python's versions and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run imagine → variation → upscale → zoom out against the embedded emulator",
        description=(
            "Run imagine, a variation, an upscale and a zoom out with live progress against an emulator "
            "started inside this process (no account, no network), and save each result's PNG in --out."
        ),
    )
    demo.add_argument("--out", default="mjasync-demo", help="folder for the PNGs (default: %(default)s)")
    demo.add_argument(
        "--speed", type=float, default=2.0, help="seconds each emulated job takes (default: %(default)s)"
    )
    demo.add_argument(
        "--prompt",
        default="Lamborghini speeds inside a volcano",
        help="the prompt to imagine (default: %(default)s)",
    )
    demo.add_argument(
        "--provider",
        choices=tuple(PROVIDERS),
        default="acedata",
        help="which provider's API the emulator speaks to the client (default: %(default)s)",
    )
    batch = commands.add_parser(
        "batch",
        help="run a file of prompts, resumably; `batch status|results` for a distributed run (see `mjasync batch --help`)",
    )
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
    # The emulator's own parser reads its arguments and its --help (below), as `python -m mjasync.emulator`.
    commands.add_parser(
        "emulator",
        help="serve an emulator of AceData, GoAPI and midjourney-proxy on 127.0.0.1 (see `mjasync emulator --help`)",
        add_help=False,
    )

    if args[:2] in (["batch", "status"], ["batch", "results"]):
        from ._scale_out import results_main, status_main

        return status_main(args[2:]) if args[1] == "status" else results_main(args[2:])
    if args[:1] == ["emulator"]:
        from ..emulator.__main__ import main as emulator_main

        return emulator_main(args[1:], prog="mjasync emulator")
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
