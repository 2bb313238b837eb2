"""Images the midjourney-proxy client fetches to send as base64 (describe, blend, image prompts) are
fetched within the client's limits: a host that drips one byte per 0.1 s, under the idle-read timeout
but for far longer than `Timeouts.total`, must not hold the call past it.

`Transport.download` once passed no overall timeout, although its docstring said "bounded like any
call: ... overall `Timeouts`", so a dripping image host held a describe or a blend for as long as it
liked (this server's drip lasts ~70 s). Fixed (it passes `Timeouts.total`); kept as a regression test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import mjasync

from .checks import assert_no_secret_in_error, assert_only_mj_error
from .server import Script, serve
from .strategies import hostile_client

pytestmark = pytest.mark.anyio

#: A hang detector 5× the client's overall limit (0.8 s).
HANG_SECONDS = 4.0

#: A short call (describe) and a job (blend) inline their images through the same download.
CALLS: dict[str, Callable[[mjasync.Client, str], Awaitable[Any]]] = {
    "describe": lambda mj, url: mj.describe(f"{url}/img/dripping.png"),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_a_dripping_image_host_cannot_hold_a_call_past_its_limits(call: str) -> None:
    error: Exception | None = None
    hung = False
    async with serve("midjourney-proxy", Script(shorts=["drip"])) as server:
        with anyio.move_on_after(HANG_SECONDS) as bound:
            async with hostile_client(server) as mj:
                try:
                    await CALLS[call](mj, server.url)
                except Exception as caught:  # every type, to check that only MJErrors escape
                    error = caught
        hung = bound.cancelled_caught
    assert not hung, f"{call} did not end within {HANG_SECONDS} s: the image download is unbounded"
    assert_only_mj_error(error)
    assert isinstance(error, mjasync.APITimeoutError | mjasync.APIConnectionError), repr(error)
    if error is not None:
        assert_no_secret_in_error(error)
    assert not server.created, "nothing may be submitted without the image"
