"""parse_retry_after: the three header forms, their precedence, the cap, and junk."""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timedelta, timezone
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

import mjasync
from mjasync._retry import MAX_RETRY_AFTER, made_no_task, parse_retry_after, phase_of

NOW = 1_714_000_000.0  # a fixed "now" for HTTP dates (2024-04-24)


def http_date(offset: float) -> str:
    """An IMF-fixdate `offset` seconds from NOW, as servers send it."""
    return formatdate(NOW + offset, usegmt=True)


def parse(headers: dict[str, str], **kwargs: float) -> float | None:
    return parse_retry_after(headers, now=NOW, **kwargs)


def test_max_retry_after_is_two_minutes() -> None:
    assert MAX_RETRY_AFTER == 120.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "2.5"}, 2.5),
        ({"retry-after": ".5"}, 0.5),
        ({"retry-after": "3."}, 3.0),
        ({"retry-after": " 7 "}, 7.0),
        ({"retry-after": "1e1"}, 10.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "0.5"}, 0.0005),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # -ms wins
        ({"retry-after": "9", "retry-after-ms": "250"}, 0.25),  # whatever the order
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # unusable -ms falls through
        ({"retry-after-ms": "-5", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "inf", "retry-after": http_date(4)}, 4.0),
        ({"retry-after-ms": "200000"}, 120.0),  # capped too
        ({}, None),
        ({"content-type": "application/json"}, None),
        ({"retry-after-ms": "nan"}, None),
    ],
)
def test_header_forms_and_precedence(headers: dict[str, str], expected: float | None) -> None:
    assert parse(headers) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "4"},
        {"RETRY-AFTER": "4"},
        {"rEtRy-AfTeR": "4"},
        {"Retry-After-Ms": "4000"},
        {"RETRY-AFTER-MS": "4000", "Retry-After": "99"},
    ],
)
def test_names_are_case_insensitive(headers: dict[str, str]) -> None:
    assert parse(headers) == 4.0


def test_aiohttp_cimultidictproxy() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"), ("Retry-After", "7")]))
    assert parse_retry_after(headers, now=NOW) == 7.0
    headers = CIMultiDictProxy(CIMultiDict([("retry-after", "7"), ("Retry-After-MS", "1250")]))
    assert parse_retry_after(headers, now=NOW) == 1.25


def test_repeated_header_first_wins() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Retry-After", "3"), ("retry-after", "30")]))
    assert parse_retry_after(headers, now=NOW) == 3.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (http_date(30), 30.0),
        (http_date(119), 119.0),
        (http_date(86_400), 120.0),  # a day ahead: capped
        (http_date(0), 0.0),
        (http_date(-30), 0.0),  # in the past: retry now
        (http_date(-10 * 365 * 86_400), 0.0),
        (formatdate(NOW + 45), 45.0),  # "-0000": a naive datetime, taken as UTC
        (formatdate(NOW + 45).replace("-0000", "+0000"), 45.0),
        (formatdate(NOW + 45).replace("-0000", "UT"), 45.0),
        (http_date(45).replace("GMT", "+0100"), 0.0),  # the same wall time an hour east: in the past
        (http_date(45).replace("GMT", "-0001"), 105.0),  # ...a minute west: a minute later
    ],
)
def test_http_dates(value: str, expected: float) -> None:
    assert parse({"retry-after": value}) == pytest.approx(expected, abs=1e-6)


def test_http_date_zone_offset_is_applied() -> None:
    utc = datetime.fromtimestamp(NOW, timezone.utc) + timedelta(seconds=90)
    east = utc.astimezone(timezone(timedelta(hours=5, minutes=30)))  # same instant, other zone
    assert parse({"retry-after": east.strftime("%a, %d %b %Y %H:%M:%S +0530")}) == 90.0
    west = utc.astimezone(timezone(-timedelta(hours=8)))
    assert parse({"retry-after": west.strftime("%a, %d %b %Y %H:%M:%S -0800")}) == 90.0


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset (Unix)")
def test_zoneless_date_is_utc_whatever_the_local_zone() -> None:
    # "-0000" comes back as a naive datetime; it must not be read in the machine's local zone.
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        assert time.timezone != 0  # the switch took effect
        assert parse({"retry-after": formatdate(NOW + 45)}) == 45.0
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_now_defaults_to_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    assert parse_retry_after({"retry-after": http_date(20)}) == 20.0
    monkeypatch.setattr(time, "time", lambda: NOW + 15)
    assert parse_retry_after({"retry-after": http_date(20)}) == 5.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("0.0", 0.0),
        ("120", 120.0),
        ("121", 120.0),  # capped
        ("120.5", 120.0),
        ("99999999999999999999999999999999999", 120.0),  # huge but finite: capped
        ("inf", None),
        ("Infinity", None),
        ("-inf", None),
        ("nan", None),
        ("NaN", None),
        ("-1", None),
        ("-0.5", None),
        ("", None),
        ("   ", None),
        ("abc", None),
        ("5 seconds", None),
        ("1_000", None),  # float() would take these; RFC delay-seconds would not
        ("+5", None),
        ("0x10", None),
        ("\u0665", None),  # ARABIC-INDIC DIGIT FIVE
        ("1e400", None),  # overflows to inf
        ("9" * 400, None),
        ("Wed, 21 Oct 100000 07:28:00 GMT", None),  # year 100000
        ("Fri, 31 Dec 9999 23:59:59 GMT", 120.0),  # the last representable date is just far
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
        ("Wed, 21 Foo 2015 07:28:00 GMT", None),
        ("Wed, 21 Oct 2015 25:28:00 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00 +9999", None),
    ],
)
def test_junk_and_edge_values(value: str, expected: float | None) -> None:
    assert parse({"retry-after": value}) == expected


def test_cap_argument() -> None:
    assert parse({"retry-after": "30"}, cap=10.0) == 10.0
    assert parse({"retry-after": "3"}, cap=10.0) == 3.0
    assert parse({"retry-after": "30"}, cap=0.0) == 0.0
    # An infinite cap exposes the raw value, e.g. to refuse retrying past some limit.
    assert parse({"retry-after": "121"}, cap=math.inf) == 121.0
    assert parse({"retry-after": "99999999999999999999999999999999999"}, cap=math.inf) == 1e35
    assert parse({"retry-after": http_date(3600)}, cap=math.inf) == 3600.0
    assert parse({"retry-after-ms": "1e300"}, cap=math.inf) == 1e297
    assert parse({"retry-after": "inf"}, cap=math.inf) is None


_header_name = st.sampled_from(["retry-after", "Retry-After", "RETRY-AFTER-MS", "retry-after-ms", "x-other"])
_junk_date = st.from_regex(
    r"\A[A-Za-z]{0,4},? ?[0-9]{0,7} [A-Za-z]{0,4} [0-9]{0,7} [0-9]{0,3}:[0-9]{0,3}(:[0-9]{0,3})? ?[A-Z+-]{0,4}[0-9]{0,5}\Z"
)
_value = st.one_of(
    st.text(), _junk_date, st.from_regex(r"\A-?[0-9]{0,400}(\.[0-9]{0,20})?(e[+-]?[0-9]{1,4})?\Z")
)


@settings(max_examples=500, deadline=None)
@given(
    headers=st.dictionaries(_header_name, _value, max_size=4),
    now=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    cap=st.floats(min_value=0.0, max_value=1e9),
)
def test_never_raises_and_stays_in_range(headers: dict[str, str], now: float | None, cap: float) -> None:
    result = parse_retry_after(headers, now=now, cap=cap)
    assert result is None or (isinstance(result, float) and 0.0 <= result <= cap)


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(9999, 12, 31, 23, 59, 59),
        timezones=st.just(timezone.utc),
    ),
    cap=st.floats(min_value=0.0, max_value=1e12),
)
def test_any_http_date_is_its_distance_from_now(when: datetime, cap: float) -> None:
    when = when.replace(microsecond=0)
    value = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    expected = min(max(when.timestamp() - NOW, 0.0), cap)
    assert parse({"retry-after": value}, cap=cap) == pytest.approx(expected, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(digits=st.from_regex(r"\A[0-9]{1,30}(\.[0-9]{1,6})?\Z"), cap=st.floats(min_value=0.0, max_value=1e40))
def test_any_delay_seconds_is_taken_up_to_the_cap(digits: str, cap: float) -> None:
    assert parse({"Retry-After": digits}, cap=cap) == min(float(digits), cap)
    assert parse({"retry-after-ms": digits}, cap=cap) == min(float(digits) / 1000, cap)


@pytest.mark.parametrize(
    ("error", "phase"),
    [
        (mjasync.RateLimitError("slow down", status=429), "rejected"),
        (mjasync.APIStatusError("timeout", status=408), "rejected"),
        # A 503 that says when to come back is load shedding: nothing was taken on.
        (mjasync.ServerError("busy", status=503, retry_after=2.0), "rejected"),
        (mjasync.ServerError("busy", status=503), "unknown"),
        (mjasync.ServerError("oops", status=500, retry_after=2.0), "unknown"),
        (mjasync.GatewayTimeoutError("late", status=504), "unknown"),
        (mjasync.APIConnectionError("dropped", may_have_reached_server=True), "unknown"),
        (mjasync.APIConnectionError("refused", may_have_reached_server=False), "not_sent"),
        (mjasync.BadRequestError("no", status=400), "fatal"),
        (mjasync.AuthenticationError("who", status=401), "fatal"),
        # A success answer that cannot be read: the server got the request and may have acted on it.
        (mjasync.ResponseDecodeError("garbled"), "unknown"),
    ],
)
def test_phase_of_sorts_failures_by_how_far_the_request_got(error: mjasync.MJError, phase: str) -> None:
    assert phase_of(error) == phase


@pytest.mark.parametrize(
    ("error", "made_none"),
    [
        (mjasync.InvalidRequestError("bad input"), True),
        (mjasync.APIConnectionError("refused", may_have_reached_server=False), True),
        (mjasync.RateLimitError("slow down", status=429), True),
        (mjasync.BadRequestError("no", status=400), True),
        (mjasync.ModerationError("no", status=403), True),
        (mjasync.ServerError("oops", status=500), False),
        (mjasync.APIConnectionError("dropped", may_have_reached_server=True), False),
        (mjasync.ResponseDecodeError("garbled"), False),
        (mjasync.AmbiguousSubmitError("maybe"), False),
        (mjasync.WaitTimeoutError("late"), False),
    ],
)
def test_made_no_task_only_when_the_submit_never_left_or_was_refused(
    error: mjasync.MJError, made_none: bool
) -> None:
    assert made_no_task(error) is made_none
