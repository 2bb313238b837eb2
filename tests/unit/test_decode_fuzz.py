"""One bad answer is one call's error: every decode path of both providers, fed arbitrary bytes and
hostile-but-valid JSON, raises nothing but `MJError` subclasses (a status error is built, never raised)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from mjasync._exceptions import APIStatusError, MJError
from mjasync._models.results import (
    DescribeResult,
    EditsResult,
    ImagineResult,
    Result,
    SeedResult,
    ShortenResult,
    SubmitReceipt,
    TranslateResult,
    VideoResult,
)
from mjasync._ndjson import NdjsonDecoder
from mjasync._providers import AceDataProvider, GoapiProvider, Provider

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PROVIDERS: list[Provider] = [AceDataProvider(), GoapiProvider()]
KINDS: list[type[Result]] = [
    ImagineResult,
    EditsResult,
    VideoResult,
    DescribeResult,
    ShortenResult,
    TranslateResult,
    SeedResult,
    SubmitReceipt,
    Result,
]
#: Field names the two providers' bodies use, so that hostile objects reach past the top-level check.
FIELD_NAMES = [
    "task_id", "success", "trace_id", "error", "code", "message", "detail", "image_id", "image_url",
    "image_width", "progress", "actions", "sub_image_urls", "descriptions", "prompts", "content", "seed",
    "video_urls", "id", "type", "response", "request", "state", "created_at", "items", "count", "status",
    "process_time", "meta", "task_type", "task_request", "task_result", "task_progress", "image_urls",
    "error_messages", "description", "data",
]  # fmt: skip

HUGE_NUMBERS = st.sampled_from(
    [10**30, -(10**30), 2**64, -(2**63) - 1, 1e308, -1e308, 5e-324, math.inf, -math.inf, math.nan]
)
SCALARS = st.none() | st.booleans() | st.integers() | HUGE_NUMBERS | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=6)
    ),
    max_leaves=25,
)
HOSTILE_OBJECTS = st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES, max_size=8)


def _fixture_bodies() -> list[bytes]:
    bodies = [path.read_bytes() for path in sorted((FIXTURES / "acedata").glob("*.json"))]
    bodies += [path.read_bytes() for path in sorted((FIXTURES / "goapi").glob("*.json"))]
    return bodies


FIXTURE_BODIES = _fixture_bodies()


@st.composite
def truncated_fixture(draw: st.DrawFn) -> bytes:
    """A documented answer cut short, or with an invalid UTF-8 byte put in."""
    body = draw(st.sampled_from(FIXTURE_BODIES))
    at = draw(st.integers(0, len(body)))
    if draw(st.booleans()):
        return body[:at]
    return body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + body[at:]


def hostile_json(value: Any) -> bytes:
    # allow_nan: `NaN` and `Infinity` are not JSON, which is exactly the point.
    return json.dumps(value, allow_nan=True).encode()


BODIES = (
    st.binary(max_size=300)
    | HOSTILE_OBJECTS.map(hostile_json)
    | JSON_VALUES.map(hostile_json)
    | st.dictionaries(
        st.sampled_from(["data", "items", "response", "meta", "task_result"]), HOSTILE_OBJECTS
    ).map(hostile_json)
    | truncated_fixture()
)

#: Nesting far past any recursion limit, in each container and under a field a decoder descends into.
DEEP_BODIES = [
    pytest.param(b"[" * 5000 + b"]" * 5000, id="array-5000"),
    pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, id="object-5000"),
    pytest.param(b'{"response":' * 5000 + b"{}" + b"}" * 5000, id="response-5000"),
    pytest.param(b'{"data": {"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", id="data-100000"),
    pytest.param(b'{"items": [' + b"[" * 5000 + b"]" * 5000 + b"]}", id="items-5000"),
    pytest.param(b'{"task_result": {"actions": ' + b"[" * 5000 + b"]" * 5000 + b"}}", id="task_result-5000"),
    pytest.param(b'{"task_id": "t", "x": ' + b"[" * 5000, id="unclosed-5000"),
]


def _touch(value: Any, provider: Provider) -> None:
    """What a caller does next with a decoded value, which must not blow up either."""
    if isinstance(value, Result):
        _ = value.is_final, value.failed
        if isinstance(value, ImagineResult):
            provider.allowed_actions(value)
    elif hasattr(value, "response"):
        provider.task_state(value)
        _touch(value.response, provider)
    elif hasattr(value, "items"):
        for item in value.items:
            _touch(item, provider)


def decode_paths(provider: Provider, kind: type[Result]) -> dict[str, Callable[[bytes], Any]]:
    """Every way the client hands an answer's bytes to `provider`, expecting a `kind` result."""

    def stream(body: bytes) -> list[Any]:
        decoder: NdjsonDecoder[Any] = NdjsonDecoder(
            lambda run: provider.decode_updates(kind, run),
            lambda line, number: provider.decode_update(kind, line, number),
        )
        return decoder.feed(body) + decoder.finish()

    return {
        "decode_result": lambda body: provider.decode_result(kind, body),
        "decode_receipt": provider.decode_receipt,
        "decode_task": provider.decode_task,
        "decode_task[kind]": lambda body: provider.decode_task(body, kind),
        "decode_task_batch": provider.decode_task_batch,
        "decode_task_batch[kind]": lambda body: provider.decode_task_batch(body, kind),
        "task_bodies[one]": lambda body: provider.task_bodies(body, batch=False),
        "task_bodies[batch]": lambda body: provider.task_bodies(body, batch=True),
        "decode_update": lambda body: provider.decode_update(kind, body, 1),
        "decode_updates": lambda body: provider.decode_updates(kind, body),
        "ndjson stream": stream,
        "decode_callback": lambda body: provider.decode_callback(kind, body),
    }


def decode_everywhere(provider: Provider, kind: type[Result], body: bytes) -> None:
    """Feed `body` to every decode path; each returns a usable value or raises an `MJError`."""
    for name, path in decode_paths(provider, kind).items():
        try:
            value = path(body)
        except MJError:
            continue
        except BaseException as exc:
            raise AssertionError(f"{provider.name} {name} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, list):
            for item in value:
                _touch(item, provider)
        elif isinstance(value, dict):
            assert all(isinstance(item, bytes) for item in value.values())
        else:
            _touch(value, provider)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, kind=st.sampled_from(KINDS))
def test_any_answer_gives_a_value_or_an_mj_error(provider: Provider, body: bytes, kind: type[Result]) -> None:
    """Whatever the bytes, every decode path returns a value a caller can use or raises an `MJError`."""
    decode_everywhere(provider, kind, body)


@pytest.mark.parametrize("body", DEEP_BODIES)
@pytest.mark.parametrize("kind", [ImagineResult, Result], ids=lambda k: k.__name__)
@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
def test_deep_nesting_is_an_mj_error(provider: Provider, kind: type[Result], body: bytes) -> None:
    """JSON nested past the recursion limit is this call's `MJError`, never a RecursionError."""
    decode_everywhere(provider, kind, body)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(300, 599),
    body=BODIES,
    header_values=st.dictionaries(
        st.sampled_from(["x-request-id", "retry-after", "content-type"]), st.text(max_size=40), max_size=3
    ),
)
def test_any_error_body_gives_the_typed_status_error(
    provider: Provider, status: int, body: bytes, header_values: dict[str, str]
) -> None:
    """`status_error` builds (never raises) the typed error for any error body and headers."""
    headers = CIMultiDictProxy(CIMultiDict(header_values))
    error = provider.status_error(status, headers, body, request="POST /x")
    assert isinstance(error, APIStatusError) and error.status == status
    assert str(error) and repr(error)


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("body", DEEP_BODIES)
def test_deeply_nested_error_body_gives_the_typed_status_error(provider: Provider, body: bytes) -> None:
    """An error body nested past the recursion limit still gives the typed status error."""
    error = provider.status_error(500, CIMultiDictProxy(CIMultiDict()), body)
    assert isinstance(error, APIStatusError) and error.status == 500
