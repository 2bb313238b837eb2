"""examples/web/app.py, as a person uses it: Debian's headless Chromium, driven by Playwright, loads the
page, submits a prompt, watches the job paint, upscales one image and saves a screenshot. Without a
browser: the app stops following a job the moment its client goes away, says "busy" when full, refuses
bad requests with a message, serves the other providers the same way, and runs with the command at the
top of its file.

The app runs in this test's event loop (uvicorn on a socket bound to 127.0.0.1 beforehand), with the
embedded emulator its lifespan starts. No browser is ever downloaded: the test uses the system's
`chromium` and skips with the reason when there is none, except under CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import anyio
import pytest
import uvicorn
from anyio.streams.buffered import BufferedByteReceiveStream

from ..conftest import open_connections

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web" / "app.py"
#: Flags for a headless Chromium in a container: no sandbox (no user namespaces there), no GPU, and
#: nothing that reaches out to Google's services on its own.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Hang detectors, not expectations: each wait normally ends in well under a second.
WAIT = 30.0
WAIT_MS = WAIT * 1000


def load_example() -> ModuleType:
    """examples/web/app.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mjasync_web_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


web = load_example()


def chromium_or_skip() -> str:
    """The system's Chromium; without one, skip (or fail under CI, which always installs it)."""
    found = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
    if found is None:
        reason = "no Chromium: install Debian's `chromium` package (this test never downloads a browser)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must not skip the web example's browser test")
        pytest.skip(reason)
    return found


def artifacts_folder(tmp_path: Path) -> Path:
    """Where the screenshot goes: `MJASYNC_ARTIFACTS` when set (CI keeps it), else the test's tmp_path."""
    named = os.environ.get("MJASYNC_ARTIFACTS")
    folder = Path(named) if named else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def with_app(settings: Any, body: Callable[[str, Any], Awaitable[None]]) -> None:
    """Serve the example with `settings` on 127.0.0.1 while `body(url, backend)` runs, then stop it."""
    backend = web.Backend(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    # Listening before uvicorn starts: a request sent while the app's lifespan still starts waits in
    # the backlog instead of being refused, so nothing needs to poll for readiness.
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        web.create_app(backend),
        log_level="warning",
        lifespan="on",
        http="h11",
        ws="none",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [sock])
            try:
                await body(url, backend)
            finally:
                server.should_exit = True
    finally:
        sock.close()


def playwright_or_skip() -> None:
    """Playwright's Python package is in the test extra; without it, skip (fail under CI)."""
    if importlib.util.find_spec("playwright") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is in the test extra: pip install -e '.[test]'")
        pytest.skip("playwright is not installed: pip install -e '.[test]'")


async def test_page_paints_a_job_live_then_upscales(tmp_path: Path) -> None:
    """The page shows several progress updates with previews as they arrive, then the grid (loaded:
    naturalWidth > 0); U2 starts an upscale that paints the same way; a banned prompt shows the
    error's message as text. The browser logs no error (a CSP violation would be one)."""
    executable = chromium_or_skip()
    playwright_or_skip()
    from playwright.async_api import async_playwright

    screenshot = artifacts_folder(tmp_path) / "web-example.png"

    async def drive(url: str, backend: Any) -> None:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS, timeout=WAIT_MS
            )
            try:
                page = await browser.new_page(viewport={"width": 1000, "height": 1400})
                page.set_default_timeout(WAIT_MS)
                problems: list[str] = []
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on(
                    "console",
                    lambda message: (
                        problems.append(f"console: {message.text}") if message.type == "error" else None
                    ),
                )
                await page.goto(url)
                await page.fill("#prompt", "a lighthouse at dawn, watercolor")
                await page.click("#imagine")

                grid = page.locator('article[data-kind="imagine"]')
                await page.wait_for_selector('article[data-kind="imagine"]:not([data-state="running"])')
                status = await grid.locator(".status").text_content()
                assert await grid.get_attribute("data-state") == "done", status
                updates = await grid.locator(".updates li").all_text_contents()
                # The emulator sends five progress lines before the final one (5, 20, 35, 55, 75%).
                assert len(updates) >= 3 and len(set(updates)) == len(updates), updates
                assert all("new preview" in update for update in updates), updates
                assert int(await grid.get_attribute("data-previews-shown") or 0) >= 1
                assert await natural_width(grid.locator("img.final")) == 512
                assert await grid.locator("img.preview").is_hidden()
                assert await grid.locator(".percent").text_content() == "100%"

                await grid.locator('button[data-upscale="2"]').click()
                upscaled = page.locator('article[data-kind="upscale"]')
                await page.wait_for_selector('article[data-kind="upscale"]:not([data-state="running"])')
                status = await upscaled.locator(".status").text_content()
                assert await upscaled.get_attribute("data-state") == "done", status
                assert (
                    await upscaled.locator(".title").text_content()
                    == "U2 of: a lighthouse at dawn, watercolor"
                )
                assert len(await upscaled.locator(".updates li").all_text_contents()) >= 3
                assert await natural_width(upscaled.locator("img.final")) > 0
                assert await grid.locator('button[data-upscale="2"]').is_disabled()  # each upscale once

                await page.screenshot(path=str(screenshot), full_page=True)
                print(f"screenshot: {screenshot}")  # noqa: T201 (the artifact's path, in the test's output)

                # An error reaches the page as its message, in text: the emulator bans "gore".
                await page.fill("#prompt", "gore on a lighthouse")
                await page.click("#imagine")
                banned = page.locator('article[data-kind="imagine"]').first
                await page.wait_for_selector('article[data-kind="imagine"][data-state="failed"]')
                message = await banned.locator(".status.error").text_content() or ""
                assert message.startswith("ModerationError: 403 forbidden"), message
                assert "Traceback" not in message and "test-token" not in message
                assert problems == []
            finally:
                await browser.close()
        with anyio.fail_after(WAIT):
            await backend.streams.wait_idle()

    await with_app(web.Settings(emulator_speed=2.0), drive)
    assert screenshot.stat().st_size > 0


async def natural_width(image: Any) -> int:
    """The image's natural width once it has loaded (`decode()` rejects if it cannot load)."""
    with anyio.fail_after(WAIT):
        width = await image.evaluate("img => img.decode().then(() => img.naturalWidth)")
    assert isinstance(width, int)
    return width


async def test_a_browser_that_leaves_stops_its_stream_and_a_full_server_says_busy() -> None:
    """A stream whose client disconnects mid-job ends at once: the relay is cancelled, its place is
    freed and the client's pooled connection to the provider is released, with no task left. While
    the only place is taken, another job is answered 503 with a message, and not sent."""

    async def drive(url: str, backend: Any) -> None:
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            first = await session.post(f"{url}/api/imagine", json={"prompt": "a slow lighthouse"})
            assert first.status == 200
            assert first.headers["content-type"].startswith("text/event-stream")
            assert (await first.content.readline()).startswith(b"event: progress")

            busy = await session.post(f"{url}/api/imagine", json={"prompt": "one too many"})
            assert (busy.status, await busy.json()) == (
                503,
                {"message": "The server is following as many jobs as it can; try again shortly."},
            )
            assert backend.streams.active == 1

            first.close()  # the browser goes away while the job is still running
            with anyio.fail_after(WAIT):
                await backend.streams.wait_idle()
            assert backend.streams.abandoned == 1
            assert open_connections(backend.mj) == 0
            async with session.get(f"{url}/api/status") as answer:
                assert await answer.json() == {"streams": 0, "abandoned": 1}

    # A job takes 10 s: its first update comes after 1.5 s queued, and it is still running when its
    # stream is dropped.
    await with_app(web.Settings(emulator_speed=10.0, max_streams=1), drive)


async def test_the_command_at_the_top_of_the_file_serves_the_page() -> None:
    """`python examples/web/app.py` (here on port 0) starts the emulator, serves the page and its
    assets, and stops cleanly on Ctrl+C (SIGINT), exit status 0."""
    command = [sys.executable, "-W", "error", str(EXAMPLE), "--port", "0"]
    async with await anyio.open_process(command, stderr=subprocess.STDOUT) as process:
        assert process.stdout is not None
        output = BufferedByteReceiveStream(process.stdout)
        seen: list[str] = []
        try:
            with anyio.fail_after(WAIT):
                while not seen or "Uvicorn running on" not in seen[-1]:
                    seen.append((await output.receive_until(b"\n", 4096)).decode())
            url = seen[-1].split("Uvicorn running on ", 1)[1].split()[0]
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
                for path, expected in [
                    ("/", "Watch a Midjourney job paint"),
                    ("/static/app.js", "function follow("),
                    ("/static/style.css", ".card"),
                    ("/static/favicon.svg", "<svg"),
                ]:
                    async with session.get(url + path) as answer:
                        assert answer.status == 200, path
                        assert expected in await answer.text(), path
        finally:
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(WAIT):
                rest = await read_to_end(output)
                status = await process.wait()
        log = "".join(seen) + rest.decode(errors="replace")
        assert "Embedded emulator on http://127.0.0.1:" in log
        assert status == 0, log


async def read_to_end(stream: BufferedByteReceiveStream) -> bytes:
    """What is left of a process's output, up to its end."""
    chunks: list[bytes] = []
    try:
        while True:
            chunks.append(await stream.receive())
    except anyio.EndOfStream:
        return b"".join(chunks)


async def events(answer: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of an answer, read to its end: (event name, decoded data)."""
    found: list[tuple[str, dict[str, Any]]] = []
    with anyio.fail_after(WAIT):
        body = (await answer.read()).decode()
    for frame in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":"))
        if "data" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


@pytest.mark.parametrize("provider", ["goapi", "midjourney-proxy"])
async def test_the_other_providers_stream_and_upscale(provider: str) -> None:
    """GoAPI and midjourney-proxy report progress by polling, not a stream: the page gets the same
    events from them (progress with previews, then the grid it can upscale), and the relayed images
    are PNGs."""

    async def drive(url: str, backend: Any) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
            async with session.post(f"{url}/api/imagine", json={"prompt": "a harbour at dawn"}) as answer:
                imagined = await events(answer)
            names = [name for name, _ in imagined]
            assert names[-1] == "done" and names.count("progress") >= 2, imagined
            done = imagined[-1][1]
            assert done["upscales"] == [1, 2, 3, 4]
            async with session.get(url + done["image"]) as image:
                assert (image.status, image.content_type) == (200, "image/png")
            upscale = {"task_id": done["task_id"], "index": 3}
            async with session.post(f"{url}/api/upscale", json=upscale) as answer:
                upscaled = await events(answer)
            assert upscaled[-1][0] == "done" and upscaled[-1][1]["upscales"] == [], upscaled

    await with_app(web.Settings(provider=provider, emulator_speed=1.0), drive)


async def test_requests_the_app_refuses_say_why() -> None:
    """Bodies past the cap, prompts past the page's limit, a forgotten grid, an unknown image and a
    bad index are refused with a status and a message the page can show."""

    async def drive(url: str, backend: Any) -> None:
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            cases = [
                (
                    "/api/imagine",
                    b"x" * (web.MAX_BODY_BYTES + 1),
                    413,
                    "The request is larger than 16384 bytes.",
                ),
                ("/api/imagine", b'{"prompt": "' + b"a" * 1001 + b'"}', 400, "this page takes 1000"),
                ("/api/imagine", b'{"prompt": "   "}', 400, "Type a prompt first."),
                ("/api/imagine", b"not json", 400, 'Send JSON {"prompt": "..."}.'),
                ("/api/upscale", b'{"task_id": "gone", "index": 1}', 404, "no longer held"),
                ("/api/upscale", b'{"task_id": "gone", "index": 5}', 400, "index 1 to 4"),
            ]
            for path, data, status, message in cases:
                async with session.post(url + path, data=data) as answer:
                    assert answer.status == status, (path, data[:40])
                    assert message in (await answer.json())["message"]
            async with session.get(f"{url}/images/0123") as answer:
                assert answer.status == 404
        assert backend.streams.abandoned == 0

    await with_app(web.Settings(emulator_speed=0.0), drive)
