"""The distributed batch from the command line: enqueue, workers in their own processes, status, results.

Everything runs as a user runs it: `mjasync` subprocesses against a real redis-server and the emulator
on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import redis

from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

#: A hang detector for a whole CLI run, not a timing assertion.
HANG: float = 120.0


def mjasync_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mjasync", *args]


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MJASYNC_", "ACEDATACLOUD_"))}
    return {**clean, "PYTHONUNBUFFERED": "1"}


async def run(*args: str) -> subprocess.CompletedProcess[str]:
    with anyio.fail_after(HANG):
        done = await anyio.run_process(mjasync_cmd(*args), env=env(), check=False)
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    )


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(f"a lighthouse, study {i}\n" for i in range(count)), encoding="utf-8")
    return path


async def test_enqueue_is_idempotent_and_workers_finish_the_run(redis_url: str, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", 24)
    first = await run("batch", str(prompts), "--redis", redis_url, "--run", "night", "--upscale", "2")
    assert first.returncode == 0, first.stderr
    assert "24 new jobs enqueued" in first.stdout
    again = await run("batch", str(prompts), "--redis", redis_url, "--run", "night", "--upscale", "2")
    assert again.returncode == 0, again.stderr
    assert "0 new jobs enqueued (24 were there already)" in again.stdout

    async with Emulator(speed=0.05) as emulator:
        worker_args = (
            "worker", "--redis", redis_url, "--run", "night", "--until-done",
            "--base-url", emulator.url, "--api-key", EMULATOR_TOKEN,
            "--poll-interval", "0.02", "--concurrency", "6", "--max-in-flight", "8",
        )  # fmt: skip
        results: list[subprocess.CompletedProcess[str]] = []

        async def worker(name: str) -> None:
            results.append(await run(*worker_args, "--name", name))

        async with anyio.create_task_group() as group:
            for name in ("w1", "w2", "w3"):
                group.start_soon(worker, name)
        assert [r.returncode for r in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
        # One task per job: 24 grids (the emulator files follow-ups, which have no prompt, under ""),
        # and one upscale each.
        grids = {prompt: n for prompt, n in emulator.tasks_per_prompt.items() if prompt}
        assert len(grids) == 24 and set(grids.values()) == {1}, grids
        assert emulator.counters["submits"] == 48, emulator.counters

        status = await run("batch", "status", "--redis", redis_url, "--run", "night")
        assert status.returncode == 0, status.stderr
        assert "48/48 ended (48 ok, 0 failed, 0 ambiguous)" in status.stdout

        out = tmp_path / "out"
        collected = await run("batch", "results", "--redis", redis_url, "--run", "night", "--out", str(out))
        assert collected.returncode == 0, collected.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 48 and all(line["ok"] for line in lines)
    assert {line["key"] for line in lines if "/" in line["key"]} == {
        f"{line['key']}/upscale2" for line in lines if "/" not in line["key"]
    }
    assert all(line["prompt"].startswith("a lighthouse") for line in lines)
    saved = sorted(p.name for p in (out / "images").iterdir())
    assert len(saved) == 48 and all(name.endswith(".png") for name in saved)


async def test_status_of_an_unknown_run_and_usage_errors(redis_url: str, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", 2)
    no_run = await run("batch", str(prompts), "--redis", redis_url)
    assert no_run.returncode == 2 and "--run" in no_run.stderr
    both = await run("batch", str(prompts), "--redis", redis_url, "--run", "r", "--out", str(tmp_path / "o"))
    assert both.returncode == 2 and "drop --emulator and --out" in both.stderr
    bad_name = await run("batch", str(prompts), "--redis", redis_url, "--run", "no spaces")
    assert bad_name.returncode == 2 and "run" in bad_name.stderr
    no_key = await run("worker", "--redis", redis_url, "--run", "r")
    assert no_key.returncode == 2 and "no API key" in no_key.stderr


async def test_redis_unreachable_is_said_plainly_and_the_password_never_shown(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", 2)
    url = "redis://:hunter2-very-secret-password@127.0.0.1:9/0"  # port 9 (discard): nothing listens
    done = await run("batch", str(prompts), "--redis", url, "--run", "r")
    assert done.returncode == 4, (done.stdout, done.stderr)
    assert "Redis could not be reached" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr


def test_the_run_keys_live_under_the_account_tag(redis_url: str, tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "prompts.txt", 3)
    done = subprocess.run(
        mjasync_cmd("batch", str(prompts), "--redis", redis_url, "--run", "r", "--account", "team-a"),
        env=env(),
        capture_output=True,
        text=True,
        timeout=HANG,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with redis.Redis.from_url(redis_url) as client:
        keys = {key.decode() for key in client.scan_iter(count=1000)}
    assert keys and all(key.startswith("{mj:team-a}:run:r:") for key in keys), keys
