"""The README's Python blocks run as written, in order, against the emulator."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import pytest

import mjasync
from mjasync.testing import EMULATOR_TOKEN

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks() -> None:
    """The API tour is made of runnable blocks (this guards the regex below from matching nothing)."""
    assert len(readme_blocks()) >= 10


async def test_readme_blocks_run_in_order(
    mj: mjasync.Client, mj_emulator: Any, tmp_path: Path, redis_url: str
) -> None:
    """Every ```python block of the README runs against the emulator without error."""
    namespace: dict[str, Any] = {
        "mj": mj,
        "mjasync": mjasync,
        "api_key": EMULATOR_TOKEN,
        "base_url": mj_emulator.url,
        "redis_url": redis_url,  # the scale-out section's Redis: a real server, started by the fixture
        "print": lambda *args, **kwargs: None,
    }
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the download examples write into ./out
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
    assert (tmp_path / "out" / "upscaled.png").stat().st_size > 0
