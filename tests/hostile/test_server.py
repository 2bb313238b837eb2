"""The hostile server's own pure parts, and proof that, honest, it serves every call the client makes.

Were it broken when honest, every hostile finding would be suspect; so an honest script must give
every call of every provider its result.
"""

from __future__ import annotations

import io
import json
from typing import get_args

import pytest

from .checks import PARTIAL, assert_one_task_per_job, leaked_in
from .proxy import png, proxy_job_key
from .server import (
    API_KEY,
    WEBHOOK_SECRET,
    Garbage,
    GarbageKind,
    Script,
    garbage_bytes,
    job_key,
    secret_forms,
    serve,
)
from .strategies import hostile_client
from .test_lone_calls import Trial, calls_for

pytestmark = pytest.mark.anyio


def test_every_garbage_but_a_cut_body_carries_the_key_and_is_not_a_json_object() -> None:
    valid = json.dumps({"task_id": "t", "echo": API_KEY}).encode()
    for kind in get_args(GarbageKind):
        if kind == "truncated":
            continue
        data = garbage_bytes(Garbage(kind), valid)
        assert API_KEY.encode() in data, kind
        try:
            decoded = json.loads(data)
        except (ValueError, RecursionError):
            continue
        # Python's json reads NaN; a client's strict decoder must not, and neither holds a string task id.
        assert kind in ("wrong-types", "nan") and not isinstance(decoded.get("task_id"), str)
    cut = garbage_bytes(Garbage("truncated", bytes([128])), valid)
    assert valid.startswith(cut) and len(cut) == len(valid) // 2


def test_job_key_names_a_job_by_its_prompt_else_by_what_it_acts_on() -> None:
    assert job_key("/midjourney/imagine", {"prompt": "a cat", "action": "generate"}) == "prompt:a cat"
    assert (
        job_key("/mj/v2/upscale", {"origin_task_id": "o", "index": "1"})
        == "/mj/v2/upscale origin_task_id=o index=1"
    )
    assert job_key("/midjourney/imagine", {"action": "upscale2", "image_id": "9"}) != job_key(
        "/midjourney/imagine", {"action": "upscale3", "image_id": "9"}
    )


def test_secret_forms_and_leaks() -> None:
    assert secret_forms("a-b") == ["a-b", "a\\u002db", "a%2Db", "a%2db"]
    assert leaked_in(f"x {API_KEY} y") and leaked_in(API_KEY.replace("-", "\\u002d"))
    assert leaked_in("ends with " + API_KEY[:PARTIAL]), "an excerpt cut at an edge is a leak"
    assert not leaked_in("ends with " + API_KEY[: PARTIAL - 1])
    assert not leaked_in(WEBHOOK_SECRET), "the webhook secret counts only where the client holds it"
    assert leaked_in(WEBHOOK_SECRET, (WEBHOOK_SECRET,))


def test_a_proxy_job_is_named_by_what_it_asks_never_by_its_marker() -> None:
    assert proxy_job_key("imagine", {"prompt": "a cat", "state": "m1"}) == proxy_job_key(
        "imagine", {"prompt": "a cat", "state": "m2"}
    )
    assert proxy_job_key("action", {"taskId": "1", "customId": "MJ::JOB::upsample::1::h"}) != proxy_job_key(
        "action", {"taskId": "1", "customId": "MJ::JOB::upsample::2::h"}
    )


def test_the_served_images_are_pngs_that_differ_by_path() -> None:
    from PIL import Image  # the client's mask handling brings Pillow

    assert Image.open(io.BytesIO(png("/img/a.png"))).size == (1, 1)
    assert png("/img/a.png") != png("/img/b.png")


@pytest.mark.parametrize("provider", ["acedata", "goapi", "midjourney-proxy"])
async def test_an_honest_server_serves_every_call(provider: str) -> None:
    calls = calls_for(provider)
    async with serve(provider, Script(steps=1)) as server:  # type: ignore[arg-type]
        async with hostile_client(server, patience=10.0) as mj:
            for name, call in sorted(calls.items()):
                if name in ("unknown-task", "record"):
                    continue  # ids the server never knew: not an honest question
                result = await call(mj, Trial(), name)
                assert result is not None, name
    assert_one_task_per_job(server)
