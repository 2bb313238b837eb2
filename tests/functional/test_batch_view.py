"""`mjasync batch` as people watch and read it: prompt-labelled bars with a pace, the summary table,
`--dry-run`'s count, the images' names and the `index.html` contact sheet.

The screen is checked once in a real pseudo-terminal (rich draws there as on a user's terminal); the
rest runs in-process or as a subprocess with its output captured. Every subprocess is bounded in time
and killed if the test fails while it runs.
"""

from __future__ import annotations

import fcntl
import html.parser
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from mjasync._models.errors import ErrorInfo
from mjasync._providers import PROVIDERS, api_key_env
from mjasync.cli import main
from mjasync.cli._batch_input import InputJob, Unit, image_stem, load_jobs, number_width, prompt_slug
from mjasync.cli._batch_report import write_contact_sheet
from mjasync.cli._batch_view import BatchView, format_duration
from mjasync.cli._journal import ResultLine
from mjasync.emulator import Emulator, FaultPlan
from mjasync.testing import EMULATOR_TOKEN

from .test_batch_cli import FAST, TIMEOUT, batch_command, batch_env, results, write_prompts

SAFE_NAME = re.compile(r"[0-9]{3,}-[a-z0-9]+(?:-[a-z0-9]+)*")


# -- names ----------------------------------------------------------------------------------------------


def test_image_names_are_numbered_prompt_slugs_that_sort_in_input_order(tmp_path: Path) -> None:
    """Twelve prompts give 001-... to 012-... (so L10 no longer sorts before L2), unique even for equal
    prompts, in safe characters whatever the prompt holds, and the same on every read of the file."""
    prompts = [f"prompt number {i}" for i in range(1, 10)] + [
        "Café crème at dawn --ar 16:9 --stylize 50",
        "https://example.com/ref.png <script>alert('x')</script> a fox/../../etc",
        "Café crème at dawn --ar 16:9 --stylize 50",
    ]
    source = tmp_path / "prompts.txt"
    source.write_text("# a comment\n\n" + "\n".join(prompts) + "\n")
    jobs = load_jobs(source)
    width = number_width(len(jobs))
    stems = [image_stem(job, width) for job in jobs]
    assert stems[:2] == ["001-prompt-number-1", "002-prompt-number-2"]
    assert stems[9] == "010-cafe-creme-at-dawn"  # accents dropped, --flags left out
    assert stems[10] == "011-script-alert-x-script-a-fox-etc"  # the URL left out; no / or .. survives
    assert stems[11] == "012-cafe-creme-at-dawn"  # the same prompt again: its own number
    assert sorted(stems) == stems
    assert len(set(stems)) == len(stems)
    assert all(SAFE_NAME.fullmatch(stem) for stem in stems), stems
    assert [image_stem(job, width) for job in load_jobs(source)] == stems
    # Long prompts are cut at a word boundary; a prompt with no Latin word still gets a name.
    assert len(prompt_slug("word " * 100)) <= 48
    assert prompt_slug("一只猫 https://x.y/z.png") == "prompt"
    assert number_width(999) == 3 and number_width(1000) == 4


# -- the pace -------------------------------------------------------------------------------------------


def test_the_pace_counts_this_runs_endings_on_an_injected_clock() -> None:
    """jobs/min and the ETA come from what ended in this run over its time: units a resumed run found
    ended, and upscales skipped because their grid failed, do not count as work done."""
    now = [100.0]
    view = BatchView(total=12, done=4, ok=4, failed=0, live=False, clock=lambda: now[0])
    job = InputJob(key="L1-abc", line=1, prompt="a red fox in the snow at dawn", number=7)
    assert view.pace() == "-- jobs/min  ETA --:--"
    view.ended(Unit(job), ok=True, detail="task t1")
    assert view.jobs_per_minute() is None  # too early to tell
    now[0] += 30.0
    view.ended(Unit(job, 1), ok=True, detail="task t2")
    view.ended(Unit(job, 2), ok=False, detail="Skipped: its grid failed", skipped=True)
    assert view.jobs_per_minute() == pytest.approx(4.0)  # 2 units in 30 s; the skip is not work
    assert view.eta() == pytest.approx(75.0)  # 5 units left at 4 a minute
    assert view.pace() == "4.0 jobs/min  ETA 1:15"
    assert (view.ok, view.failed, view.skipped, view.done) == (6, 0, 1, 7)
    assert view.label(Unit(job, 2), 24) == "007 U2 a red fox in the…"
    assert format_duration(3725) == "1:02:05"


# -- the contact sheet ----------------------------------------------------------------------------------


class _Page(html.parser.HTMLParser):
    """The tags, links and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.links += [value or "" for name, value in attrs if name in ("src", "href")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_contact_sheet_shows_prompts_as_text_and_links_images_relatively(tmp_path: Path) -> None:
    """A prompt holding `<script>` is shown as text, never run; images are linked as `images/...`; each
    card names its prompt and task id; a failure shows its reason; the cards follow the input's order."""
    hostile = "<script>alert('x')</script> & \"quotes\" <img src=x onerror=alert(1)>"
    lines = [
        ResultLine(key="b", ok=True, job="b", line=2, action="imagine", prompt="a calm lake", task_id="t-b",
                   images=["images/002-a-calm-lake.png"]),
        ResultLine(key="a", ok=True, job="a", line=1, action="imagine", prompt=hostile, task_id="t-a",
                   images=["images/001-script-alert-x.png", "images/001-script-alert-x.1.png"]),
        ResultLine(key="a/upscale2", ok=True, job="a", line=1, action="upscale2", prompt=hostile,
                   task_id="t-a2", images=["images/001-script-alert-x.upscale2.png"]),
        ResultLine(key="c", ok=False, job="c", line=3, action="imagine", prompt="some gore",
                   error=ErrorInfo(type="ModerationError", message="<b>refused</b>", code="forbidden",
                                   status=403)),
    ]  # fmt: skip
    path = write_contact_sheet(tmp_path, lines, order={"a": 1, "b": 2, "c": 3}, title="mjasync batch: <x>")
    assert path == tmp_path / "index.html"
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    assert "script" not in page.tags and page.tags.count("img") == 3  # the hostile <img> is text too
    text = "".join(page.text)
    assert hostile in text
    assert "<b>refused</b>" in text and "ModerationError (403 forbidden)" in text
    assert all(task in text for task in ("t-a", "t-a2", "t-b"))
    images = [link for link in page.links if link.endswith(".png")]
    assert images and all(link.startswith("images/") and "://" not in link for link in images)
    order = [text.index(s) for s in ("t-a ", "t-a2", "t-b", "some gore")]
    assert order == sorted(order)
    assert not list(tmp_path.glob("*.part"))


# -- --dry-run ------------------------------------------------------------------------------------------


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key anywhere in the environment."""
    for name in {"MJASYNC_API_KEY", "MJASYNC_BASE_URL"} | {
        env for provider in PROVIDERS.values() for env in api_key_env(provider)
    }:
        monkeypatch.delenv(name, raising=False)


def _jobs_file(folder: Path) -> Path:
    source = folder / "jobs.jsonl"
    rows: list[dict[str, Any]] = [
        {"id": "fox", "prompt": "a red fox", "mode": "fast", "upscale": [1, 2]},
        {"id": "whale", "prompt": "a blue whale --turbo"},
        {"id": "owl", "prompt": "an owl"},
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return source


def test_dry_run_counts_submits_and_goapi_quota_offline_with_no_key(
    tmp_path: Path, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No key, an address nothing listens on: the count of grids (by mode), upscales and GoAPI's quota
    is printed, exit 0, and no output folder is made."""
    source = _jobs_file(tmp_path)
    out = tmp_path / "out"
    args = [str(source), "--out", str(out), "--upscale", "1", "--base-url", "http://127.0.0.1:9"]
    assert main(["batch", *args, "--provider", "goapi", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "nothing was sent" in said
    assert "paid submits: 7 (3 grids, 4 upscales)" in said
    assert "grids by mode: fast 1, turbo 1, mode not set 1" in said
    # fast 9, turbo 20, relax (GoAPI's default) 3, four upscales 3 each.
    assert (
        "1 × 9 (imagine, fast) + 1 × 3 (imagine, relax) + 1 × 20 (imagine, turbo) + 4 × 3 (upscale)" in said
    )
    assert "= 44 GoAPI MJ quota, by GoAPI's pricing page" in said
    assert "46 if the relax grids run at peak hours" in said
    assert not out.exists()

    assert main(["batch", *args, "--dry-run"]) == 0  # AceData: counts only, no price invented
    said = capsys.readouterr().out
    assert (
        "paid submits: 7" in said
        and "quota: 7 tasks; AceData Cloud bills each task by its own price list" in said
    )
    assert not out.exists()


def test_dry_run_of_a_resumed_run_counts_only_what_would_be_sent_and_writes_nothing(
    tmp_path: Path, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --out holding a run: ended units are skipped, accepted ones cost nothing more, one sent with
    no task id is counted as "up to"; the folder is left exactly as it was (no lock, no journal line)."""
    source = _jobs_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    now = time.time()
    journal = [
        {"event": "submitting", "key": "fox", "at": now},
        {"event": "accepted", "key": "fox", "task_id": "t-fox", "at": now},
        {"event": "submitting", "key": "whale", "at": now},
        {"event": "accepted", "key": "whale", "task_id": "t-whale", "at": now},
        {"event": "submitting", "key": "owl", "at": now},
    ]
    (out / "journal.ndjson").write_text("".join(json.dumps(r) + "\n" for r in journal))
    (out / "results.jsonl").write_text(json.dumps({"key": "fox", "ok": True, "task_id": "t-fox"}) + "\n")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    args = [str(source), "--out", str(out), "--upscale", "1", "--provider", "goapi", "--dry-run"]
    assert main(["batch", *args]) == 0
    said = capsys.readouterr().out
    # fox's two upscales, whale's and owl's one each; owl's grid is looked up first.
    assert "paid submits: 5 (0 grids, 4 upscales, up to 1 sent earlier with no task id" in said
    assert f"already in {out}: 1 ended (skipped), 1 accepted" in said
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


# -- the summary table, end to end -------------------------------------------------------------------


def table(stdout: str) -> dict[str, str]:
    """The plain summary table's rows (label → value) from a batch's stdout."""
    rows = {}
    for line in stdout.splitlines():
        match = re.fullmatch(r" {2,}(\S.*?)\s{2,}(\S.*)", line)
        if match:
            rows[match[1].strip()] = match[2].strip()
    return rows


async def test_the_summary_table_counts_failures_by_reason_skips_retries_and_refusals(tmp_path: Path) -> None:
    """Against an emulator that answers a share of submits 429: the table's refusals are the emulator's
    429s, its retries those results.jsonl records, the failure is named with its status and code, the
    failed grid's upscale is skipped (not failed); index.html shows every image. A rerun skips all."""
    source = tmp_path / "prompts.txt"
    source.write_text("a calm lake\nsome gore here\na quiet harbour\n")
    out = tmp_path / "out"
    plan = FaultPlan(rate=0.5, kinds=("429",), scope="submits", retry_after=0.05, seed=3)
    command = batch_command(str(source), "--out", str(out), "--upscale", "1", "--concurrency", "2", *FAST)
    with anyio.fail_after(TIMEOUT * 2):  # a hang detector only
        async with Emulator(speed=0, faults=plan) as emu:
            env = batch_env()
            done = await anyio.run_process([*command, "--base-url", emu.url], env=env, check=False)
            again = await anyio.run_process([*command, "--base-url", emu.url], env=env, check=False)
            refusals = emu.counters.get("fault_429", 0)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 3, stderr
    assert "6/6 jobs ended (4 ok, 1 failed, 1 skipped)" in stdout
    rows = table(stdout)
    assert rows["ok"] == "4"
    assert rows["failed"] == "1"
    assert rows["ModerationError (403 forbidden)"] == "1"
    assert rows["skipped: its grid failed"] == "1"
    assert rows["skipped: ended in an earlier run"] == "0"
    assert rows["not ended (a rerun resumes them)"] == "0"
    assert refusals > 0, "the fault plan refused no submit: pick another seed"
    assert rows["refusals (429, queue full)"] == str(refusals)
    lines = results(out)
    assert rows["retries"] == str(sum(line["retries"] for line in lines))
    assert re.fullmatch(r"\d+:\d\d(  \(\d+\.\d jobs/min\))?", rows["time"]), rows["time"]
    sheet = (out / "index.html").read_text()
    for line in lines:
        assert line["task_id"] is None or line["task_id"] in sheet
        assert all(f'src="{name}"' in sheet for name in line["images"][:1])
    assert EMULATOR_TOKEN not in stdout + stderr + sheet

    rerun = table(again.stdout.decode())
    assert again.returncode == 3
    assert rerun["skipped: ended in an earlier run"] == "6"
    assert (rerun["ok"], rerun["failed"], rerun["refusals (429, queue full)"]) == ("0", "0", "0")


# -- the screen, in a terminal --------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def test_the_terminal_shows_prompt_bars_the_pace_and_the_summary_table(tmp_path: Path) -> None:
    """`mjasync batch --emulator` in a 120x40 pseudo-terminal: rows labelled with the job's number and
    prompt, the pace (jobs/min, ETA), then the summary table drawn by rich."""
    pytest.importorskip("rich", reason="the live view needs rich (the `progress` extra)")
    source, prompts = write_prompts(tmp_path, 4)
    command = batch_command(
        str(source), "--out", "out", "--emulator", "--emulator-speed", "1.5", "--concurrency", "2", *FAST
    )
    env = batch_env()
    env.pop("MJASYNC_API_KEY")
    env.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
    main_fd, child_fd = os.openpty()
    fcntl.ioctl(child_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    screen = bytearray()
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdin=child_fd, stdout=child_fd, stderr=child_fd
    ) as proc:
        os.close(child_fd)
        try:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                ready, _, _ = select.select([main_fd], [], [], 1.0)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(main_fd, 65536)
                except OSError:  # EIO: the child side is closed
                    break
                if not chunk:
                    break
                screen += chunk
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            os.close(main_fd)
            if proc.poll() is None:
                proc.kill()
    text = ANSI.sub("", screen.decode("utf-8", "replace"))
    (tmp_path / "screen.txt").write_text(text)  # kept with the test's files, for a person to look at
    assert "Traceback" not in text
    assert f"001 {prompts[0]}" in text and f"004 {prompts[3]}" in text  # rows named by number and prompt
    assert re.search(r"\d+\.\d jobs/min  ETA \d+:\d\d", text), text[-3000:]
    assert "4/4 ok 4 failed 0" in text
    for row in ("ok", "failed", "skipped: ended in an earlier run", "retries", "refusals (429, queue full)"):
        assert re.search(rf"│ {re.escape(row)}\s+│\s+\d+ │", text), row
    assert "│ time" in text and "4/4 jobs ended (4 ok, 0 failed)" in text
