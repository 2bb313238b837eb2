"""MkDocs hooks for the docs build (mkdocs.yml `hooks:`): the command-line reference shows each
command's `--help` as the installed `mjasync` prints it, so the page cannot drift from the code.

A line `<!-- mjasync-help: batch status -->` in a page becomes a text block with the output of
`python -m mjasync batch status --help`, run in this interpreter with 100 columns (argparse wraps to
the terminal's width; a fixed width keeps the build the same everywhere).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

MARKER = re.compile(r"^<!-- mjasync-help:([\w ]*)-->$", re.MULTILINE)


def _help(command: str) -> str:
    """`mjasync COMMAND --help`, as printed; a command that fails fails the build."""
    done = subprocess.run(
        [sys.executable, "-m", "mjasync", *command.split(), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100", "NO_COLOR": "1"},
        check=True,
    )
    return f"```text\n$ mjasync {command.strip()} --help\n{done.stdout.rstrip()}\n```"


def on_page_markdown(markdown: str, **_: object) -> str:
    """Put each command's help where the page asks for it."""
    return MARKER.sub(lambda match: _help(match.group(1)), markdown)
