"""AceData error mapping: every documented status and body shape becomes its typed error, without leaking the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from mjasync._config import Timeouts
from mjasync._exceptions import (
    BODY_CAP,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    JobFailedError,
    LineTooLongError,
    MalformedLineError,
    MJError,
    ModerationError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    StreamError,
    StreamInterruptedError,
)
from mjasync._models.results import ImagineUpdate, Result
from mjasync._providers.acedata import AceDataProvider
from mjasync._transport._send import Transport

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "acedata"
PROVIDER = AceDataProvider()
TOKEN = "sk-secret-123"
TRACE = "2cf86e86-22a4-46e1-ac2f-032c0f2a4e89"
#: Every subclass of APIStatusError, the typed errors for an HTTP status.
STATUS_ERRORS: list[type[APIStatusError]] = [
    BadRequestError,
    AuthenticationError,
    PermissionDeniedError,
    ModerationError,
    QuotaExceededError,
    NotFoundError,
    RateLimitError,
    ServerError,
    GatewayTimeoutError,
]


def headers(**values: str) -> CIMultiDictProxy[str]:
    """Response headers as aiohttp hands them to the transport (case-insensitive); `_` spells `-`."""
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def body_of(code: str | None, message: str | None = "m", **extra: Any) -> bytes:
    """An error body in the OAS / scaffold shape (no `success` key)."""
    return json.dumps({"error": {"code": code, "message": message}, "trace_id": TRACE, **extra}).encode()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def transport() -> Transport:
    """A transport that knows the API key; pool and timeouts are stubs, since only `scrub` is used."""
    return Transport(
        None,  # type: ignore[arg-type]
        base_url="https://api.acedata.cloud",
        headers={"authorization": f"Bearer {TOKEN}"},
        secrets=(TOKEN,),
        timeouts=Timeouts(),
        max_response_bytes=1 << 20,
        error_for_status=PROVIDER.status_error,
    )


# -- documented status / code shapes ---------------------------------------------------------------------

DOCUMENTED = [
    pytest.param(400, "bad_request", BadRequestError, id="400-bad_request"),
    pytest.param(400, "api_not_implemented", BadRequestError, id="400-api_not_implemented"),
    pytest.param(400, "token_mismatched", AuthenticationError, id="400-token_mismatched"),
    pytest.param(400, "no_token", AuthenticationError, id="400-no_token"),
    pytest.param(401, "invalid_token", AuthenticationError, id="401-invalid_token"),
    pytest.param(401, "token_expired", AuthenticationError, id="401-token_expired"),
    pytest.param(401, "token_mismatched", AuthenticationError, id="401-token_mismatched-scaffold"),
    pytest.param(403, "forbidden", ModerationError, id="403-forbidden"),
    pytest.param(403, "used_up", QuotaExceededError, id="403-used_up"),
    pytest.param(403, "disabled", PermissionDeniedError, id="403-disabled"),
    pytest.param(403, None, PermissionDeniedError, id="403-no-code"),
    pytest.param(404, "no_api", NotFoundError, id="404-no_api"),
    pytest.param(404, "not_found", NotFoundError, id="404-not_found"),
    pytest.param(429, "too_many_requests", RateLimitError, id="429-too_many_requests"),
    pytest.param(500, "api_error", ServerError, id="500-api_error"),
    pytest.param(500, "unknown", ServerError, id="500-unknown"),
    pytest.param(503, None, ServerError, id="503"),
    pytest.param(504, "timeout", GatewayTimeoutError, id="504-timeout"),
    pytest.param(499, "connection_reset", APIStatusError, id="499-connection_reset"),
]


@pytest.mark.parametrize(("status", "code", "cls"), DOCUMENTED)
def test_documented_shape_maps_to_its_class(status: int, code: str | None, cls: type[APIStatusError]) -> None:
    """Each documented (status, code) pair gives exactly its error class, with status, code, message, trace_id."""
    error = PROVIDER.status_error(status, headers(), body_of(code, "the message"))
    assert type(error) is cls
    assert isinstance(error, (APIStatusError, APIError, MJError))
    assert error.status == status
    assert error.code == code
    assert error.message == "the message"
    assert error.trace_id == TRACE


@pytest.mark.parametrize("cls", STATUS_ERRORS)
def test_status_errors_share_the_hierarchy(cls: type[APIStatusError]) -> None:
    """Every status error is an APIStatusError, an APIError and an MJError."""
    assert issubclass(cls, APIStatusError)
    assert issubclass(cls, APIError)
    assert issubclass(cls, MJError)


def test_moderation_and_quota_are_permission_denied_and_gateway_timeout_is_server_error() -> None:
    """The refinements keep their parent: catching PermissionDeniedError or ServerError still works."""
    assert issubclass(ModerationError, PermissionDeniedError)
    assert issubclass(QuotaExceededError, PermissionDeniedError)
    assert issubclass(GatewayTimeoutError, ServerError)


def test_seed_api_error_fixture() -> None:
    """The edits guide's 500 body (with `success: false`) maps to ServerError with its code, message, trace_id."""
    error = PROVIDER.status_error(
        500, headers(content_type="application/json"), fixture("seed004_error_api_error.json")
    )
    assert type(error) is ServerError
    assert (error.status, error.code, error.message, error.trace_id) == (
        500,
        "api_error",
        "fetch failed",
        TRACE,
    )


def test_gateway_timeout_fixture() -> None:
    """The documented 504 `timeout` body maps to GatewayTimeoutError, a ServerError."""
    error = PROVIDER.status_error(504, headers(), fixture("note_error_timeout_504_fixed.json"))
    assert type(error) is GatewayTimeoutError
    assert isinstance(error, ServerError)
    assert (error.code, error.message, error.trace_id) == ("timeout", "Timeout to generate the image.", "…")


def test_forbidden_fixture() -> None:
    """The 403 `forbidden` body maps to ModerationError with the moderator's message."""
    error = PROVIDER.status_error(403, headers(), fixture("note_error_forbidden_403_composed.json"))
    assert type(error) is ModerationError
    assert error.code == "forbidden"
    assert error.message.startswith("Sorry! Our Al moderators")


@pytest.mark.parametrize(
    ("value", "expected"), [("7", 7.0), ("0.5", 0.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)]
)
def test_rate_limit_reads_retry_after(value: str, expected: float) -> None:
    """429 gives RateLimitError whose retry_after comes from the Retry-After header."""
    error = PROVIDER.status_error(429, headers(Retry_After=value), body_of("too_many_requests"))
    assert isinstance(error, RateLimitError)
    assert error.retry_after == expected


@pytest.mark.parametrize("extra", [{}, {"Retry-After": "soon"}])
def test_rate_limit_without_usable_retry_after(extra: dict[str, str]) -> None:
    """Without a usable Retry-After header, retry_after is None."""
    error = PROVIDER.status_error(429, CIMultiDictProxy(CIMultiDict(extra)), body_of("too_many_requests"))
    assert isinstance(error, RateLimitError)
    assert error.retry_after is None


def test_too_many_requests_code_wins_over_status() -> None:
    """A `too_many_requests` code under another status is still a RateLimitError with retry_after."""
    error = PROVIDER.status_error(400, headers(retry_after="3"), body_of("too_many_requests"))
    assert type(error) is RateLimitError
    assert error.status == 400
    assert error.retry_after == 3.0


HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def test_html_502_is_a_server_error_with_a_clean_message() -> None:
    """A gateway's HTML 502 page becomes a ServerError whose message has no HTML in it."""
    error = PROVIDER.status_error(502, headers(content_type="text/html; charset=utf-8"), HTML_502)
    assert type(error) is ServerError
    assert error.status == 502
    assert error.code is None
    assert "<" not in error.message
    assert "\n" not in error.message
    assert "502" in error.message
    assert "text/html" in error.message
    assert "<" not in str(error)
    assert error.body == HTML_502.decode()


def test_503_with_an_empty_body() -> None:
    """503 with no body is a ServerError saying the body was empty."""
    error = PROVIDER.status_error(503, headers(), b"")
    assert type(error) is ServerError
    assert error.status == 503
    assert "empty" in error.message


# -- odd bodies ---------------------------------------------------------------------------------------------

BODIES = [
    pytest.param(
        b'{"success": false, "error": {"code": "bad_request", "message": "prompt is required"}, "trace_id": "t1"}',
        ("bad_request", "prompt is required", "t1"),
        id="success-false",
    ),
    pytest.param(
        b'{"error": {"code": "bad_request", "message": "prompt is required"}, "trace_id": "t1"}',
        ("bad_request", "prompt is required", "t1"),
        id="no-success-key",
    ),
    pytest.param(b'{"error": "payment required"}', (None, "payment required", None), id="error-string"),
    pytest.param(b'{"detail": "Not authenticated"}', (None, "Not authenticated", None), id="detail-string"),
    pytest.param(
        b'{"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}',
        (None, '[{"loc":["body","prompt"],"msg":"field required"}]', None),
        id="detail-list",
    ),
    pytest.param(b'{"message": "Bad request"}', (None, "Bad request", None), id="message-only"),
    pytest.param(
        b'{"error": {"code": "bad_request"}, "trace_id": "t2"}', ("bad_request", None, "t2"), id="no-message"
    ),
    pytest.param(b'{"error": null, "trace_id": "t3"}', (None, None, "t3"), id="error-null"),
    pytest.param(
        b'{"error": {"code": 17, "message": ["x"]}}', (None, None, None), id="error-fields-not-strings"
    ),
    pytest.param(b"", (None, None, None), id="empty"),
    pytest.param(b"Bad Request", (None, None, None), id="not-json"),
    pytest.param(b'[{"error": {"code": "forbidden"}}]', (None, None, None), id="json-list"),
    pytest.param(b"null", (None, None, None), id="json-null"),
    pytest.param(b'"bad_request"', (None, None, None), id="json-string"),
    pytest.param(b"\xff\xfe\x00{", (None, None, None), id="not-utf8"),
]


@pytest.mark.parametrize(("body", "expected"), BODIES)
def test_any_body_shape_maps_without_raising(
    body: bytes, expected: tuple[str | None, str | None, str | None]
) -> None:
    """Whatever the 400 body holds, the result is a BadRequestError with what the body said, or a stand-in message."""
    code, message, trace_id = expected
    error = PROVIDER.status_error(400, headers(), body)
    assert type(error) is BadRequestError
    assert error.status == 400
    assert error.code == code
    assert error.trace_id == trace_id
    if message is not None:
        assert error.message == message
    else:
        assert error.message.startswith("HTTP 400")
        assert "non-JSON" not in error.message or not body.lstrip().startswith((b"{", b"["))
    assert error.body == body.decode("utf-8", "replace")


def test_trace_id_from_x_request_id_when_the_body_has_none() -> None:
    """Without a trace_id in the body, the x-request-id header gives it."""
    error = PROVIDER.status_error(500, headers(X_Request_Id="req-1"), b'{"error": {"code": "api_error"}}')
    assert error.trace_id == "req-1"
    error = PROVIDER.status_error(502, headers(X_Request_Id="req-2"), HTML_502)
    assert error.trace_id == "req-2"


def test_body_trace_id_wins_over_x_request_id() -> None:
    """The body's trace_id is kept when the header also has one."""
    error = PROVIDER.status_error(500, headers(x_request_id="req-1"), body_of("api_error"))
    assert error.trace_id == TRACE


def test_request_description_is_kept() -> None:
    """The `request` given to status_error is kept and shown by str()."""
    error = PROVIDER.status_error(404, headers(), body_of("no_api"), request="POST /midjourney/nope")
    assert error.request == "POST /midjourney/nope"
    assert "POST /midjourney/nope" in str(error)


@pytest.mark.parametrize("status", [413, 500])
def test_a_one_megabyte_body_is_capped(status: int) -> None:
    """An error keeps only BODY_CAP characters of a 1 MB body, plus a note of how much was cut."""
    body = b'{"error": {"code": "api_error", "message": "' + b"x" * (1 << 20) + b'"}}'
    error = PROVIDER.status_error(status, headers(), body)
    assert error.body is not None
    assert error.body.startswith(body[:BODY_CAP].decode())
    assert len(error.body) < BODY_CAP + 64
    assert f"{len(body) - BODY_CAP} more characters" in error.body


def test_a_small_body_is_kept_whole() -> None:
    """A body under the cap is kept verbatim."""
    body = fixture("seed004_error_api_error.json")
    assert PROVIDER.status_error(500, headers(), body).body == body.decode()


# -- token hygiene -------------------------------------------------------------------------------------------

ECHOING_BODIES = [
    pytest.param(
        json.dumps(
            {"error": {"code": "invalid_token", "message": f"token {TOKEN} is invalid"}, "trace_id": "t"}
        ),
        id="message",
    ),
    pytest.param(json.dumps({"detail": f"Bearer {TOKEN} rejected"}), id="detail"),
    pytest.param(json.dumps({"error": f"bad key {TOKEN}"}), id="error-string"),
    pytest.param(f"<html><body>Authorization: Bearer {TOKEN}</body></html>", id="html"),
    pytest.param(
        json.dumps({"error": {"code": "bad_request", "message": "x"}, "echo": {"authorization": TOKEN}}),
        id="echo",
    ),
    pytest.param(json.dumps({"error": {"code": "invalid_token", "message": TOKEN * 3}}), id="repeated"),
]


@pytest.mark.parametrize("body", ECHOING_BODIES)
@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
def test_scrubbed_body_never_shows_the_token(status: int, body: str) -> None:
    """After the transport scrubs a body that echoed the key, neither str, repr, message nor body holds it."""
    raw = body.encode()
    assert TOKEN.encode() in raw
    error = PROVIDER.status_error(status, headers(), transport().scrub(raw))
    for text in (str(error), repr(error), error.message, error.body or ""):
        assert TOKEN not in text
    assert "[redacted]" in (error.body or "")


def test_json_escaped_token_is_not_shown() -> None:
    """A token echoed with JSON escapes in its characters is still kept out of the error's message."""
    raw = b'{"error": {"code": "invalid_token", "message": "token sk\\u002dsecret-123 is invalid"}}'
    error = transport().error_for_status(401, headers(), raw)
    assert TOKEN not in str(error) and TOKEN not in repr(error) and "[redacted]" in error.message


def _error_classes() -> list[APIError]:
    """One instance of every APIError class, with status, code, message and trace_id set."""
    common: dict[str, Any] = {"status": 418, "code": "the_code", "trace_id": "trace-9"}
    errors: list[APIError] = [
        cls("the message", **common)
        for cls in (
            APIError,
            APIStatusError,
            *STATUS_ERRORS,
            ResponseDecodeError,
            StreamError,
            StreamInterruptedError,
            JobFailedError,
        )
    ]
    errors += [
        APIConnectionError("the message", may_have_reached_server=True, **common),
        APITimeoutError("the message", may_have_reached_server=False, **common),
    ]
    for special in (LineTooLongError(10, b"abc"), MalformedLineError(3, b"{", "bad")):
        special.status, special.code, special.trace_id = 418, "the_code", "trace-9"
        special.message = "the message"
        errors.append(special)
    return errors


@pytest.mark.parametrize("error", _error_classes(), ids=lambda e: type(e).__name__)
def test_repr_and_str_show_the_fields(error: APIError) -> None:
    """repr() names the class and shows status, code, message and trace_id; str() includes the trace_id."""
    text = repr(error)
    assert text.startswith(type(error).__name__ + "(")
    for part in ("status=418", "code='the_code'", "message='the message'", "trace_id='trace-9'"):
        assert part in text
    assert "trace-9" in str(error)
    assert "the message" in str(error)


def test_repr_of_a_mapped_error() -> None:
    """A mapped error's repr shows what the body said and its str carries status, code and trace_id."""
    error = PROVIDER.status_error(403, headers(), body_of("used_up", "Your packaged has been used up"))
    assert repr(error) == (
        f"QuotaExceededError(status=403, code='used_up', message='Your packaged has been used up', trace_id='{TRACE}')"
    )
    assert str(error) == f"403 used_up: Your packaged has been used up (trace_id={TRACE})"


# -- failed jobs --------------------------------------------------------------------------------------------


def test_job_failed_from_the_failure_callback() -> None:
    """The seed's failure webhook body becomes a JobFailedError with its code, message and task_id."""
    result = PROVIDER.decode_result(ImagineUpdate, fixture("seed000_callback_failure.json"))
    error = PROVIDER.job_failed(result, request="POST /midjourney/imagine")
    assert type(error) is JobFailedError
    assert not isinstance(error, APIStatusError)
    assert error.code == "bad_request"
    assert error.message == "Unrecognized argument(s): `-c`, `x`"
    assert error.task_id == "7ba0feaf-d20b-4c22-a35a-31ec30fc7715"
    assert error.status is None
    assert "7ba0feaf-d20b-4c22-a35a-31ec30fc7715" in str(error)
    assert error.body is not None
    assert json.loads(error.body)["error"] == {
        "code": "bad_request",
        "message": "Unrecognized argument(s): `-c`, `x`",
    }


def test_job_failed_with_a_string_error_and_a_trace_id() -> None:
    """A bare-string error becomes the message, with no code; the body's trace_id is kept."""
    result = PROVIDER.decode_result(
        Result, b'{"success": false, "error": "fetch failed", "trace_id": "t9", "task_id": "k"}'
    )
    error = PROVIDER.job_failed(result)
    assert (error.code, error.message, error.trace_id, error.task_id) == (None, "fetch failed", "t9", "k")


def test_job_failed_without_an_error_has_a_message() -> None:
    """`success: false` with no error still gives a JobFailedError with a non-empty message."""
    error = PROVIDER.job_failed(PROVIDER.decode_result(Result, b'{"success": false}'))
    assert error.code is None
    assert error.message


# -- any status, any body --------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
error_objects = st.fixed_dictionaries(
    {},
    optional={
        "success": st.booleans() | st.none(),
        "error": json_values
        | st.fixed_dictionaries(
            {}, optional={"code": json_values | st.text(), "message": json_values | st.text()}
        ),
        "detail": json_values,
        "message": json_values,
        "trace_id": json_values | st.text(),
    },
)
bodies = (
    st.binary(max_size=512)
    | json_values.map(lambda v: json.dumps(v).encode())
    | error_objects.map(lambda v: json.dumps(v).encode())
)
header_maps = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after-ms", "X-Request-Id", "Content-Type"]), st.text(max_size=40)
).map(lambda d: CIMultiDictProxy(CIMultiDict(d)))


@settings(max_examples=300, deadline=None)
@given(status=st.integers(400, 599), body=bodies, hdrs=header_maps)
@example(status=502, body=HTML_502, hdrs=CIMultiDictProxy(CIMultiDict()))
@example(status=429, body=b"", hdrs=CIMultiDictProxy(CIMultiDict({"Retry-After": "1e400"})))
def test_status_error_never_raises(status: int, body: bytes, hdrs: CIMultiDictProxy[str]) -> None:
    """For any status 400–599, body and headers, status_error returns an APIStatusError with that status."""
    error = PROVIDER.status_error(status, hdrs, body)
    assert isinstance(error, APIStatusError)
    assert error.status == status
    assert isinstance(error.message, str)
    assert error.body is not None
    assert len(error.body) <= BODY_CAP + 64
    if status >= 500:
        assert isinstance(error, ServerError) or error.code in {
            "forbidden",
            "used_up",
            "too_many_requests",
            "invalid_token",
            "token_expired",
            "token_mismatched",
            "no_token",
        }
    assert str(error).startswith(str(status))
    assert f"status={status}" in repr(error)


def test_deeply_nested_body_maps_without_raising() -> None:
    """A JSON body nested 5000 levels deep still maps to a ServerError."""
    assert isinstance(PROVIDER.status_error(500, headers(), b"[" * 5000), ServerError)


@pytest.mark.parametrize("body", [b'{"error": ""}', b'{"detail": ""}', b'{"message": ""}'])
def test_empty_message_falls_back_to_a_description(body: bytes) -> None:
    """A body whose message is an empty string still gives an error with a non-empty message."""
    assert PROVIDER.status_error(400, headers(), body).message
