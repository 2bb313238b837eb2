"""`mjasync batch` as a subprocess against the hostile server, `kill -9`ed at a random request, then resumed.

Whatever the server did before the kill, and wherever the kill fell, the resumed runs against the same
server end with: one task per job (per grid, per upscale), at most one results line per key and one for
every key that finished, and no secret in stdout, stderr, results.jsonl or the journal. On the
midjourney-proxy the first run also meets its reply codes (22, 23, 9, a number or wrong types for
`result`) and lookup views (omitted ids, strangers, twins, FAILURE "100%", status going backwards).
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .checks import assert_one_task_per_job, leaked_in
from .server import API_KEY, HostileServer, Script, serve
from .strategies import SETTINGS, garbage

pytestmark = pytest.mark.anyio

PROMPTS = [f"hostile batch prompt {i}" for i in range(4)]
#: A run of the CLI (default client limits: 120 s per request) must end long before this.
RUN_HANG_SECONDS = 60.0
#: Runs after the kill; a run may leave jobs for the next (exit 1: a 429, a 5xx), as the CLI documents.
RESUMES = 3
#: Exit statuses of a run in which every job ended (3: some of them with an error).
ENDED = (0, 3)

#: Misbehaviour that ends quickly under the CLI's default limits (no drips or hangs: those are bounded
#: by 120 s timeouts there, and tested with small limits elsewhere).
cli_scripts = st.builds(
    Script,
    submits=st.lists(
        st.sampled_from(
            [
                "ok",
                "refuse-400",
                "throttle-429",
                "fail-5xx-before",
                "fail-5xx-after",
                "reset-after",
                "garbage-after",
            ]
        ),
        max_size=4,
    ),
    lookups=st.lists(
        st.sampled_from(
            ["honest", "running", "unknown", "failed", "garbage", "throttle-429", "fail-5xx", "reset"]
        ),
        max_size=4,
    ),
    garbage=garbage,
    retry_after=st.lists(
        st.sampled_from(["0", "0.01", "-1", "abc", "Wed, 21 Oct 2015 07:28:00 GMT"]), min_size=1, max_size=2
    ).map(tuple),
    echo=st.sampled_from(["plain", "escaped", "split"]),
    steps=st.integers(0, 2),
)


def _with_proxy_moves(script: Script, codes: list[Any], views: list[Any]) -> Script:
    script.codes, script.views = codes, views
    return script


#: The proxy's moves that end under the CLI's default limits (no MODAL or code 23 forever: those wait
#: out deadlines of minutes, and are tested with small limits elsewhere).
proxy_cli_scripts = st.builds(
    _with_proxy_moves,
    cli_scripts,
    st.lists(st.sampled_from(["1", "22", "23", "9-queue", "result-number", "wrong-types", "24"]), max_size=4),
    st.lists(
        st.sampled_from(
            [
                "honest",
                "backwards",
                "failure-100",
                "omit",
                "foreign",
                "twin",
                "wrong-types",
                "cancel",
                "odd-progress",
            ]
        ),
        max_size=4,
    ),
)


async def run_cli(
    server: HostileServer, prompts: Path, out: Path, upscale: bool, kill_at: int | None
) -> tuple[int, str]:
    """Run `mjasync batch` once; SIGKILL it when the server has seen `kill_at` more requests."""
    command = [
        sys.executable,
        "-m",
        "mjasync",
        "batch",
        str(prompts),
        "--out",
        str(out),
        "--concurrency",
        "3",
        "--no-images",
        "--poll-interval",
        "0.01",
        "--provider",
        server.provider,
        "--base-url",
        server.url,
        *(["--upscale", "1"] if upscale else []),
    ]
    environment = {**os.environ, "MJASYNC_API_KEY": API_KEY, "PYTHONWARNINGS": "error"}
    environment.pop("MJASYNC_BASE_URL", None)
    start = server.requests
    with anyio.fail_after(RUN_HANG_SECONDS):
        async with await anyio.open_process(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as process:

            async def kill_when_reached() -> None:
                assert kill_at is not None
                await server.wait_requests(start + kill_at)
                process.send_signal(signal.SIGKILL)

            output = bytearray()

            async def drain(stream: anyio.abc.ByteReceiveStream | None) -> None:
                assert stream is not None
                async for chunk in stream:
                    output.extend(chunk)

            async with anyio.create_task_group() as group:
                if kill_at is not None:
                    group.start_soon(kill_when_reached)
                group.start_soon(drain, process.stdout)
                group.start_soon(drain, process.stderr)
                code = await process.wait()
                group.cancel_scope.cancel()
    return code, output.decode("utf-8", "replace")


def assert_no_secret_in_files(out: Path, console: str) -> None:
    assert not leaked_in(console), f"the CLI printed a secret: {leaked_in(console)} in {console[-2000:]!r}"
    for path in sorted(out.rglob("*")):
        if path.is_file():
            text = path.read_bytes().decode("latin-1")
            assert not leaked_in(text), f"{path.name} holds a secret: {leaked_in(text)}"


def assert_one_line_per_key(out: Path) -> dict[str, dict[str, object]]:
    results = out / "results.jsonl"
    lines = (
        [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        if results.exists()
        else []
    )
    counts = collections.Counter(line["key"] for line in lines)
    repeated = {key: count for key, count in counts.items() if count > 1}
    assert not repeated, f"results.jsonl has more than one line for {repeated}"
    return {str(line["key"]): line for line in lines}


async def check_batch(
    provider: Literal["acedata", "goapi", "midjourney-proxy"],
    script: Script,
    kill_at: int,
    upscale: bool,
    tmp: Path,
) -> None:
    prompts = tmp / "prompts.txt"
    prompts.write_text("".join(f"{prompt}\n" for prompt in PROMPTS))
    out = tmp / "out"
    console = ""
    async with serve(provider, script) as server:
        _, text = await run_cli(server, prompts, out, upscale, kill_at)
        console += text
        server.reset(Script())  # the resumes meet an honest server
        code = None
        for _ in range(RESUMES):
            code, text = await run_cli(server, prompts, out, upscale, None)
            console += text
            if code in ENDED:
                break
    assert_one_task_per_job(server)
    lines = assert_one_line_per_key(out)
    assert_no_secret_in_files(out, console)
    assert code in ENDED, f"the resumed runs did not end every job (exit {code}): {console[-3000:]}"
    grids = [key for key in lines if "/" not in key]
    assert len(grids) == len(PROMPTS), f"results.jsonl has lines for {sorted(lines)}, not every prompt"
    finished = {str(line.get("task_id")) for line in lines.values() if line.get("ok")}
    for task in server.created:
        if task.state == "finished" and task.task_id not in finished:
            # A finished task the run did not write down was paid for and lost.
            ended = [line for line in lines.values() if line.get("task_id") == task.task_id]
            assert ended, f"task {task.task_id} ({task.key}) finished at the server and has no results line"


@pytest.mark.parametrize("provider", ["acedata", "goapi"])
@settings(SETTINGS, max_examples=3)
@given(script=cli_scripts, kill_at=st.integers(1, 14), upscale=st.booleans())
async def test_batch_survives_kill_9_and_resumes(
    provider: Literal["acedata", "goapi"],
    script: Script,
    kill_at: int,
    upscale: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    await check_batch(provider, script, kill_at, upscale, tmp_path_factory.mktemp("batch"))


@settings(SETTINGS, max_examples=2)
@given(script=proxy_cli_scripts, kill_at=st.integers(1, 14), upscale=st.booleans())
async def test_proxy_batch_survives_kill_9_and_resumes(
    script: Script, kill_at: int, upscale: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    await check_batch("midjourney-proxy", script, kill_at, upscale, tmp_path_factory.mktemp("batch"))
