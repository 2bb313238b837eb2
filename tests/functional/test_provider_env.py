"""Each provider owns its differences: the key variables it reads, the secret header its callbacks carry,
and how a blend's shape is said."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import mjasync
from mjasync._inbox import CallbackInbox
from mjasync._providers.goapi import GOAPI
from mjasync.cli import main as cli_main

ACEDATA_TOKEN = "an-acedata-token-never-for-goapi"
URLS = ["https://e.com/a.png", "https://e.com/b.png"]
SECRET = "a-secret-for-another-header"
TASK = "the-awaited-task"


@pytest.fixture
def only_acedata_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """AceData's token is set; the generic variable is not."""
    monkeypatch.delenv("MJASYNC_API_KEY", raising=False)
    monkeypatch.setenv("ACEDATACLOUD_API_TOKEN", ACEDATA_TOKEN)


@pytest.mark.usefixtures("only_acedata_token")
async def test_a_goapi_client_never_takes_acedatas_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token would go to GoAPI's host in `x-api-key`; the client refuses to start instead."""
    with pytest.raises(mjasync.InvalidRequestError, match="no API key") as raised:
        mjasync.Client(provider="goapi")
    assert "ACEDATACLOUD_API_TOKEN" not in str(raised.value)
    async with mjasync.Client(provider="acedata") as acedata:  # AceData's own variable still counts
        assert acedata.provider == "acedata"
    monkeypatch.setenv("MJASYNC_API_KEY", "a-generic-key")
    async with mjasync.Client(provider="goapi") as goapi:  # the generic one serves every provider
        assert goapi.provider == "goapi"


@pytest.mark.usefixtures("only_acedata_token")
def test_the_batch_cli_never_takes_acedatas_token_for_goapi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a bear\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = [
        "batch",
        str(prompts),
        "--out",
        str(out),
        "--provider",
        "goapi",
        "--base-url",
        "http://127.0.0.1:9",
    ]
    assert cli_main(argv) == 2
    assert "no API key: pass --api-key or set MJASYNC_API_KEY" in capsys.readouterr().err
    assert not out.exists()


class OtherHeaderProvider:
    """GoAPI's webhooks, but with the secret in a header of the provider's own choosing."""

    name = "other"
    callback_secret_header = "x-other-secret"

    def decode_callback(self, kind: type[Any], body: bytes) -> Any:
        return GOAPI.decode_callback(kind, body)


async def test_the_receiver_reads_the_secret_from_the_header_the_provider_declares() -> None:
    finished = {
        "task_id": TASK,
        "status": "finished",
        "task_result": {"image_url": "http://127.0.0.1:9/a.png"},
    }
    receiver = mjasync.WebhookReceiver(secret=SECRET)
    async with receiver.serve():
        inbox: CallbackInbox[mjasync.types.ImagineUpdate] = CallbackInbox(
            OtherHeaderProvider(),  # type: ignore[arg-type]
            mjasync.ImagineResult,
        )
        inbox.expect(TASK)
        target, _ = receiver.open_route(inbox, progress=False, ttl=None)
        async with aiohttp.ClientSession() as session:
            for headers, status in (
                ({}, 401),
                ({"x-other-secret": "wrong"}, 401),
                ({"x-other-secret": SECRET}, 200),
            ):
                async with session.post(target.url, data=json.dumps(finished), headers=headers) as resp:
                    assert resp.status == status, headers
        assert inbox.received == 1


async def test_an_acedata_blend_says_its_shape_as_an_aspect_ratio_in_the_prompt() -> None:
    async with mjasync.Client(api_key="k", provider="acedata") as mj:
        job = mj.blend(URLS, dimension="portrait")
        job.close()  # built only to look at
        assert job.request.prompt == " ".join(URLS) + " --ar 2:3"
        assert job.request.dimension == "portrait" and job.request.aspect_ratio is None


@pytest.mark.parametrize("provider", ["acedata", "goapi"])
async def test_a_blend_refuses_an_aspect_ratio_that_contradicts_its_dimension(provider: Any) -> None:
    """Whichever way the provider takes the shape, an `--ar` beside a dimension never wins silently."""
    async with mjasync.Client(api_key="k", provider=provider) as mj:
        with pytest.raises(mjasync.InvalidRequestError):
            mj.blend(URLS, dimension="portrait", params=mjasync.PromptParams(aspect_ratio="16:9"))
        with pytest.raises(mjasync.InvalidRequestError):
            mj.blend(URLS, "--ar 16:9", dimension="portrait")
