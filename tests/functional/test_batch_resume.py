"""`mjasync batch` killed with SIGKILL at chosen points, then run again: each key ends once, exactly.

The kill points are exact, never timed: either the batch's test-only hook (`MJASYNC_BATCH_KILL_AT`,
unset outside tests) SIGKILLs the process at one point of one key, or the test SIGKILLs it once the
journal shows a state that cannot change any more. Every subprocess has a bounded timeout.
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp import web

from mjasync.emulator import Emulator
from tests.functional.test_batch_cli import (
    FAST,
    TIMEOUT,
    assert_billed_once,
    assert_each_key_once,
    batch_command,
    batch_env,
    counters,
    emulator,
    journal,
    progress,
    results,
    run_batch,
    started_batch,
    txt_keys,
    wait_for,
    write_prompts,
)


def by_key(out: Path) -> dict[str, dict[str, Any]]:
    """results.jsonl's lines by key (each key must have exactly one)."""
    lines = results(out)
    assert len({line["key"] for line in lines}) == len(lines), lines
    return {line["key"]: line for line in lines}


def write_jobs(path: Path, jobs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


# -- a lost submit among identical prompts ------------------------------------------------------------


def test_a_lost_submit_of_a_prompt_another_key_also_sent_resumes_its_own_task(tmp_path: Path) -> None:
    """Killed between a submit and its task id while another key already holds a task for the same
    prompt: the rerun adopts this key's own task (the other key's is held, so not a match), bills
    nothing twice, and exits 0."""
    prompt = "a twin lighthouse at dusk"
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        base = ("--out", str(out), "--base-url", url, "--no-images", "--concurrency", "1", *FAST)
        # Run 1: job "a" ends with its task.
        first = write_jobs(tmp_path / "a.jsonl", [{"id": "a", "prompt": prompt}])
        done = run_batch(tmp_path, str(first), *base)
        assert done.returncode == 0, done.stderr
        # Run 2: "b" (the same prompt) is sent, and the process dies the moment its task id comes back.
        both = write_jobs(
            tmp_path / "ab.jsonl", [{"id": "a", "prompt": prompt}, {"id": "b", "prompt": prompt}]
        )
        killed = run_batch(tmp_path, str(both), *base, kill_at="answered:b")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert [r["event"] for r in journal(out) if r.get("key") == "b"] == ["submitting"]
        assert counters(url)["tasks_per_prompt"] == {prompt: 2}
        # Run 3: b is looked up, and its own task is the one match left.
        again = run_batch(tmp_path, str(both), *base)
        assert again.returncode == 0, again.stderr
        lines = by_key(out)
        assert set(lines) == {"a", "b"}
        assert lines["a"]["ok"] and lines["b"]["ok"], lines["b"]
        assert lines["a"]["task_id"] != lines["b"]["task_id"]
        b_events = [r["event"] for r in journal(out) if r.get("key") == "b"]
        assert b_events == ["submitting", "accepted", "finished"]  # looked up, never sent again
        assert counters(url)["counters"]["submits"] == 2


# -- a journalled task id the provider does not know --------------------------------------------------


def test_resuming_against_a_fresh_emulator_fails_the_unknown_tasks_and_runs_the_rest(tmp_path: Path) -> None:
    """`--emulator` starts a new emulator each run, which knows none of the journalled task ids: those
    jobs end failed, saying so, after a bounded number of lookups; they free their slots, every other
    job runs, and the exit status says some failed."""
    source, prompts = write_prompts(tmp_path, 4)
    keys = txt_keys(source)
    out = tmp_path / "out"
    common = (str(source), "--out", str(out), "--emulator", "--no-images", "--concurrency", "2", *FAST)
    # Jobs that take ~forever: two are accepted, and nothing else can start until one ends.
    with started_batch(tmp_path, *common, "--emulator-speed", "100000") as proc:
        wait_for(proc, lambda: len(progress(out)[0]) == 2, "two accepted jobs")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=TIMEOUT) == -signal.SIGKILL
    accepted = {r["key"]: r["task_id"] for r in journal(out) if r["event"] == "accepted"}
    assert len(accepted) == 2

    done = run_batch(tmp_path, *common, "--emulator-speed", "0")
    assert done.returncode == 3, done.stderr  # every job ended, some failed
    assert "4/4 jobs ended (2 ok, 2 failed)" in done.stdout
    lines = {line["key"]: line for line in assert_each_key_once(out, keys)}
    for key, task_id in accepted.items():
        line = lines[key]
        assert not line["ok"]
        assert line["task_id"] == task_id
        assert line["error"]["type"] == "TaskNotFoundError"
        assert "does not know the task id the journal recorded" in line["error"]["message"]
    assert all(lines[key]["ok"] for key in keys - set(accepted))
    assert "Traceback" not in done.stderr
    # Ended is final: a third run sends nothing and looks nothing up.
    again = run_batch(tmp_path, *common, "--emulator-speed", "0")
    assert again.returncode == 3, again.stderr
    assert "4/4 jobs ended (2 ok, 2 failed)" in again.stdout
    assert len(prompts) == 4


# -- results.jsonl: killed mid-write, between line and record, cut short ------------------------------


def test_killed_mid_write_of_a_results_line_the_rerun_waits_on_its_task_and_writes_it_once(
    tmp_path: Path,
) -> None:
    """SIGKILL with half of a key's results line written: the rerun cuts the torn half off, waits on the
    key's journalled task (no second submit) and writes its line once."""
    source, prompts = write_prompts(tmp_path, 3)
    keys = sorted(txt_keys(source))
    victim = keys[1]
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        base = (str(source), "--out", str(out), "--base-url", url, "--no-images", *FAST)
        killed = run_batch(tmp_path, *base, kill_at=f"mid-results:{victim}")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert not (out / "results.jsonl").read_bytes().endswith(b"\n")  # torn mid-line
        task_id = next(r["task_id"] for r in journal(out) if r["event"] == "accepted" and r["key"] == victim)
        done = run_batch(tmp_path, *base)
        assert done.returncode == 0, done.stderr
        lines = {line["key"]: line for line in assert_each_key_once(out, set(keys))}
        assert lines[victim]["ok"] and lines[victim]["task_id"] == task_id
        assert_billed_once(url, prompts, upscales=0)


def test_killed_between_a_results_line_and_its_finished_record_the_key_is_not_run_again(
    tmp_path: Path,
) -> None:
    """SIGKILL after a key's line is written but before its finished record: the rerun counts it as
    ended (one line, no second wait or submit) and runs the rest."""
    source, prompts = write_prompts(tmp_path, 3)
    keys = sorted(txt_keys(source))
    victim = keys[0]
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        base = (str(source), "--out", str(out), "--base-url", url, "--no-images", *FAST)
        killed = run_batch(tmp_path, *base, kill_at=f"results:{victim}")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        written = by_key(out)[victim]
        assert not [r for r in journal(out) if r["event"] == "finished" and r["key"] == victim]
        done = run_batch(tmp_path, *base)
        assert done.returncode == 0, done.stderr
        lines = {line["key"]: line for line in assert_each_key_once(out, set(keys))}
        assert lines[victim] == written
        assert_billed_once(url, prompts, upscales=0)


def test_a_results_file_cut_short_gets_every_finished_line_back_from_the_journal(tmp_path: Path) -> None:
    """results.jsonl cut mid-line after a run (its tail lost): the rerun writes the lost lines again,
    exactly as they were, from the journal; nothing is looked up or sent again."""
    source, prompts = write_prompts(tmp_path, 4)
    keys = txt_keys(source)
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        base = (str(source), "--out", str(out), "--base-url", url, "--no-images", *FAST)
        first = run_batch(tmp_path, *base)
        assert first.returncode == 0, first.stderr
        original = by_key(out)
        assert set(original) == keys
        data = (out / "results.jsonl").read_bytes()
        first_line_end = data.index(b"\n") + 1
        (out / "results.jsonl").write_bytes(data[: first_line_end + 7])  # one line, then 7 bytes of the next
        requests_before = counters(url)["counters"]["requests"]
        done = run_batch(tmp_path, *base)
        assert done.returncode == 0, done.stderr
        assert "lost their line; written again from the journal" in done.stderr
        lines = {line["key"]: line for line in assert_each_key_once(out, keys)}
        assert lines == original
        assert counters(url)["counters"]["requests"] == requests_before  # nothing looked up or sent
        assert_billed_once(url, prompts, upscales=0)


# -- an undecodable answer ----------------------------------------------------------------------------

#: A 200 whose JSON nests 5,000 deep (a decoder's recursion limit is lower).
DEEP_JSON = b'{"a":' * 5000 + b"1" + b"}" * 5000
SECRET_KEY = "sk-batch-secret-7f3a9c2e4b1d"


@asynccontextmanager
async def hostile_front(target: str, *, garble_submit: int) -> AsyncIterator[str]:
    """A server on 127.0.0.1 that forwards to `target`, except that its `garble_submit`-th imagine
    submit gets a 200 with `DEEP_JSON` (and never reaches `target`)."""
    submits = 0

    async def forward(request: web.Request) -> web.Response:
        nonlocal submits
        body = await request.read()
        if request.path == "/midjourney/imagine":
            submits += 1
            if submits == garble_submit:
                return web.Response(body=DEEP_JSON, content_type="application/json")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with session.request(
            request.method, target + request.path_qs, data=body, headers=headers
        ) as answer:
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={"content-type": answer.headers.get("content-type", "application/json")},
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    async with aiohttp.ClientSession() as session:
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            yield f"http://127.0.0.1:{port}"
        finally:
            await runner.cleanup()


async def test_one_undecodable_submit_answer_fails_that_job_and_the_batch_goes_on(tmp_path: Path) -> None:
    """Of 20 jobs, only the 5th submit gets a 200 nested 5,000 deep: that job gets a failed line (error
    class and message, no traceback, no key), the 19 others end ok, and the exit status is 3."""
    source, _ = write_prompts(tmp_path, 20)
    out = tmp_path / "out"
    env = batch_env()
    env["MJASYNC_API_KEY"] = SECRET_KEY
    with anyio.fail_after(TIMEOUT * 2):  # a hang detector only
        async with (
            Emulator(tokens=(SECRET_KEY,), speed=0) as emu,
            hostile_front(emu.url, garble_submit=5) as url,
        ):
            command = batch_command(str(source), "--out", str(out), "--base-url", url, "--no-images", *FAST)
            done = await anyio.run_process(command, cwd=tmp_path, env=env, check=False)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert "20/20 jobs ended (19 ok, 1 failed)" in stdout
    lines = assert_each_key_once(out, txt_keys(source))
    (failed,) = [line for line in lines if not line["ok"]]
    # A garbled answer to a submit leaves its fate open (the server got it): looked up, not found,
    # so the job ends ambiguous rather than risk paying twice.
    assert failed["error"]["type"] == "AmbiguousSubmitError"
    assert failed["error"]["message"]
    text = (out / "results.jsonl").read_text() + (out / "journal.ndjson").read_text() + stdout + stderr
    assert SECRET_KEY not in text
