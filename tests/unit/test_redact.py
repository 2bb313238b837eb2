"""No held secret shows in any error, chained cause or log record, in any form a server could echo it in."""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from mjasync import _redact
from mjasync._exceptions import (
    BODY_CAP,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    LineTooLongError,
    MalformedLineError,
    MJError,
    ResponseDecodeError,
    StreamInterruptedError,
)
from mjasync._models.results import ImagineResult, ImagineUpdate
from mjasync._models.task import TaskRecord
from mjasync._ndjson import NdjsonDecoder
from mjasync._providers import AceDataProvider, GoapiProvider, Provider
from mjasync._redact import MIN_PARTIAL, REDACTED, RedactedCause, RedactingFilter, hold, redact_cause
from mjasync._transport._send import log, raise_connection_error

PROVIDERS: list[Provider] = [AceDataProvider(), GoapiProvider()]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: Secrets as keys look: a fixed head and a random tail, from an alphabet no filler below uses.
SECRETS = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=16, max_size=40).map(lambda s: f"sk-{s}")


class Owner:
    """Holds a secret in the registry for as long as it lives (as a Transport does)."""


def json_escaped(secret: str) -> str:
    return "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(secret))


def percent_escaped(secret: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in secret)


FORMS: dict[str, Callable[[str], str]] = {"raw": str, "json": json_escaped, "percent": percent_escaped}


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception reachable through `__cause__` and `__context__`."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [e for e in (exc.__cause__, exc.__context__) if e is not None]


def shown(error: BaseException) -> list[str]:
    """Every text the error shows: str, repr, its formatted chain, and each attribute of each link."""
    texts = ["".join(traceback.format_exception(error))]
    for exc in chain(error):
        texts += [str(exc), repr(exc), repr(exc.args)]
        for value in vars(exc).values():
            texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value))
        for name in ("object", "reason", "strerror", "filename", "msg", "text"):
            value = getattr(exc, name, None)
            if isinstance(value, (str, bytes)):
                texts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else value)
    return texts


def assert_clean(error: BaseException, secret: str) -> None:
    """The secret shows nowhere in the error, in no form, not even a `MIN_PARTIAL`-long piece of it."""
    pieces = {secret[i : i + MIN_PARTIAL] for i in range(len(secret) - MIN_PARTIAL + 1)} - {"sk-"}
    for text in shown(error):
        assert secret not in text, text
        assert _redact.redact(text) == text, text
        # Only a piece of the random tail proves a leak (the `sk-` head could be anywhere).
        leaked = [piece for piece in pieces if not piece.startswith("sk-") and piece in text]
        assert not leaked, (leaked, text)


@SETTINGS
@given(secret=SECRETS, form=st.sampled_from(list(FORMS)), at=st.integers(0, 3 * BODY_CAP))
def test_api_errors_redact_every_field_before_capping(secret: str, form: str, at: int) -> None:
    """Message, body (wherever the cap falls), code and trace id of every error class hide the secret."""
    owner = Owner()
    hold(owner, secret)
    echoed = FORMS[form](secret)
    body = ("." * at + echoed + "." * 100).encode()
    errors: list[MJError] = [
        ResponseDecodeError(f"bad {echoed}", body=body, trace_id=echoed, code=echoed, request="POST /x"),
        AuthenticationError(f"key {echoed}", status=401, body=body, trace_id=f"Bearer {echoed}"),
        APIConnectionError(f"reset {echoed}", may_have_reached_server=True, body=body),
        StreamInterruptedError(echoed, last_update=ImagineResult(image_url=echoed, raw={"k": [echoed]})),
    ]
    late = ResponseDecodeError("fine")
    late.message = f"set later {echoed}"
    late.body = body.decode()
    errors.append(late)
    for error in errors:
        assert_clean(error, secret)
    interrupted = errors[3]
    assert isinstance(interrupted, StreamInterruptedError)
    update = interrupted.last_update
    assert isinstance(update, ImagineResult) and update.raw is not None
    assert REDACTED in update.raw["k"][0]


@SETTINGS
@given(secret=SECRETS, form=st.sampled_from(["raw", "json"]), at=st.integers(0, 120))
def test_a_line_is_redacted_before_its_prefix_is_cut(secret: str, form: str, at: int) -> None:
    """A line's quoted prefix never shows the secret, not even when the 64-byte cut falls inside it."""
    owner = Owner()
    hold(owner, secret)
    line = ("." * at + FORMS[form](secret) + "...").encode()
    assert_clean(MalformedLineError(3, line, "bad"), secret)
    assert_clean(LineTooLongError(10, line[:64]), secret)


def stream_decoder(provider: Provider) -> NdjsonDecoder[ImagineResult]:
    """Built the way a stream builds its reader's decoder."""
    return NdjsonDecoder(
        lambda run: provider.decode_updates(ImagineUpdate, run),
        lambda line, number: provider.decode_update(ImagineUpdate, line, number),
    )


@SETTINGS
@given(secret=SECRETS, data=st.data())
def test_stream_lines_hide_the_secret_split_across_chunks_or_lines(secret: str, data: st.DataObject) -> None:
    """A malformed line echoing the secret, cut anywhere by the chunking or split over two lines."""
    owner = Owner()
    hold(owner, secret)
    cut = data.draw(st.integers(MIN_PARTIAL, len(secret) - MIN_PARTIAL), label="cut")
    good = b'{"progress": 10}\n'
    streams = {
        "one line": good + f'{{"echo": {secret}}}\n'.encode(),
        "two lines": good + f'{{"echo": "{secret[:cut]}\n{secret[cut:]}"}}\n'.encode(),
    }
    for provider in PROVIDERS:
        for stream in streams.values():
            chunk_at = data.draw(st.integers(0, len(stream)), label="chunk")
            decoder = stream_decoder(provider)
            with pytest.raises(MJError) as caught:
                for chunk in (stream[:chunk_at], stream[chunk_at:]):
                    decoder.feed(chunk)
                decoder.finish()
            assert_clean(caught.value, secret)


@SETTINGS
@given(secret=SECRETS, status=st.sampled_from([400, 401, 403, 429, 500, 504]))
def test_status_errors_hide_a_secret_echoed_in_body_or_header(secret: str, status: int) -> None:
    """Both providers' status errors, built from a body and an `x-request-id` that echo the key."""
    owner = Owner()
    hold(owner, secret)
    headers = CIMultiDictProxy(CIMultiDict({"x-request-id": f"Bearer {secret}", "retry-after": "1"}))
    for provider in PROVIDERS:
        for body in (f'{{"message": "{json_escaped(secret)}"}}', f"<h1>{secret}</h1>", ""):
            assert_clean(provider.status_error(status, headers, body.encode()), secret)


class HeaderError(Exception):
    """A foreign exception as aiohttp makes them: a message, plus attributes holding headers and bytes."""

    def __init__(self, message: str, headers: dict[str, str], raw: bytes) -> None:
        super().__init__(message)
        self.headers = headers
        self.raw = raw


@SETTINGS
@given(secret=SECRETS, cut=st.integers(MIN_PARTIAL, 20))
def test_foreign_causes_are_scrubbed_in_place(secret: str, cut: int) -> None:
    """Chained causes (and their own causes and contexts) lose the secret, in args and attributes."""
    owner = Owner()
    hold(owner, secret)
    innermost = UnicodeDecodeError("utf-8", f"xx{secret}\xff".encode("latin-1"), 2, 3, "bad")
    middle = HeaderError(
        f"Invalid header value char:\n\n  b'x-request-id: {secret[:cut]}'\n  ^",  # aiohttp quotes an excerpt
        {"X-API-KEY": secret},
        f"Bearer {secret}".encode(),
    )
    middle.__cause__ = innermost
    request_info = aiohttp.RequestInfo(
        URL("http://127.0.0.1/x"),
        "POST",
        CIMultiDictProxy(CIMultiDict({"authorization": f"Bearer {secret}"})),
    )
    outer = aiohttp.ClientResponseError(request_info, (), status=400, message=f"bad line: {secret}")
    outer.__context__ = middle
    with pytest.raises(APIConnectionError) as caught:
        raise_connection_error(outer, "POST /x", sent=True)
    assert_clean(caught.value, secret)
    assert caught.value.__cause__ is outer, "cleaned in place, type kept"
    assert "Bearer [redacted]" in outer.request_info.headers["authorization"]


class Stubborn(Exception):
    """Shows a secret its attributes do not hold: only standing in for it can hide it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._encoded = base64.b64encode(secret.encode())

    def __str__(self) -> str:
        return base64.b64decode(self._encoded).decode()


def test_a_cause_that_cannot_be_cleaned_is_replaced_by_a_placeholder() -> None:
    """A foreign exception that still shows a secret after scrubbing is replaced in the chain."""
    secret = "sk-q7x9z2w4v6k8m1n3p5"
    owner = Owner()
    hold(owner, secret)
    stubborn = Stubborn(secret)
    stubborn.__cause__ = ValueError(secret)
    cleaned = redact_cause(stubborn)
    assert isinstance(cleaned, RedactedCause) and "Stubborn" in str(cleaned)
    error = ResponseDecodeError("x")
    error.__cause__ = stubborn  # set from Python: the error cleans it itself
    assert isinstance(error.__cause__, RedactedCause)
    assert_clean(error, secret)


@SETTINGS
@given(secret=SECRETS, form=st.sampled_from(list(FORMS)))
def test_log_records_of_the_mjasync_logger_are_redacted(
    secret: str, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Message and args of every `mjasync` record, and the traceback of a logged chain, hide the secret."""
    owner = Owner()
    hold(owner, secret)
    assert any(isinstance(f, RedactingFilter) for f in log.filters)
    echoed = FORMS[form](secret)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="mjasync"):
        log.warning("answer was %s (%r)", echoed, {"key": echoed})
        log.info(f"inline {echoed}")
        try:
            try:
                raise ValueError(f"wrapped {echoed}")
            except ValueError as exc:
                raise ResponseDecodeError(f"decoding {echoed}") from redact_cause(exc)
        except ResponseDecodeError:
            log.exception("failed")
            logging.getLogger("user").exception("caller logs it")
    assert len(caplog.records) == 4
    for record in caplog.records:
        for text in (record.getMessage(), caplog.text):
            assert secret not in text and _redact.redact(text) == text


def test_nothing_is_copied_or_changed_while_no_secret_shows() -> None:
    """The happy path: values without a secret come back as the very same objects."""
    owner = Owner()
    hold(owner, "sk-held-but-absent-000")
    record: TaskRecord[Any] = TaskRecord(id="t", response=ImagineUpdate(raw={"a": ["b"]}), request={"p": 1})
    for value in ("text", b"bytes", [1, "a"], ("a",), {"a": "b"}, record, None, 3):
        assert _redact.redact_value(value) is value
    exc = ValueError("plain")
    assert redact_cause(exc) is exc and exc.args == ("plain",)


def test_deep_structures_are_cut_not_recursed() -> None:
    """A decoded answer nested past any sane depth is replaced, not walked into a RecursionError."""
    owner = Owner()
    hold(owner, "sk-deep-secret-000000")
    deep: Any = "sk-deep-secret-000000"
    for _ in range(5000):
        deep = [deep]
    error = StreamInterruptedError("x", last_update=ImagineUpdate(raw={"deep": deep}))
    assert "sk-deep-secret" not in repr(error.last_update)


def test_a_status_error_stays_typed_with_the_secret_in_every_field() -> None:
    owner = Owner()
    hold(owner, "sk-typed-000000000")
    error = AceDataProvider().status_error(
        401, CIMultiDictProxy(CIMultiDict()), b'{"error": {"code": "sk-typed-000000000", "message": "m"}}'
    )
    assert isinstance(error, APIStatusError) and error.code == REDACTED


@SETTINGS
@given(
    secret=SECRETS,
    escaped=st.text(min_size=1, max_size=8).map(lambda s: json.dumps(s)[1:-1]),
    lone=st.integers(0xD800, 0xDFFF).map(lambda code: f"\\u{code:04x}"),
)
def test_escaped_astral_characters_and_lone_surrogates_never_break_redaction(
    secret: str, escaped: str, lone: str
) -> None:
    """An ASCII-only JSON encoder writes an emoji as a surrogate pair (`\\ud83d\\udd04`), and a hostile
    one may write half a pair: beside an echoed key, the body still comes back as bytes, redacted."""
    owner = Owner()
    _redact.hold(owner, secret)
    body = f'{{"message": "bad key {secret}", "hint": "{escaped} \\ud83d\\udd04 {lone}"}}'.encode()
    cleaned = _redact.redact_bytes(body)
    assert secret.encode() not in cleaned and b"[redacted]" in cleaned
    assert "\U0001f504" in cleaned.decode("utf-8")  # the pair is one character again
    error = APIStatusError("refused", status=400, body=body)
    assert_clean(error, secret)


@SETTINGS
@given(secret=SECRETS, cut=st.integers(MIN_PARTIAL, 40))
def test_an_escaped_secret_cut_short_by_an_excerpt_is_redacted(secret: str, cut: int) -> None:
    """A body capped inside a JSON-escaped key (`sk\\u002d...`): the piece left is still a leak."""
    owner = Owner()
    _redact.hold(owner, secret)
    piece = secret[: min(cut, len(secret) - 1)]
    body = f'{{"echo": "Bearer {json_escaped(secret)}'
    excerpt = body[: body.index(json_escaped(secret)) + len(json_escaped(piece))]
    cleaned = _redact.redact(excerpt, excerpt=True)
    assert secret[:MIN_PARTIAL] not in _redact._unescape(cleaned), cleaned
    tail_cut = f'{json_escaped(secret)[-len(json_escaped(secret[-cut:])) :]}" }}'
    assert secret[-MIN_PARTIAL:] not in _redact._unescape(_redact.redact(tail_cut, excerpt=True))
