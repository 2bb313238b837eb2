"""Careless input is refused when the client is built or the call is made, before anything is sent.

Issue 12 point 7: a key with a line break, credentials or a path in the base URL, a header aiohttp would
refuse later with a bare `ValueError`, a prompt of 100 KB. Each is an `InvalidRequestError` whose message
says what is wrong without repeating the secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import mjasync
from mjasync._models.params import MAX_PROMPT_CHARS
from mjasync.testing import EMULATOR_TOKEN

KEY = "sk-careless-0123456789"
URL = "https://cdn.example.com/a.png"
ORIGIN = "http://127.0.0.1:9"
KEY_ENVS = ("MJASYNC_API_KEY", "ACEDATACLOUD_API_TOKEN")


@pytest.fixture(autouse=True)
def _no_key_or_url_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*KEY_ENVS, "MJASYNC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


# -- the API key ---------------------------------------------------------------------------------------

BAD_KEYS = {
    "trailing LF": KEY + "\n",
    "CRLF inside": KEY[:5] + "\r\n" + KEY[5:],
    "lone CR": KEY + "\r",
    "NUL": KEY + "\x00",
    "C0 control": KEY + "\x1b",
    "DEL": KEY + "\x7f",
    "leading space": " " + KEY,
    "trailing tab": KEY + "\t",
    "space inside": KEY[:5] + " " + KEY[5:],
    "non-latin-1": KEY + "€",
    "latin-1 but not ASCII": KEY + "é",
    "no-break space": KEY + "\u00a0",
}


def _assert_refused_without(secret: str, build: Callable[[], object], *words: str) -> str:
    """`build()` raises InvalidRequestError whose message holds none of `secret` (nor its clean part)."""
    with pytest.raises(mjasync.InvalidRequestError) as caught:
        build()
    message = str(caught.value)
    assert secret not in message and secret.strip() not in message and KEY not in message, message
    assert repr(secret) not in repr(caught.value)
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_a_key_that_cannot_be_a_header_value_is_refused_by_the_constructor(key: str) -> None:
    message = _assert_refused_without(key, lambda: mjasync.Client(api_key=key, base_url=ORIGIN), "api_key")
    assert "visible ASCII" in message


# The environment cannot hold a NUL.
ENV_BAD_KEYS = {name: key for name, key in BAD_KEYS.items() if "\x00" not in key}


@pytest.mark.parametrize("key", ENV_BAD_KEYS.values(), ids=ENV_BAD_KEYS.keys())
@pytest.mark.parametrize("env", KEY_ENVS)
def test_a_bad_key_from_the_environment_is_refused_naming_the_variable(
    key: str, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env, key)
    _assert_refused_without(key, lambda: mjasync.Client(base_url=ORIGIN), env)


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_with_options_refuses_a_bad_key(key: str) -> None:
    client = mjasync.Client(api_key=EMULATOR_TOKEN, base_url=ORIGIN)
    _assert_refused_without(key, lambda: client.with_options(api_key=key), "api_key")


def test_the_message_says_where_the_bad_character_is_and_hints_at_strip() -> None:
    message = _assert_refused_without(
        KEY + "\n", lambda: mjasync.Client(api_key=KEY + "\n", base_url=ORIGIN), "line feed"
    )
    assert f"position {len(KEY) + 1} of {len(KEY) + 1}" in message
    assert "strip" in message


def test_a_key_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(mjasync.InvalidRequestError, match="api_key must be a str"):
        mjasync.Client(api_key=b"bytes-key", base_url=ORIGIN)  # type: ignore[arg-type]


async def test_a_key_with_a_line_break_never_reaches_aiohttp(mj_emulator: Any) -> None:
    """The issue's case: today the first request fails with a bare ValueError from aiohttp."""
    with pytest.raises(mjasync.InvalidRequestError):
        async with mjasync.Client(api_key=EMULATOR_TOKEN + "\r\n", base_url=mj_emulator.url) as client:
            await client.translate("猫")
    assert mj_emulator.requests == []


# -- default_headers -----------------------------------------------------------------------------------

BAD_HEADERS: dict[str, dict[Any, Any]] = {
    "LF in a value": {"x-team": "ops\nx-injected: 1"},
    "CR in a value": {"x-team": "ops\r"},
    "NUL in a value": {"x-team": "ops\x00"},
    "DEL in a value": {"x-team": "ops\x7f"},
    "colon in a name": {"x-team: ops\r\nx-other": "1"},
    "space in a name": {"x team": "ops"},
    "empty name": {"": "ops"},
    "non-ASCII name": {"x-équipe": "ops"},
    "int value": {"x-team": 1},
    "None value": {"x-team": None},
}


@pytest.mark.parametrize("headers", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_default_headers_aiohttp_would_refuse_are_refused_up_front(headers: dict[Any, Any]) -> None:
    with pytest.raises(mjasync.InvalidRequestError, match="default_headers"):
        mjasync.Client(api_key=KEY, base_url=ORIGIN, default_headers=headers)
    client = mjasync.Client(api_key=KEY, base_url=ORIGIN)
    with pytest.raises(mjasync.InvalidRequestError, match="default_headers"):
        client.with_options(default_headers=headers)


def test_a_bad_header_value_is_not_repeated_in_the_message() -> None:
    """A default header may carry a secret of its own (a team token): the message names only the header."""
    value = "team-secret-77\n"
    message = _assert_refused_without(
        value,
        lambda: mjasync.Client(api_key=KEY, base_url=ORIGIN, default_headers={"x-team-token": value}),
        "x-team-token",
    )
    assert "line feed" in message


async def test_ordinary_header_values_still_go_out(mj_emulator: Any) -> None:
    """Tabs inside, punctuation and non-ASCII text are legal header values and are sent as given."""
    headers = {"x-team": "render farm\t#2 (ops); ü"}
    async with mjasync.Client(
        api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, default_headers=headers
    ) as client:
        await client.translate("猫")
    assert mj_emulator.requests[-1].headers.get("x-team") is not None


# -- base_url: an origin, without credentials ----------------------------------------------------------

CREDENTIAL_URLS = {
    "user and password": ("https://alice:pa55word@api.acedata.cloud", "pa55word"),
    "user only": ("https://alice-the-user@api.acedata.cloud", "alice-the-user"),
    "password with whitespace": ("https://alice:pa 55@api.acedata.cloud", "pa 55"),
    "password with a slash": ("https://alice:pa/55@api.acedata.cloud", "pa/55"),
    "no scheme": ("alice:pa55word@api.acedata.cloud", "pa55word"),
    "credentials and a path": ("https://alice:pa55word@api.acedata.cloud/midjourney", "pa55word"),
}


@pytest.mark.parametrize(("url", "secret"), CREDENTIAL_URLS.values(), ids=CREDENTIAL_URLS.keys())
def test_credentials_in_base_url_are_refused_without_repeating_them(url: str, secret: str) -> None:
    message = _assert_refused_without(secret, lambda: mjasync.Client(api_key=KEY, base_url=url), "base_url")
    assert "credentials" in message and "api_key" in message


@pytest.mark.parametrize(("url", "secret"), CREDENTIAL_URLS.values(), ids=CREDENTIAL_URLS.keys())
def test_credentials_in_the_base_url_variable_or_with_options_are_refused(
    url: str, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MJASYNC_BASE_URL", url)
    _assert_refused_without(secret, lambda: mjasync.Client(api_key=KEY), "MJASYNC_BASE_URL")
    monkeypatch.delenv("MJASYNC_BASE_URL")
    client = mjasync.Client(api_key=KEY)
    _assert_refused_without(secret, lambda: client.with_options(base_url=url), "base_url")


NOT_ORIGINS = {
    "path prefix": "https://api.acedata.cloud/midjourney",
    "path prefix and slash": "https://api.acedata.cloud/midjourney/",
    "goapi prefix": "https://api.goapi.ai/mj/v2",
    "query": "https://api.acedata.cloud?region=eu",
    "empty query": "https://api.acedata.cloud/?",
    "fragment": "https://api.acedata.cloud#top",
    "path parameters": "https://api.acedata.cloud/;v=1",
}


@pytest.mark.parametrize("url", NOT_ORIGINS.values(), ids=NOT_ORIGINS.keys())
def test_a_base_url_with_a_path_query_or_fragment_is_refused_as_not_an_origin(url: str) -> None:
    with pytest.raises(mjasync.InvalidRequestError) as caught:
        mjasync.Client(api_key=KEY, base_url=url)
    message = str(caught.value)
    assert "origin" in message and "scheme://host[:port]" in message, message
    assert url in message, "the message names what was given"
    host = "https://api.goapi.ai" if "goapi" in url else "https://api.acedata.cloud"
    assert f"use {host!r}" in message, message


@pytest.mark.parametrize("url", NOT_ORIGINS.values(), ids=NOT_ORIGINS.keys())
def test_the_base_url_variable_and_with_options_are_checked_as_origins(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MJASYNC_BASE_URL", url)
    with pytest.raises(mjasync.InvalidRequestError, match=r"MJASYNC_BASE_URL.*origin"):
        mjasync.Client(api_key=KEY)
    monkeypatch.delenv("MJASYNC_BASE_URL")
    client = mjasync.Client(api_key=KEY)
    with pytest.raises(mjasync.InvalidRequestError, match=r"base_url.*origin"):
        client.with_options(base_url=url)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("https://api.acedata.cloud", "https://api.acedata.cloud"),
        ("https://api.acedata.cloud/", "https://api.acedata.cloud"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_an_origin_with_or_without_a_trailing_slash_is_accepted(given: str, kept: str) -> None:
    client = mjasync.Client(api_key=KEY, base_url=given)
    assert client.base_url == kept
    assert repr(client) == f"<mjasync.Client provider='acedata' base_url={kept!r}>"


def test_repr_shows_no_key_and_no_credentials() -> None:
    client = mjasync.Client(api_key=KEY, base_url="https://api.acedata.cloud/")
    derived = client.with_options(api_key=KEY + "-2", base_url="https://api.goapi.ai")
    for shown in (repr(client), repr(derived)):
        assert KEY not in shown and "@" not in shown


# -- prompt length -------------------------------------------------------------------------------------

LONG = ("a cat " * (MAX_PROMPT_CHARS // 6 + 1)).strip()


def test_the_default_limit_is_documented_and_sane() -> None:
    assert 1000 <= MAX_PROMPT_CHARS <= 10_000
    assert len(LONG) > MAX_PROMPT_CHARS


TOO_LONG_CALLS: dict[str, Callable[[mjasync.Client], object]] = {
    "imagine": lambda mj: mj.imagine(LONG),
    "imagine 100 KB": lambda mj: mj.imagine("x" * 100_000),
    "imagine, URLs and flags over": lambda mj: mj.imagine(
        "y" * (MAX_PROMPT_CHARS - 5), image_urls=[URL], params=mjasync.PromptParams(stylize=100)
    ),
    "blend": lambda mj: mj.blend([URL, URL], LONG),
    "act": lambda mj: mj.act("image-1", "variation_region", prompt=LONG, mask=URL),
    "reroll": lambda mj: mj.reroll("image-1", prompt=LONG),
    "variation_region": lambda mj: mj.variation_region("image-1", URL, LONG),
    "edits": lambda mj: mj.edits(URL, LONG),
    "videos": lambda mj: mj.videos(URL, LONG),
    "extend_video": lambda mj: mj.extend_video("video-1", prompt=LONG),
}


@pytest.mark.parametrize("call", TOO_LONG_CALLS.values(), ids=TOO_LONG_CALLS.keys())
def test_a_prompt_over_the_limit_is_refused_when_the_job_is_made(
    call: Callable[[mjasync.Client], object],
) -> None:
    client = mjasync.Client(api_key=KEY, base_url=ORIGIN)
    with pytest.raises(mjasync.InvalidRequestError) as caught:
        call(client)
    message = str(caught.value)
    assert f"the limit of {MAX_PROMPT_CHARS}" in message, message
    assert "max_prompt_chars" in message, "the message says how to change the limit"


async def test_shorten_and_translate_refuse_a_long_text_before_sending(
    mj: mjasync.Client, mj_emulator: Any
) -> None:
    with pytest.raises(mjasync.InvalidRequestError, match=f"prompt is {len(LONG)} characters"):
        await mj.shorten(LONG)
    with pytest.raises(mjasync.InvalidRequestError, match=f"content is {len(LONG)} characters"):
        await mj.translate(LONG)
    assert mj_emulator.requests == []


async def test_a_prompt_at_the_limit_is_sent(mj: mjasync.Client, mj_emulator: Any) -> None:
    text = "z" * MAX_PROMPT_CHARS
    job = mj.imagine(text)
    assert job.request.prompt == text
    job.close()  # built to be looked at
    assert (await mj.shorten(text)).prompts is not None


async def test_max_prompt_chars_raises_or_lowers_the_limit(mj_emulator: Any) -> None:
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, max_prompt_chars=10) as small:
        small.imagine("0123456789").close()  # within the limit: built (and not sent)
        with pytest.raises(mjasync.InvalidRequestError, match=r"11 characters.*the limit of 10"):
            small.imagine("0123456789a")
        with pytest.raises(mjasync.InvalidRequestError, match="the limit of 10"):
            await small.translate("0123456789a")
        small.with_options(wait_via="poll").imagine("0123456789").close()
        with pytest.raises(mjasync.InvalidRequestError, match="the limit of 10"):
            small.with_options(wait_via="poll").imagine("0123456789a")
        big = small.with_options(max_prompt_chars=len(LONG))
        long_job = big.imagine(LONG)
        assert long_job.request.prompt == LONG
        long_job.close()
    assert mj_emulator.requests == []


@pytest.mark.parametrize("value", [0, -1, 1.5, "6000", True, None])
def test_max_prompt_chars_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(mjasync.InvalidRequestError, match="max_prompt_chars"):
        mjasync.Client(api_key=KEY, base_url=ORIGIN, max_prompt_chars=value)  # type: ignore[arg-type]


async def test_describe_sends_no_prompt_so_the_limit_does_not_apply(mj_emulator: Any) -> None:
    async with mjasync.Client(api_key=EMULATOR_TOKEN, base_url=mj_emulator.url, max_prompt_chars=1) as client:
        assert (await client.describe(URL)).descriptions
