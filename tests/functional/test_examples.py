"""Every script in examples/ runs as written and exits 0 (they use the embedded emulator only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
EXPECTED: dict[str, tuple[str, ...]] = {
    "quickstart.py": ("saved",),
    "stream_progress.py": ("actions: upscale1",),
    "submit_and_wait.py": ("20 jobs finished",),
    # Awaited by callback: not one poll; with a callback lost, only that job polls, and it still finishes.
    "webhook_bot.py": (
        "answered 50/50 users with 0 polls",
        "with 1 callback(s) dropped: answered 50/50 users with 1 polls",
        "0 routes left open",
    ),
}


def test_every_example_has_an_expectation() -> None:
    """A new example must say what its output proves."""
    assert {p.name for p in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    """The example exits 0 and prints what shows it worked."""
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for expected in EXPECTED[script.name]:
        assert expected in done.stdout


def test_webhook_bot_on_acedata(tmp_path: Path) -> None:
    """The bot example runs on AceData's callbacks too."""
    script = next(p for p in EXAMPLES if p.name == "webhook_bot.py")
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script), "--provider", "acedata"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for expected in EXPECTED["webhook_bot.py"]:
        assert expected in done.stdout


def test_webhook_bot_on_midjourney_proxy(tmp_path: Path) -> None:
    """The bot example runs on midjourney-proxy's notifyHook too: one callback per step of a job, so the
    user whose callbacks are all lost is the only one who polls."""
    script = next(p for p in EXAMPLES if p.name == "webhook_bot.py")
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script), "--provider", "midjourney-proxy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "midjourney-proxy emulator on http://127.0.0.1:" in done.stdout
    assert "answered 50/50 users with 0 polls" in done.stdout
    assert "dropped: answered 50/50 users with 1 polls" in done.stdout
    assert "0 routes left open" in done.stdout
