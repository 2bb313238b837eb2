"""Seed 000's own Python samples, run as written (but for URL and token) against the emulator.

The samples live in tests/fixtures/seed_samples/ (its README lists every substitution and why). Each
runs in a subprocess with `requests`, as a reader of the guide would run it, while the emulator serves
in this process; the tests assert on what the sample prints, compared with the guide's recorded output.
The callback tests follow the guide's webhook step with a local aiohttp receiver instead of webhook.site.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from mjasync.emulator import Emulator
from mjasync.testing import EMULATOR_TOKEN

from ..helpers import ACEDATA_GRID_ACTIONS as GRID_ACTIONS
from ..helpers import FIXTURES, Delivery, acedata_json, jpeg_mask_b64, running, webhook_receiver
from .test_response_shapes import assert_same_shape, load_fixture, load_stream_fixture

SAMPLES = FIXTURES / "seed_samples"
SEED_BASE_URL = "https://api.acedata.cloud"
SEED_IMAGE_ID = '"image_id": "1265875488702726144"'
SEED_MASK_LINE = '    "mask": "/9j/'
#: Seconds a sample may run before it is killed.
SAMPLE_TIMEOUT = 60

JSON = dict[str, Any]


def subprocess_env() -> dict[str, str]:
    """This environment without proxy settings, so a child's HTTP to 127.0.0.1 goes straight there."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {key: value for key, value in os.environ.items() if key.lower() not in proxies}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def sample(name: str) -> str:
    """One verbatim seed sample."""
    return (SAMPLES / name).read_text(encoding="utf-8")


def substituted(text: str, *replacements: tuple[str, str]) -> str:
    """Apply exact text replacements, each of which must match exactly once."""
    for old, new in replacements:
        assert text.count(old) == 1, f"expected exactly one {old[:60]!r} in the sample"
        text = text.replace(old, new)
    return text


def pointed_at(text: str, emu: Emulator) -> str:
    """The sample with its base URL and `{token}` placeholder swapped for the emulator's."""
    return substituted(text, (SEED_BASE_URL, emu.url), ("{token}", EMULATOR_TOKEN))


async def run_sample(code: str, folder: Path) -> str:
    """Run *code* as a script with this interpreter (bounded; killed on timeout); return its stdout."""
    script = folder / "sample.py"
    script.write_text(code, encoding="utf-8")
    with anyio.fail_after(SAMPLE_TIMEOUT):
        done = await anyio.run_process(
            [sys.executable, str(script)], cwd=folder, env=subprocess_env(), check=False
        )
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, stderr
    return stdout


def webhook() -> AbstractAsyncContextManager[tuple[str, MemoryObjectReceiveStream[Delivery]]]:
    """A webhook on 127.0.0.1 (standing in for webhook.site) forwarding every request it receives."""
    return webhook_receiver(path="/995d0a91-d737-40a7-a3b9-5baf68ed924c", method="*")


async def post(http: aiohttp.ClientSession, emu: Emulator, path: str, body: JSON) -> JSON:
    """POST a JSON body to the emulator (plain aiohttp) and require a 200 JSON object."""
    status, reply = await acedata_json(http, emu, f"/midjourney/{path}", body)
    assert status == 200, reply
    return dict(reply)


def check_progress_lines(lines: list[JSON]) -> None:
    """The guide's stream: one task, rising progress to 100, empty actions until the final line."""
    recorded = load_stream_fixture()
    assert len(lines) >= 2
    assert len({line["task_id"] for line in lines}) == 1
    progress = [line["progress"] for line in lines]
    assert progress == sorted(set(progress)), progress
    assert progress[-1] == 100
    assert all(line["success"] is True for line in lines)
    for line in lines[:-1]:
        assert line["actions"] == []
        assert_same_shape(recorded[0], line)
    assert lines[-1]["actions"] == GRID_ACTIONS
    assert_same_shape(recorded[-1], lines[-1])


# --- Streaming Output ---------------------------------------------------------------------------


async def test_streaming_sample_prints_rising_ndjson_lines(tmp_path: Path) -> None:
    """The streaming sample prints one JSON line per progress step, ending with a 100% line with actions."""
    async with Emulator(host="127.0.0.1", port=0, speed=0.5) as emu:
        out = await run_sample(pointed_at(sample("seed000_streaming_python.py.txt"), emu), tmp_path)
        seen = emu.requests[-1]
    printed = out.splitlines()
    assert all(printed), f"blank lines in the output: {out!r}"
    lines = [json.loads(line) for line in printed]
    check_progress_lines(lines)
    # The sample's request reached the emulator as written: ndjson accepted, no `action` (generate).
    assert seen.path == "/midjourney/imagine"
    assert seen.accept == "application/x-ndjson"
    assert seen.json == load_fixture("seed000_stream_request_python.json")


# --- Local Transformation (variation_region) ----------------------------------------------------


def test_variation_region_sample_cannot_run_as_written() -> None:
    """As copied, the sample's mask string is cut off and `payload =` breaks the line; both repairs are needed."""
    text = sample("seed000_variation_region_python.py.txt")
    (cut_line,) = [line for line in text.splitlines() if line.startswith(SEED_MASK_LINE)]
    assert cut_line.count('"') == 3  # the mask string never closes...
    assert "}" not in text.split(SEED_MASK_LINE, 1)[1]  # ...nor does the object
    whole_mask = (cut_line + "\n", f'    "mask": "{jpeg_mask_b64()}"\n}}\n')
    one_line_payload = ("payload =\n{\n", "payload = {\n")
    with pytest.raises(SyntaxError, match="unterminated string") as caught:
        compile(text, "sample.py", "exec")
    assert caught.value.lineno == 16
    with pytest.raises(SyntaxError) as caught:
        compile(substituted(text, whole_mask), "sample.py", "exec")
    assert caught.value.lineno == 11  # `payload =`
    compile(substituted(text, whole_mask, one_line_payload), "sample.py", "exec")


def repaired_variation_region(text: str, emu: Emulator, image_id: str, mask: str) -> str:
    """The README's substitutions 1-5: URL, token, `payload = {`, a whole mask line, a known image_id."""
    (cut_line,) = [line for line in text.splitlines() if line.startswith(SEED_MASK_LINE)]
    return substituted(
        pointed_at(text, emu),
        ("payload =\n{\n", "payload = {\n"),
        (cut_line + "\n", f'    "mask": "{mask}"\n}}\n'),
        (SEED_IMAGE_ID, f'"image_id": "{image_id}"'),
    )


async def test_variation_region_sample_prints_the_documented_result(tmp_path: Path) -> None:
    """The variation_region sample (repaired as documented) prints a result shaped like the guide's."""
    async with running() as (emu, http):
        grid = await post(http, emu, "imagine", {"prompt": "A cat sitting on a table"})
        upscaled = await post(http, emu, "imagine", {"action": "upscale1", "image_id": grid["image_id"]})
        mask = jpeg_mask_b64(upscaled["raw_image_width"], upscaled["raw_image_height"])
        code = repaired_variation_region(
            sample("seed000_variation_region_python.py.txt"), emu, upscaled["image_id"], mask
        )
        out = await run_sample(code, tmp_path)
        seen = emu.requests[-1]
    result = json.loads(out)
    assert_same_shape(load_fixture("seed000_variation_region.json"), result)
    assert result["success"] is True
    assert result["progress"] == 100
    assert result["actions"] == GRID_ACTIONS
    assert result["image_id"] != upscaled["image_id"]
    # The payload arrived exactly as the sample builds it.
    assert seen.json == {
        "prompt": "A cute cat ",
        "action": "variation_region",
        "image_id": upscaled["image_id"],
        "mask": mask,
    }
    assert seen.accept == "application/json"


# --- Asynchronous Callback ----------------------------------------------------------------------


async def test_callback_posts_the_documented_success_body() -> None:
    """The webhook step: callback_url + prompt answers {task_id} at once, then one JSON POST like the guide's."""
    async with webhook() as (url, deliveries), running() as (emu, http):
        receipt = await post(
            http, emu, "imagine", {"prompt": "A cat sitting on a table", "callback_url": url}
        )
        assert list(receipt) == ["task_id"]
        with anyio.fail_after(10):
            delivery = await deliveries.receive()
        record = await post(http, emu, "tasks", {"action": "retrieve", "id": receipt["task_id"]})
    assert delivery.method == "POST"
    assert delivery.content_type == "application/json"
    assert_same_shape(load_fixture("seed000_callback_success.json"), delivery.body)
    assert delivery.body["task_id"] == receipt["task_id"]
    assert delivery.body["success"] is True
    assert delivery.body["actions"] == GRID_ACTIONS
    # The webhook gets the same result that polling the task shows.
    assert record["response"] == delivery.body


async def test_callback_posts_the_documented_failure_body() -> None:
    """A prompt the worker rejects (`-c x`) reaches the webhook as the guide's failure body."""
    async with webhook() as (url, deliveries), running() as (emu, http):
        body = {"prompt": "A cat sitting on a table -c x", "callback_url": url}
        receipt = await post(http, emu, "imagine", body)
        with anyio.fail_after(10):
            delivery = await deliveries.receive()
    recorded = load_fixture("seed000_callback_failure.json")
    assert_same_shape(recorded, delivery.body)
    assert delivery.body == {**recorded, "task_id": receipt["task_id"]}


async def test_streaming_sample_with_callback_url_posts_every_progress_line(tmp_path: Path) -> None:
    """Streaming sample + callback_url in its body: it prints {task_id}; the webhook gets one POST per line."""
    async with webhook() as (url, deliveries), Emulator(host="127.0.0.1", port=0, speed=0.5) as emu:
        prompt = '"prompt": "a beautiful cat --v 6"\n'
        code = substituted(
            pointed_at(sample("seed000_streaming_python.py.txt"), emu),
            (prompt, f'{prompt[:-1]},\n    "callback_url": {json.dumps(url)}\n'),
        )
        out = await run_sample(code, tmp_path)
        with anyio.fail_after(10):
            lines = [(await deliveries.receive()).body]
            while lines[-1]["progress"] < 100:
                lines.append((await deliveries.receive()).body)
        assert emu.requests[-1].accept == "application/x-ndjson"
    (printed,) = out.splitlines()
    receipt = json.loads(printed)
    assert list(receipt) == ["task_id"]
    assert {line["task_id"] for line in lines} == {receipt["task_id"]}
    check_progress_lines(lines)
    assert_same_shape(load_fixture("seed000_callback_success.json"), lines[-1])
