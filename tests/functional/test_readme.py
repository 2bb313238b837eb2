"""The README as a quick start and a map: its Python blocks run as written, in order, against the
emulator; it keeps the two fresh-machine commands CI runs; and its map reaches every docs page and
every example.

The API tour that the README held runs page by page in `tests/functional/test_docs.py`.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import pytest

import mjasync
from mjasync.testing import EMULATOR_TOKEN

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: The quick start's commands, exactly: CI and a new user run them as they are printed.
DEMO = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[demo]' && .venv/bin/mjasync demo"
TESTS = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q -W error"
)


def readme_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks() -> None:
    """The quick start shows running code (this guards the regex below from matching nothing)."""
    assert len(readme_blocks()) >= 1


def test_readme_quick_start_commands() -> None:
    """The two fresh-machine commands are there, each alone in a shell block, and the suite's duration."""
    text = README.read_text(encoding="utf-8")
    for command in (DEMO, TESTS):
        assert f"```sh\n{command}\n```" in text
    assert "about 15 minutes on 2 cores" in text


def test_readme_maps_every_page_and_example() -> None:
    """The map links each docs page (on the site and as a file), every example, and the policy files."""
    text = README.read_text(encoding="utf-8")
    docs = ROOT / "docs"
    for page in docs.rglob("*.md"):
        name = page.relative_to(docs).as_posix()
        if name.startswith("reference/") and name not in ("reference/cli.md", "reference/defaults.md"):
            assert "(docs/reference/)" in text  # the reference pages, as one folder
            continue
        site = "https://mjasync.github.io/mjasync/" + (
            "" if name == "index.md" else name[: -len(".md")] + "/"
        )
        if name != "index.md":
            assert f"(docs/{name})" in text, name
        assert f"({site})" in text or f"<{site}>" in text, site
    for example in [*sorted((ROOT / "examples").glob("*.py")), ROOT / "examples" / "web"]:
        link = example.relative_to(ROOT).as_posix() + ("/" if example.is_dir() else "")
        assert f"]({link})" in text, link
    for name in ("CHANGELOG.md", "CONTRIBUTING.md", "LICENSE"):
        assert f"]({name})" in text, name


async def test_readme_blocks_run_in_order(mj: mjasync.Client, mj_emulator: Any, tmp_path: Path) -> None:
    """Every ```python block of the README runs against the emulator without error."""
    namespace: dict[str, Any] = {
        "__name__": "__main__",
        "mj": mj,
        "mjasync": mjasync,
        "api_key": EMULATOR_TOKEN,
        "base_url": mj_emulator.url,
        "print": lambda *args, **kwargs: None,
    }
    cwd = os.getcwd()
    os.chdir(tmp_path)  # nothing may write into the checkout
    try:
        for number, source in enumerate(readme_blocks(), 1):
            code = compile(source, f"README block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            try:
                outcome = eval(code, namespace)
                if outcome is not None:
                    await outcome
            except Exception as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"README block {number} failed: {exc!r}\n{source}")
    finally:
        os.chdir(cwd)
