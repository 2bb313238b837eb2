"""`mjasync batch --provider midjourney-proxy` as a user runs it: against an emulator subprocess, killed
with SIGKILL mid-run and run again.

What is shown: a whole batch (grids and their upscales through the proxy's buttons) ends every job once,
and a rerun sends nothing; killed twice with SIGKILL while jobs were accepted but unfinished, a third run
ends every job once, each billed once (the emulator's submits == jobs), each accepted job ending as the
very task it was given; killed in the window after the proxy answered a submit but before the journal
knew its task id, the rerun finds that task by the job's marker (`state`) in the proxy's task listing
and sends nothing again.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mjasync.testing import EMULATOR_TOKEN

from .test_batch_cli import (
    FAST,
    TIMEOUT,
    assert_billed_once,
    assert_each_key_once,
    assert_images,
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

PROVIDER = ("--provider", "midjourney-proxy")


def test_a_proxy_batch_ends_every_job_once_with_images_and_a_rerun_sends_nothing(tmp_path: Path) -> None:
    source, prompts = write_prompts(tmp_path, 4, stem="kite")
    out = tmp_path / "out"
    with emulator(speed=0.3) as url:
        args = (str(source), "--out", str(out), "--base-url", url, *PROVIDER, "--upscale", "2", *FAST)
        done = run_batch(tmp_path, *args, "--concurrency", "3")
        assert done.returncode == 0, done.stderr
        assert "8/8 jobs ended (8 ok, 0 failed)" in done.stdout
        lines = assert_each_key_once(out, txt_keys(source, (2,)))
        assert_images(out, lines)
        assert Counter(line["action"] for line in lines) == {"imagine": 4, "upscale2": 4}
        assert_billed_once(url, prompts, upscales=4)
        assert EMULATOR_TOKEN not in done.stdout + done.stderr
        assert counters(url)["fault_log"] == [], "nothing was faulted: every submit was answered"

        again = run_batch(tmp_path, *args)
        assert again.returncode == 0, again.stderr
        assert "Resuming: 8 of 8 jobs already ended" in again.stderr
        assert results(out) == lines
        assert_billed_once(url, prompts, upscales=4)


def test_sigkill_twice_mid_run_then_a_rerun_ends_every_job_once_each_billed_once(tmp_path: Path) -> None:
    source, prompts = write_prompts(tmp_path, 8, stem="lantern")
    keys = txt_keys(source, (1,))
    out = tmp_path / "out"
    with emulator(speed=1.0) as url:
        args = (
            str(source), "--out", str(out), "--base-url", url, *PROVIDER,
            "--upscale", "1", "--concurrency", "3", *FAST,
        )  # fmt: skip

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
        # submits == jobs: one task per prompt and one per upscale, nothing sent twice.
        assert_billed_once(url, prompts, upscales=8)
        assert counters(url)["counters"]["submits"] == len(keys)
        assert len({line["task_id"] for line in lines}) == len(keys)
        assert all(line["task_id"] == task_ids[line["key"]] for line in lines if line["key"] in task_ids)


def test_a_kill_after_the_proxy_answered_is_found_by_its_marker_not_sent_again(tmp_path: Path) -> None:
    """SIGKILLed between the submit's answer and journalling its task id: the rerun looks the task up in
    the proxy's listing by the job's `state` marker and resumes it."""
    source = tmp_path / "jobs.jsonl"
    source.write_text(
        '{"id": "answered", "prompt": "an answered submit"}\n{"id": "other", "prompt": "a calm sea"}\n'
    )
    out = tmp_path / "out"
    with emulator(speed=0.2) as url:
        args = (str(source), "--out", str(out), "--base-url", url, *PROVIDER, *FAST)
        killed = run_batch(tmp_path, *args, kill_at="answered:answered")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert counters(url)["tasks_per_prompt"].get("an answered submit") == 1, "the task was made"
        events = [r["event"] for r in journal(out) if r.get("key") == "answered"]
        assert events == ["submitting"], "the journal never learned the task id"

        done = run_batch(tmp_path, *args)
        assert done.returncode == 0, done.stderr + done.stdout
        lines = {line["key"]: line for line in assert_each_key_once(out, {"answered", "other"})}
        assert lines["answered"]["ok"] and lines["other"]["ok"]
        assert_billed_once(url, ["an answered submit", "a calm sea"], upscales=0)
        answered = [r for r in journal(out) if r.get("key") == "answered"]
        # Looked up, not sent: the rerun adds no second "submitting".
        assert [r["event"] for r in answered] == ["submitting", "accepted", "finished"]
        assert answered[1]["task_id"] == lines["answered"]["task_id"]
