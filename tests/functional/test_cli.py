"""The `mjasync` command as a user runs it: `mjasync demo` and `mjasync emulator`, in subprocesses.

Every subprocess has a bounded timeout and is killed if a test fails while it runs; the emulator binds
127.0.0.1 only.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from mjasync.testing import EMULATOR_TOKEN

DEMO_PNGS = ["1-imagine.png", "2-variation2.png", "3-upscale4.png", "4-zoom_out_2x.png"]
#: Seconds a demo run or an emulator shutdown may take before the process is killed.
TIMEOUT = 120
READY_PREFIX = "mjasync emulator listening on http://127.0.0.1:"


def run_demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m mjasync demo ARGS` in *cwd* (killed if it outlives TIMEOUT)."""
    command = [sys.executable, "-W", "error", "-m", "mjasync", "demo", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def assert_demo_pngs(folder: Path) -> None:
    """The demo's four PNGs, and nothing else, each a real PNG that Pillow opens and verifies."""
    assert sorted(p.name for p in folder.iterdir()) == DEMO_PNGS
    for name in DEMO_PNGS:
        with Image.open(folder / name) as img:
            assert img.format == "PNG"
            width, height = img.size
            assert width >= 64
            assert height >= 64
            img.verify()
        with Image.open(folder / name) as img:
            img.load()  # decodes every pixel (verify() does not)
            assert img.getextrema() != ((0, 0), (0, 0), (0, 0)), f"{name} is blank"


def test_demo_writes_four_pngs_and_exits_0(tmp_path: Path) -> None:
    """`mjasync demo --speed 0 --out DIR` exits 0 and writes the four PNGs it names, each opening with Pillow."""
    out = tmp_path / "nested" / "out"  # created by the demo
    done = run_demo(tmp_path, "--speed", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Embedded emulator on http://127.0.0.1:" in done.stdout
    assert f"Wrote 4 PNGs to {out.resolve()}:" in done.stdout
    for name in DEMO_PNGS:
        assert str(out / name) in done.stdout
    assert_demo_pngs(out)


def test_demo_on_goapi_writes_the_same_four_pngs(tmp_path: Path) -> None:
    """`mjasync demo --provider goapi` runs the flow over the emulator's GoAPI side (`/mj/v2/*`)."""
    out = tmp_path / "out"
    done = run_demo(tmp_path, "--speed", "0.3", "--out", str(out), "--provider", "goapi")
    assert done.returncode == 0, done.stderr
    assert "speaking goapi" in done.stdout
    assert f"Wrote 4 PNGs to {out.resolve()}:" in done.stdout
    assert_demo_pngs(out)


def test_demo_on_midjourney_proxy_writes_the_same_four_pngs(tmp_path: Path) -> None:
    """`mjasync demo --provider midjourney-proxy` runs the flow over the emulator's proxy side (`/mj/*`):
    follow-ups go through the result's buttons (`submit/action` with their customIds)."""
    out = tmp_path / "out"
    done = run_demo(tmp_path, "--speed", "0.3", "--out", str(out), "--provider", "midjourney-proxy")
    assert done.returncode == 0, done.stderr
    assert "speaking midjourney-proxy" in done.stdout
    assert_demo_pngs(out)


def test_demo_refuses_an_unknown_provider(tmp_path: Path) -> None:
    """An unknown `--provider` is a usage error (exit 2) that names the choices, and writes nothing."""
    done = run_demo(tmp_path, "--provider", "midjourney-dot-com", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "acedata" in done.stderr and "goapi" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_demo_in_an_empty_folder_uses_its_default_out(tmp_path: Path) -> None:
    """With no --out, as on a fresh clone, the demo writes ./mjasync-demo under the working directory."""
    done = run_demo(tmp_path, "--speed", "0")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mjasync-demo"]
    assert_demo_pngs(tmp_path / "mjasync-demo")


def test_demo_refuses_a_negative_speed(tmp_path: Path) -> None:
    """`--speed -1` is a usage error: exit 2, a message on stderr, no files."""
    done = run_demo(tmp_path, "--speed", "-1", "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "--speed must be >= 0" in done.stderr
    assert list(tmp_path.iterdir()) == []


# --- the emulator command -----------------------------------------------------------------------


def mjasync_script() -> list[str]:
    """The `mjasync` console script installed beside this interpreter."""
    script = Path(sysconfig.get_path("scripts")) / "mjasync"
    assert script.exists(), f"{script} is missing: install the project (pip install -e '.[test]')"
    return [str(script)]


EMULATOR_COMMANDS = {
    "mjasync emulator": lambda: [*mjasync_script(), "emulator"],
    "python -m mjasync emulator": lambda: [sys.executable, "-m", "mjasync", "emulator"],
    "python -m mjasync.emulator": lambda: [sys.executable, "-m", "mjasync.emulator"],
}


@contextmanager
def serving(command: list[str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Start an emulator command, wait (bounded) for its readiness line, yield it and its URL; kill it if still running."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "no readiness line within 30 s"
            line = proc.stdout.readline()
            assert line.startswith(READY_PREFIX), line
            url = line.removeprefix("mjasync emulator listening on ").strip()
            assert int(url.rsplit(":", 1)[1]) > 0
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.kill()


def imagine(url: str) -> dict[str, object]:
    """POST a synchronous imagine straight to *url* (no proxy) and return the JSON result."""
    request = urllib.request.Request(
        f"{url}/midjourney/imagine",
        data=json.dumps({"prompt": "a cat sitting on a table"}).encode(),
        headers={
            "accept": "application/json",
            "authorization": f"Bearer {EMULATOR_TOKEN}",
            "content-type": "application/json",
        },
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as resp:
        assert resp.status == 200
        return dict(json.loads(resp.read()))


@pytest.mark.parametrize("name", sorted(EMULATOR_COMMANDS))
def test_emulator_command_serves_then_exits_0_on_sigint(name: str) -> None:
    """The emulator command prints its readiness line with its URL, answers an imagine, and exits 0 on SIGINT."""
    command = [*EMULATOR_COMMANDS[name](), "--port", "0", "--speed", "0"]
    with serving(command) as (proc, url):
        result = imagine(url)
        assert result["success"] is True
        assert result["progress"] == 100
        assert str(result["image_url"]).startswith(f"{url}/images/")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert out == ""  # nothing after the readiness line
        assert "Traceback" not in err
