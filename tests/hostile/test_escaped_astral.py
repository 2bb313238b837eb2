"""An error body that holds the API key and a JSON-escaped character outside the BMP still ends as an
`MJError`, with the key redacted.

ASCII-only JSON encoders (Python's `json.dumps` by default, many gateways) write an emoji such as 🔄 as
the surrogate-pair escape `"\\ud83d\\udd04"`. Found by the midjourney-proxy side of the hostile suite
(its buttons carry 🔄): `_redact.redact` unescapes JSON escapes one by one to find an escaped key, which
turns the pair into two lone surrogates; `redact_bytes` then encodes with "surrogateescape", which
cannot encode them, and a `UnicodeEncodeError` escapes the call instead of the provider's error. It
happened on every provider: a refusal, a 5xx, a code 24 or an undecodable answer that echoes the key.
Fixed (`_unescape` joins a pair into one character, and reads a lone surrogate as U+FFFD); kept as a
regression test.

Reproduce by hand: a 400 answer `{"message": "... <the key> ...", "hint": "retry \\ud83d\\udd04"}`.
"""

from __future__ import annotations

import anyio
import pytest

import mjasync

from .checks import assert_no_secret_in_error, assert_only_mj_error
from .server import Script, serve
from .strategies import HANG_SECONDS, hostile_client

pytestmark = pytest.mark.anyio

CASES = {
    "acedata-400": ("acedata", {"submits": ["refuse-400"]}, mjasync.BadRequestError),
    "goapi-400": ("goapi", {"submits": ["refuse-400"]}, mjasync.BadRequestError),
    "proxy-400": ("midjourney-proxy", {"submits": ["refuse-400"]}, mjasync.BadRequestError),
    "proxy-code-24": ("midjourney-proxy", {"codes": ["24"]}, mjasync.ModerationError),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_an_error_body_with_an_escaped_emoji_and_the_key_is_an_mj_error(case: str) -> None:
    provider, moves, expected = CASES[case]
    error: BaseException | None = None
    async with serve(provider, Script(astral=True, **moves)) as server:  # type: ignore[arg-type]
        with anyio.fail_after(HANG_SECONDS):
            async with hostile_client(server) as mj:
                try:
                    await mj.imagine(f"hostile astral {case}").result(via="poll")
                except Exception as caught:  # every type, to check that only MJErrors escape
                    error = caught
    assert_only_mj_error(error)
    assert isinstance(error, expected), repr(error)
    assert_no_secret_in_error(error)
