"""`mjasync batch` as a user runs it: subprocesses against an emulator subprocess, killed and restarted.

Every subprocess has a bounded timeout and is killed if a test fails while it runs; the emulator binds
127.0.0.1 only. "No duplicate submits" is read from the emulator's own counters.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from mjasync.cli._batch import InputError, load_jobs
from mjasync.testing import EMULATOR_TOKEN

#: Seconds any one subprocess may run (or take to stop) before it is killed.
TIMEOUT = 60
READY_PREFIX = "mjasync emulator listening on "
#: Fast first polls, so jobs end soon after the emulator finishes them.
FAST = ("--poll-interval", "0.2")


# -- helpers ------------------------------------------------------------------------------------------


@contextmanager
def emulator(speed: float = 1.0) -> Iterator[str]:
    """Run `python -m mjasync.emulator --port 0` in a subprocess; yield its URL from the readiness line."""
    command = [sys.executable, "-m", "mjasync.emulator", "--port", "0", "--speed", str(speed)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the emulator printed no readiness line within 30 s"
            line = proc.stdout.readline()
            assert line.startswith(READY_PREFIX + "http://127.0.0.1:"), line
            yield line.removeprefix(READY_PREFIX).strip()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()


def counters(url: str) -> dict[str, Any]:
    """The emulator's `GET /_emulator/counters` body (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/_emulator/counters", timeout=10) as response:
        return dict(json.loads(response.read()))


def batch_command(*args: str) -> list[str]:
    """`python -W error -m mjasync batch ARGS`."""
    return [sys.executable, "-W", "error", "-m", "mjasync", "batch", *args]


def batch_env(kill_at: str | None = None) -> dict[str, str]:
    """The environment a batch subprocess gets: the emulator's token as the API key, no proxies.

    `kill_at` ("<point>:<key>") arms the batch's test-only hook: it SIGKILLs itself at that point.
    """
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("MJASYNC_BASE_URL", None)
    env.pop("MJASYNC_BATCH_KILL_AT", None)
    env["MJASYNC_API_KEY"] = EMULATOR_TOKEN
    env["NO_PROXY"] = "127.0.0.1"
    if kill_at is not None:
        env["MJASYNC_BATCH_KILL_AT"] = kill_at
    return env


def run_batch(cwd: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a batch to its end, or to the SIGKILL `kill_at` asks for (killed if it outlives TIMEOUT)."""
    return subprocess.run(
        batch_command(*args),
        cwd=cwd,
        env=batch_env(kill_at),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@contextmanager
def started_batch(cwd: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Start a batch in the background (output to files, so no pipe can fill up); kill it if still running."""
    stdout, stderr = (cwd / "batch.stdout").open("w"), (cwd / "batch.stderr").open("w")
    with (
        stdout,
        stderr,
        subprocess.Popen(
            batch_command(*args), cwd=cwd, env=batch_env(), stdout=stdout, stderr=stderr, text=True
        ) as proc,
    ):
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=TIMEOUT)


def journal(out: Path) -> list[dict[str, Any]]:
    """The journal's complete lines (a torn last one left out, as the command does)."""
    path = out / "journal.ndjson"
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def progress(out: Path) -> tuple[set[str], set[str]]:
    """Keys the journal shows accepted, and keys it shows finished."""
    records = journal(out)
    accepted = {r["key"] for r in records if r["event"] == "accepted"}
    finished = {r["key"] for r in records if r["event"] == "finished"}
    return accepted, finished


def wait_for(proc: subprocess.Popen[str], condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds (bounded); fail if the batch exits first."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert proc.poll() is None, f"the batch exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {TIMEOUT} s"
        time.sleep(0.01)


def results(out: Path) -> list[dict[str, Any]]:
    """Every line of results.jsonl (each must be complete JSON)."""
    text = (out / "results.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def assert_each_key_once(out: Path, expected: set[str]) -> list[dict[str, Any]]:
    """results.jsonl has exactly one line per expected key and nothing else; return its lines."""
    lines = results(out)
    counts = Counter(line["key"] for line in lines)
    assert set(counts) == expected
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    return lines


def assert_images(out: Path, lines: list[dict[str, Any]]) -> None:
    """Every ok line names images that exist under --out and open as PNGs."""
    for line in lines:
        assert line["ok"], line
        assert line["images"], line
        for name in line["images"]:
            with Image.open(out / name) as image:
                assert image.format == "PNG"
                image.verify()
    assert not list((out / "images").glob("*.part"))


def write_prompts(folder: Path, count: int, stem: str = "prompt") -> tuple[Path, list[str]]:
    """A prompts.txt with `count` distinct prompts, a comment and a blank line; return it and the prompts."""
    prompts = [f"a {stem} of harbour number {i}" for i in range(count)]
    path = folder / "prompts.txt"
    path.write_text("# my batch\n\n" + "\n".join(prompts) + "\n")
    return path, prompts


def txt_keys(path: Path, upscale: tuple[int, ...] = ()) -> set[str]:
    """The unit keys the command gives a .txt input: each grid, plus `<key>/upscaleN`."""
    jobs = load_jobs(path, upscale=upscale)
    return {job.key for job in jobs} | {f"{job.key}/upscale{n}" for job in jobs for n in upscale}


def assert_billed_once(url: str, prompts: list[str], upscales: int) -> None:
    """The emulator made one task per prompt and per upscale, and no other submit."""
    seen = counters(url)
    assert seen["counters"]["submits"] == len(prompts) + upscales
    per_prompt = seen["tasks_per_prompt"]
    assert {p: per_prompt.get(p) for p in prompts} == dict.fromkeys(prompts, 1)
    assert per_prompt.get("", 0) == upscales  # follow-up actions carry no prompt


# -- a whole run --------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["poll", "stream"])
def test_a_batch_ends_every_job_once_with_images_and_a_rerun_sends_nothing(tmp_path: Path, via: str) -> None:
    """Every prompt and upscale gets one ok line and its PNG; running the finished batch again submits nothing."""
    source, prompts = write_prompts(tmp_path, 5)
    out = tmp_path / "out"
    with emulator(speed=0.3) as url:
        args = (str(source), "--out", str(out), "--base-url", url, "--upscale", "2,4", "--via", via, *FAST)
        done = run_batch(tmp_path, *args, "--concurrency", "3")
        assert done.returncode == 0, done.stderr
        assert "15/15 jobs ended (15 ok, 0 failed)" in done.stdout
        lines = assert_each_key_once(out, txt_keys(source, (2, 4)))
        assert_images(out, lines)
        assert {line["prompt"] for line in lines} == set(prompts)
        assert Counter(line["action"] for line in lines) == {"imagine": 5, "upscale2": 5, "upscale4": 5}
        assert_billed_once(url, prompts, upscales=10)
        assert EMULATOR_TOKEN not in done.stdout + done.stderr

        again = run_batch(tmp_path, *args)
        assert again.returncode == 0, again.stderr
        assert "Resuming: 15 of 15 jobs already ended" in again.stderr
        assert results(out) == lines
        assert_billed_once(url, prompts, upscales=10)


def test_jsonl_jobs_keep_their_ids_params_and_own_upscales(tmp_path: Path) -> None:
    """A .jsonl job's id is its key, its params reach the prompt, and its `upscale` overrides --upscale."""
    source = tmp_path / "jobs.jsonl"
    rows = [
        {"id": "wide-fox", "prompt": "a red fox", "params": {"aspect_ratio": "16:9", "stylize": 50}},
        {"prompt": "a blue whale", "mode": "relax", "upscale": []},
        {"id": "owl", "prompt": "an owl", "upscale": [3]},
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url, "--upscale", "1", *FAST)
        assert done.returncode == 0, done.stderr
        whale = load_jobs(source)[1].key
        lines = assert_each_key_once(out, {"wide-fox", "wide-fox/upscale1", whale, "owl", "owl/upscale3"})
        assert_images(out, lines)
        by_key = {line["key"]: line for line in lines}
        assert by_key["wide-fox"]["prompt"] == "a red fox"
        # Images are named by the job's number in the file and its prompt, whatever its key.
        assert (out / "images" / "001-a-red-fox.upscale1.png").exists()
        assert (out / "images" / "003-an-owl.upscale3.png").exists()
        assert by_key["owl/upscale3"]["images"] == ["images/003-an-owl.upscale3.png"]
        prompts = counters(url)["tasks_per_prompt"]
        assert prompts["a red fox --ar 16:9 --s 50"] == 1
        assert prompts["an owl"] == 1


def test_a_failed_job_ends_with_its_error_and_its_upscales_are_skipped(tmp_path: Path) -> None:
    """A moderated prompt gets an error line (type, code, status); its upscales a Skipped line, counted as
    skipped rather than failed; exit 3."""
    source = tmp_path / "prompts.txt"
    source.write_text("a calm lake\nsome gore here\n")
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url, "--upscale", "1", *FAST)
        assert done.returncode == 3, done.stderr  # every job ended, some failed
        assert "4/4 jobs ended (2 ok, 1 failed, 1 skipped)" in done.stdout
        lines = assert_each_key_once(out, txt_keys(source, (1,)))
        failed = {line["key"]: line for line in lines if not line["ok"]}
        gore = load_jobs(source)[1].key
        assert set(failed) == {gore, f"{gore}/upscale1"}
        assert failed[gore]["error"]["type"] == "ModerationError"
        assert failed[gore]["error"]["status"] == 403
        assert failed[gore]["error"]["code"] == "forbidden"
        assert failed[f"{gore}/upscale1"]["error"]["type"] == "Skipped"
        assert counters(url)["counters"]["submits"] == 2  # a grid and its upscale; moderation makes no task


def test_the_emulator_flag_runs_a_dry_run_and_prints_its_url(tmp_path: Path) -> None:
    """`--emulator` needs no key or URL: it prints the embedded emulator's URL and ends every job."""
    source, _ = write_prompts(tmp_path, 2)
    env = batch_env()
    env.pop("MJASYNC_API_KEY")
    done = subprocess.run(
        batch_command(
            str(source), "--out", "out", "--emulator", "--emulator-speed", "0", "--no-images", *FAST
        ),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Embedded emulator on http://127.0.0.1:" in done.stderr
    lines = assert_each_key_once(tmp_path / "out", txt_keys(source))
    assert all(line["ok"] and line["images"] == [] for line in lines)
    assert not (tmp_path / "out" / "images").exists()


# -- killed and restarted -----------------------------------------------------------------------------


def test_sigkill_twice_mid_run_then_a_rerun_finishes_with_no_duplicate_submit(tmp_path: Path) -> None:
    """Killed with SIGKILL twice (jobs accepted, not finished), a third run ends every job, each billed once."""
    source, prompts = write_prompts(tmp_path, 8)
    keys = txt_keys(source, (1,))
    out = tmp_path / "out"
    with emulator(speed=1.0) as url:
        args = (
            str(source),
            "--out",
            str(out),
            "--base-url",
            url,
            "--upscale",
            "1",
            "--concurrency",
            "3",
            *FAST,
        )

        def killed_when(condition: Callable[[set[str], set[str]], bool], what: str) -> None:
            with started_batch(tmp_path, *args) as proc:
                wait_for(proc, lambda: condition(*progress(out)), what)
                proc.kill()
                proc.wait(timeout=TIMEOUT)
                assert proc.returncode == -signal.SIGKILL

        killed_when(lambda acc, fin: len(acc - fin) >= 2 and not fin, "two accepted jobs")
        accepted, finished = progress(out)
        assert accepted - finished, "the kill left no accepted-but-unfinished job"
        killed_when(lambda acc, fin: len(fin) >= 6 and len(acc - fin) >= 1, "six finished jobs")
        accepted, finished = progress(out)
        assert finished < keys
        assert accepted - finished
        task_ids = {r["key"]: r["task_id"] for r in journal(out) if r["event"] == "accepted"}

        done = run_batch(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        assert f"{len(keys)}/{len(keys)} jobs ended ({len(keys)} ok" in done.stdout
        lines = assert_each_key_once(out, keys)
        assert_images(out, lines)
        assert_billed_once(url, prompts, upscales=8)
        # Every unit got its own task, and one accepted before the kill ended as that very task.
        assert len({line["task_id"] for line in lines}) == len(keys)
        assert all(line["task_id"] == task_ids[line["key"]] for line in lines if line["key"] in task_ids)


def test_sigint_stops_cleanly_with_130_and_a_rerun_resumes_without_resubmitting(tmp_path: Path) -> None:
    """Ctrl-C exits 130 saying how many were accepted and that a rerun resumes; the rerun bills nothing twice."""
    source, prompts = write_prompts(tmp_path, 6, stem="sketch")
    keys = txt_keys(source, (3,))
    out = tmp_path / "out"
    with emulator(speed=1.0) as url:
        args = (
            str(source),
            "--out",
            str(out),
            "--base-url",
            url,
            "--upscale",
            "3",
            "--concurrency",
            "4",
            *FAST,
        )
        with started_batch(tmp_path, *args) as proc:
            wait_for(proc, lambda: len(progress(out)[0] - progress(out)[1]) >= 3, "three accepted jobs")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=TIMEOUT) == 130
        stderr = (tmp_path / "batch.stderr").read_text()
        assert "Interrupted after" in stderr
        assert "accepted and not finished" in stderr
        assert "run the same command again to resume" in stderr
        assert "Traceback" not in stderr
        accepted, finished = progress(out)
        assert accepted - finished
        assert not list((out / "images").glob("*.part"))  # cancelled downloads leave nothing behind

        done = run_batch(tmp_path, *args)
        assert done.returncode == 0, done.stderr
        lines = assert_each_key_once(out, keys)
        assert_images(out, lines)
        assert_billed_once(url, prompts, upscales=6)


# -- the window between sending and learning the task id ----------------------------------------------


async def raw_submit(url: str, prompt: str) -> str:
    """Submit an imagine straight to the emulator, as a killed batch would have; return its task id."""
    body = {"action": "generate", "prompt": prompt, "async": True}
    headers = {"authorization": f"Bearer {EMULATOR_TOKEN}", "accept": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/midjourney/imagine", json=body, headers=headers) as response:
            assert response.status == 200
            return str((await response.json())["task_id"])


def write_journal(out: Path, records: list[dict[str, Any]], tail: bytes = b"") -> None:
    """A journal of `records` (and an optional torn last line)."""
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (out / "journal.ndjson").write_bytes(text.encode() + tail)


def test_a_submit_with_no_task_id_written_is_looked_up_not_sent_again(tmp_path: Path) -> None:
    """Of two keys journalled only as submitting, the one that reached the provider is resumed; the other is sent once."""
    source = tmp_path / "jobs.jsonl"
    source.write_text(
        '{"id": "reached", "prompt": "a reached submit"}\n{"id": "lost", "prompt": "a lost submit"}\n'
    )
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        since = time.time() - 1
        task_id = asyncio.run(raw_submit(url, "a reached submit"))
        write_journal(
            out,
            [
                {"event": "submitting", "key": "reached", "at": since},
                {"event": "submitting", "key": "lost", "at": since},
            ],
        )
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url, *FAST)
        assert done.returncode == 0, done.stderr
        lines = {line["key"]: line for line in assert_each_key_once(out, {"reached", "lost"})}
        assert lines["reached"]["ok"]
        assert lines["reached"]["task_id"] == task_id
        assert lines["lost"]["ok"]
        assert_billed_once(url, ["a reached submit", "a lost submit"], upscales=0)
        reached = [r for r in journal(out) if r.get("key") == "reached"]
        assert [r["event"] for r in reached] == ["submitting", "accepted", "finished"]  # looked up, not sent
        assert reached[1]["task_id"] == task_id


def test_an_ambiguous_lookup_ends_the_job_with_that_error_rather_than_paying_twice(tmp_path: Path) -> None:
    """Two identical earlier submits match the lookup: the job ends with AmbiguousSubmitError, nothing is sent."""
    source = tmp_path / "jobs.jsonl"
    source.write_text('{"id": "twice", "prompt": "a doubled submit"}\n')
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        since = time.time() - 1

        async def submit_twice() -> None:
            await raw_submit(url, "a doubled submit")
            await raw_submit(url, "a doubled submit")

        asyncio.run(submit_twice())
        write_journal(out, [{"event": "submitting", "key": "twice", "at": since}])
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url, *FAST)
        assert done.returncode == 3, done.stderr  # it ended, failed
        (line,) = assert_each_key_once(out, {"twice"})
        assert not line["ok"]
        assert line["error"]["type"] == "AmbiguousSubmitError"
        assert counters(url)["counters"]["submits"] == 2  # only the two made before the run


def test_torn_last_lines_of_journal_and_results_are_dropped_and_every_job_ends_once(tmp_path: Path) -> None:
    """A journal and a results file each ending in half a line (a kill mid-write) are repaired; each key ends once."""
    source, prompts = write_prompts(tmp_path, 3)
    keys = sorted(txt_keys(source))
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        write_journal(
            out,
            [{"event": "run", "at": time.time(), "pid": 1, "input": "prompts.txt"}],
            tail=b'{"event": "accepted", "key": "' + keys[0].encode() + b'", "task_',
        )
        (out / "results.jsonl").write_bytes(b'{"key": "' + keys[1].encode() + b'", "ok": tr')
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url, *FAST)
        assert done.returncode == 0, done.stderr
        assert_each_key_once(out, set(keys))
        assert all("event" in record for record in journal(out))
        assert (out / "journal.ndjson").read_bytes().endswith(b"\n")
        assert_billed_once(url, prompts, upscales=0)


def test_a_key_with_a_result_line_but_no_finished_record_is_not_run_again(tmp_path: Path) -> None:
    """Killed between the results line and its finished record: the rerun counts the key as ended."""
    source, prompts = write_prompts(tmp_path, 2)
    first, second = sorted(txt_keys(source), key=lambda k: int(k[1:].split("-")[0]))
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        write_journal(out, [{"event": "submitting", "key": first, "at": time.time()}])
        line = {
            "key": first,
            "ok": True,
            "job": first,
            "action": "imagine",
            "prompt": prompts[0],
            "task_id": "t-1",
        }
        (out / "results.jsonl").write_text(json.dumps(line) + "\n")
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url, *FAST)
        assert done.returncode == 0, done.stderr
        assert_each_key_once(out, {first, second})
        assert counters(url)["tasks_per_prompt"] == {prompts[1]: 1}


# -- refused before anything is sent ------------------------------------------------------------------


BAD_INPUTS = {
    "bad-json": ("jobs.jsonl", '{"prompt": "a cat"}\n{"prompt": "a dog"}\n{"prompt": \n', 3, "truncated"),
    "unknown-field": ("jobs.jsonl", '{"prompt": "a cat", "colour": "red"}\n', 1, "unknown field `colour`"),
    "wrong-type": ("jobs.jsonl", '\n{"prompt": "ok"}\n{"prompt": 7}\n', 3, "Expected `str`"),
    "params-range": ("jobs.jsonl", '{"prompt": "a cat", "params": {"stylize": 5000}}\n', 1, "stylize"),
    "bad-upscale": ("jobs.jsonl", '{"prompt": "a cat", "upscale": [5]}\n', 1, "upscale quadrants are 1 to 4"),
    "duplicate-id": ("jobs.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', 2, "line 1"),
    "id-with-slash": ("jobs.jsonl", '{"id": "a/b", "prompt": "x"}\n', 1, "id must be"),
    "bad-image-url": ("jobs.jsonl", '{"prompt": "x", "image_urls": ["not a url"]}\n', 1, "image"),
    "bad-mode": ("jobs.jsonl", '{"prompt": "x", "mode": "ludicrous"}\n', 1, "mode"),
    "flag-clash": (
        "jobs.jsonl",
        '{"prompt": "fine"}\n{"prompt": "a cat --ar 1:1", "params": {"aspect_ratio": "16:9"}}\n',
        2,
        "--ar",
    ),
    # A 1 MB prompt would be sent and paid for; it is refused by its length, and not echoed.
    "huge-prompt": ("prompts.txt", "a cat\n" + "x" * 1_000_000 + "\n", 2, "--max-prompt-chars"),
    "huge-jsonl-prompt": (
        "jobs.jsonl",
        json.dumps({"prompt": "y" * 1_000_000}) + "\n",
        1,
        "1000000 characters",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_line_and_sends_nothing(tmp_path: Path, case: str) -> None:
    """A bad line is exit 2 with `file:line:` on stderr, before any request or output folder."""
    name, text, line, message = BAD_INPUTS[case]
    source = tmp_path / name
    source.write_text(text)
    out = tmp_path / "out"
    with emulator(speed=0) as url:
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert f"{source}:{line}:" in done.stderr
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr) < 2000  # the line is named, not echoed
        assert counters(url)["counters"]["requests"] == 0
    assert not out.exists()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    """A bad --upscale, an empty, missing, misnamed or non-UTF-8 file, and a missing key: each exit 2 with a message."""
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    csv = tmp_path / "prompts.csv"
    csv.write_text("a cat\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("un caf\u00e9\n".encode("latin-1"))
    cases = [
        ((str(prompts), "--out", "o", "--upscale", "5"), "quadrants 1-4"),
        ((str(empty), "--out", "o"), "no jobs in it"),
        ((str(csv), "--out", "o"), "name it .txt"),
        ((str(tmp_path / "missing.txt"), "--out", "o"), "no such file"),
        ((str(latin), "--out", "o"), "not UTF-8 text"),
    ]
    for args, message in cases:
        done = run_batch(tmp_path, *args)
        assert done.returncode == 2, args
        assert message in done.stderr, (args, done.stderr)
    env = batch_env()
    env.pop("MJASYNC_API_KEY")
    env.pop("ACEDATACLOUD_API_TOKEN", None)
    done = subprocess.run(
        batch_command(str(prompts), "--out", "o", "--base-url", "http://127.0.0.1:9"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert "no API key: pass --api-key or set MJASYNC_API_KEY" in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_corrupt_journal_line_is_exit_2_naming_it_and_sends_nothing(tmp_path: Path) -> None:
    """A broken line before the journal's last is refused (exit 2, file:line) rather than guessed around."""
    source, _ = write_prompts(tmp_path, 2)
    out = tmp_path / "out"
    write_journal(out, [{"event": "run", "at": 1.0, "pid": 1}])
    with (out / "journal.ndjson").open("a") as journal_file:
        journal_file.write("{not json}\n" + json.dumps({"event": "run", "at": 2.0, "pid": 2}) + "\n")
    with emulator(speed=0) as url:
        done = run_batch(tmp_path, str(source), "--out", str(out), "--base-url", url)
        assert done.returncode == 2
        assert f"{out / 'journal.ndjson'}:2: unreadable line" in done.stderr
        assert "Traceback" not in done.stderr
        assert counters(url)["counters"]["requests"] == 0


def test_load_jobs_keys_are_stable_and_follow_the_line(tmp_path: Path) -> None:
    """Unnamed jobs are keyed by line and content: the same file gives the same keys, another line another key."""
    source = tmp_path / "prompts.txt"
    source.write_text("a cat\n\na cat\n")
    first = load_jobs(source)
    assert [job.line for job in first] == [1, 3]
    assert [job.key for job in first] == [job.key for job in load_jobs(source)]
    assert first[0].key != first[1].key
    assert first[0].key.startswith("L1-")
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"prompt": "a cat", "upscale": [1]}\n')
    jsonl_again = tmp_path / "again.jsonl"
    jsonl_again.write_text('{"upscale": [2, 3],   "prompt": "a cat"}\n')
    # Follow-ups and spacing do not move a job's key.
    assert load_jobs(jsonl)[0].key == load_jobs(jsonl_again)[0].key
    with pytest.raises(InputError, match=r"jobs\.jsonl:1:"):
        jsonl.write_text("[1, 2]\n")
        load_jobs(jsonl)


def test_goapi_batch_then_upscales_added_on_a_rerun_name_their_grids_by_task_id(tmp_path: Path) -> None:
    """`--provider goapi`: every grid ends ok once; upscales added by a later run find their parent grid
    through the journal (by GoAPI's task id, not the image_id) and are billed once each."""
    source, prompts = write_prompts(tmp_path, 4)
    out = tmp_path / "out"
    with emulator(speed=0.2) as url:
        base = (str(source), "--out", str(out), "--base-url", url, "--provider", "goapi", *FAST)
        done = run_batch(tmp_path, *base)
        assert done.returncode == 0, done.stderr
        assert "4/4 jobs ended (4 ok, 0 failed)" in done.stdout
        grids = {line["key"]: line for line in assert_each_key_once(out, txt_keys(source))}

        more = run_batch(tmp_path, *base, "--upscale", "3")
        assert more.returncode == 0, more.stderr
        assert "8/8 jobs ended (8 ok, 0 failed)" in more.stdout
        lines = assert_each_key_once(out, txt_keys(source, (3,)))
        assert_images(out, lines)
        assert Counter(line["action"] for line in lines) == {"imagine": 4, "upscale3": 4}
        assert_billed_once(url, prompts, upscales=4)
        assert EMULATOR_TOKEN not in done.stdout + done.stderr + more.stdout + more.stderr
        # Each upscale's result names its own task, distinct from its grid's.
        for line in lines:
            if line["action"] == "upscale3":
                grid = grids[line["key"].removesuffix("/upscale3")]
                assert line["task_id"] and line["task_id"] != grid["task_id"]
