"""AceData's own CLI (`midjourney-pro-cli==2026.6.19.0`, command `midjourney`) against the emulator.

The CLI has no --base-url flag: it reads ``ACEDATACLOUD_API_BASE_URL`` and the token from ``--token`` or
``ACEDATACLOUD_API_TOKEN`` (peers.md §4.3). Each test runs the real console script in a subprocess
while an emulator serves in this process, and asserts on what the CLI prints and what it sent.

What works: every submit (`imagine`, `transform`, `blend`, `edit`, `video` send ``"async": true`` and
print ``{"task_id"}``), the quick calls (`describe`, `translate`, `seed`), and `task --json` / `tasks
--json`, which print the record as served. What cannot work against the documented task record:
`wait` and `task` without ``--json`` read ``success`` / ``image_url`` at the top level of the record,
where the documented record (acedata-api.md §11) has them under ``response``; `wait` therefore polls
until its timeout and `task` prints "No data available." even for a finished task. The last two tests
pin that gap; the emulator is not bent to it.
"""

from __future__ import annotations

import json
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..helpers import ACEDATA_GRID_ACTIONS as GRID_ACTIONS
from ..helpers import ACEDATA_UPSCALED_ACTIONS as UPSCALED_ACTIONS
from .test_response_shapes import assert_same_shape, load_fixture
from .test_seed_samples import subprocess_env

#: The console script `pip install midjourney-pro-cli` puts beside this interpreter.
CLI = Path(sysconfig.get_path("scripts")) / "midjourney"
#: Seconds one CLI command may run before it is killed.
CLI_TIMEOUT = 60


@dataclass(frozen=True)
class Run:
    """One finished CLI command."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The `--json` output, which must be the whole of stdout."""
        assert self.returncode == 0, self.stderr or self.stdout
        return json.loads(self.stdout)


@pytest.fixture
def emu(mj_emulator: Emulator) -> Emulator:
    """An emulator on 127.0.0.1 whose jobs finish at once (mjasync.testing's fixture)."""
    return mj_emulator


async def midjourney(emu: Emulator, cwd: Path, *args: str, token: str | None = EMULATOR_TOKEN) -> Run:
    """Run `midjourney ARGS` pointed at *emu* through ACEDATACLOUD_API_BASE_URL (bounded; killed on timeout)."""
    assert CLI.exists(), f"{CLI} is missing: install the test extra (pip install -e '.[test]')"
    env = {k: v for k, v in subprocess_env().items() if not k.startswith(("ACEDATACLOUD_", "MIDJOURNEY_"))}
    env |= {
        "ACEDATACLOUD_API_BASE_URL": emu.url,
        "MIDJOURNEY_REQUEST_TIMEOUT": str(CLI_TIMEOUT),
        # rich wraps output at 80 columns when not on a terminal, which would break long JSON lines.
        "COLUMNS": "10000",
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    if token is not None:
        env["ACEDATACLOUD_API_TOKEN"] = token
    # The CLI also loads a .env (python-dotenv, never overriding): what it reads is all set here.
    with anyio.fail_after(CLI_TIMEOUT):
        done = await anyio.run_process([str(CLI), *args], cwd=cwd, env=env, check=False)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


async def finished_response(emu: Emulator, cwd: Path, task_id: str) -> dict[str, Any]:
    """`midjourney task ID --json`: the record of a finished task; return its `response`."""
    record = (await midjourney(emu, cwd, "task", task_id, "--json")).json()
    assert record["id"] == task_id
    assert "finished_at" in record
    return dict(record["response"])


def receipt_id(run: Run) -> str:
    """The task_id of a `{"task_id"}` receipt (what every submit prints)."""
    receipt = run.json()
    assert list(receipt) == ["task_id"]
    assert_same_shape(load_fixture("seed004_edits_async_receipt.json"), receipt)
    return str(uuid.UUID(receipt["task_id"]))


async def test_cli_imagine_submits_async_and_the_task_shows_the_grid(emu: Emulator, tmp_path: Path) -> None:
    """`imagine --json` sends the documented body with async:true, prints {task_id}; `task` shows the grid."""
    task_id = receipt_id(await midjourney(emu, tmp_path, "imagine", "a cat --v 6", "--json"))
    sent = emu.requests[-1]
    assert (sent.path, sent.accept) == ("/midjourney/imagine", "application/json")
    assert sent.json == {
        "prompt": "a cat --v 6",
        "mode": "fast",
        "action": "generate",
        "translation": False,
        "split_images": False,
        "async": True,
    }
    response = await finished_response(emu, tmp_path, task_id)
    assert_same_shape(load_fixture("seed000_imagine_generate.json"), response)
    assert response["task_id"] == task_id
    assert response["actions"] == GRID_ACTIONS
    assert response["image_url"].startswith(f"{emu.url}/images/")
    assert response["raw_image_url"].startswith(f"{emu.url}/images/")


async def test_cli_transform_upscales_then_zooms(emu: Emulator, tmp_path: Path) -> None:
    """`transform IMAGE_ID upscale1` then `zoom_out_2x`: each prints {task_id}; the results carry the documented actions."""
    grid_task = receipt_id(await midjourney(emu, tmp_path, "imagine", "a lighthouse", "--json"))
    grid = await finished_response(emu, tmp_path, grid_task)
    up_task = receipt_id(await midjourney(emu, tmp_path, "transform", grid["image_id"], "upscale1", "--json"))
    assert emu.requests[-1].json == {
        "action": "upscale1",
        "image_id": grid["image_id"],
        "mode": "fast",
        "async": True,
    }
    upscaled = await finished_response(emu, tmp_path, up_task)
    assert_same_shape(load_fixture("seed000_upscale4.json"), upscaled)
    assert upscaled["actions"] == UPSCALED_ACTIONS
    zoom_task = receipt_id(
        await midjourney(emu, tmp_path, "transform", upscaled["image_id"], "zoom_out_2x", "--json")
    )
    zoomed = await finished_response(emu, tmp_path, zoom_task)
    assert zoomed["actions"] == GRID_ACTIONS
    assert zoomed["image_id"] not in (grid["image_id"], upscaled["image_id"])


async def test_cli_transform_refuses_an_unavailable_action(emu: Emulator, tmp_path: Path) -> None:
    """An action the image does not offer: the emulator's 400 reaches the user and the CLI exits 1."""
    grid_task = receipt_id(await midjourney(emu, tmp_path, "imagine", "a lighthouse", "--json"))
    grid = await finished_response(emu, tmp_path, grid_task)
    run = await midjourney(emu, tmp_path, "transform", grid["image_id"], "zoom_out_2x", "--json")
    assert run.returncode == 1
    assert "bad_request" in run.stdout
    assert "zoom_out_2x" in run.stdout


async def test_cli_describe_prints_four_descriptions(emu: Emulator, tmp_path: Path) -> None:
    """`describe URL`: four prompt candidates, as JSON with --json and as a numbered panel without."""
    url = "https://cdn.acedata.cloud/8fapzl.png"
    reply = (await midjourney(emu, tmp_path, "describe", url, "--json")).json()
    assert_same_shape(load_fixture("note_describe_response.json"), reply)
    assert len(reply["descriptions"]) == 4
    assert all("--ar " in text for text in reply["descriptions"])
    assert emu.requests[-1].json == {"image_url": url}
    panel = await midjourney(emu, tmp_path, "describe", url)
    assert panel.returncode == 0, panel.stderr
    assert "Image Descriptions" in panel.stdout
    for number, text in enumerate(reply["descriptions"], 1):
        assert f"{number}. {text}" in panel.stdout


async def test_cli_blend_edit_and_video_submit(emu: Emulator, tmp_path: Path) -> None:
    """`blend`, `edit` and `video` each submit async and print {task_id}; their tasks finish with results."""
    urls = ["https://cdn.acedata.cloud/8fapzl.png", "https://cdn.acedata.cloud/c1igbw.png"]
    blend = await midjourney(
        emu, tmp_path, "blend", *urls, "--prompt", "The bear is holding the chainsaw", "--json"
    )
    blended = await finished_response(emu, tmp_path, receipt_id(blend))
    assert_same_shape(load_fixture("seed000_blend.json"), blended)
    edit_args = [
        "edit",
        "https://cdn.acedata.cloud/jgo1cw.jpg",
        "A cat sitting on a table",
        "--split",
        "--json",
    ]
    edited = await finished_response(emu, tmp_path, receipt_id(await midjourney(emu, tmp_path, *edit_args)))
    assert_same_shape(load_fixture("seed004_edits_response.json"), edited)
    video_args = ["video", "A cat walking", "--image-url", "https://cdn.acedata.cloud/jgo1cw.jpg", "--json"]
    video = await finished_response(emu, tmp_path, receipt_id(await midjourney(emu, tmp_path, *video_args)))
    assert_same_shape(load_fixture("note_videos_response.json"), video)


async def test_cli_translate_seed_and_tasks(emu: Emulator, tmp_path: Path) -> None:
    """`translate`, `seed` and `tasks` print the documented bodies (the CLI's --token flag carries the key)."""
    flag = ("--token", EMULATOR_TOKEN)
    translated = await midjourney(
        emu, tmp_path, *flag, "translate", "精致，无暇，洁白的天使", "--json", token=None
    )
    assert translated.json() == load_fixture("note_translate_response.json")
    first = receipt_id(await midjourney(emu, tmp_path, *flag, "imagine", "a fox", "--json", token=None))
    second = receipt_id(await midjourney(emu, tmp_path, *flag, "imagine", "a ship", "--json", token=None))
    image_id = (await finished_response(emu, tmp_path, first))["image_id"]
    seed = (await midjourney(emu, tmp_path, *flag, "seed", image_id, "--json", token=None)).json()
    assert_same_shape(load_fixture("note_seed_response.json"), seed)
    assert seed["seed"].isdigit()
    batch = (await midjourney(emu, tmp_path, *flag, "tasks", first, second, "--json", token=None)).json()
    assert batch["count"] == 2
    assert [item["id"] for item in batch["items"]] == [first, second]
    assert all(item["response"]["progress"] == 100 for item in batch["items"])


async def test_cli_reports_a_rejected_token(emu: Emulator, tmp_path: Path) -> None:
    """A token the emulator does not accept: its 401 becomes the CLI's "Invalid API token" and exit 1."""
    run = await midjourney(emu, tmp_path, "imagine", "a cat", "--json", token="not-the-token")
    assert run.returncode == 1
    assert "Invalid API token" in run.stdout
    assert emu.requests[-1].status == 401


async def test_cli_wait_never_sees_the_documented_record_finish(emu: Emulator, tmp_path: Path) -> None:
    """Known CLI gap: `wait` reads top-level success/image_url, so a finished documented record times out."""
    task_id = receipt_id(await midjourney(emu, tmp_path, "imagine", "a cat", "--json"))
    record = emu.task_record(task_id)
    assert record is not None
    assert record["response"]["progress"] == 100  # finished, as the documented record shows it
    run = await midjourney(emu, tmp_path, "wait", task_id, "--interval", "1", "--timeout", "1", "--json")
    assert run.returncode == 1
    assert f"Timeout: task {task_id} did not complete within 1s" in run.stdout
    polls = [r.json for r in emu.requests if r.path == "/midjourney/tasks"]
    assert polls == [{"id": task_id, "action": "retrieve"}]


async def test_cli_task_table_finds_no_data_in_the_documented_record(emu: Emulator, tmp_path: Path) -> None:
    """Known CLI gap: `task ID` without --json looks for top-level image_url and prints "No data available."."""
    task_id = receipt_id(await midjourney(emu, tmp_path, "imagine", "a cat", "--json"))
    await finished_response(emu, tmp_path, task_id)
    run = await midjourney(emu, tmp_path, "task", task_id)
    assert run.returncode == 0, run.stderr
    assert "No data available." in run.stdout
