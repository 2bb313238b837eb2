"""Every script in examples/ runs as written and exits 0 (they use the embedded emulator only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
EXPECTED = {
    "quickstart.py": "saved",
    "stream_progress.py": "actions: upscale1",
    "submit_and_wait.py": "20 jobs finished",
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
    assert EXPECTED[script.name] in done.stdout
