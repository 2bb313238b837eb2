"""What the per-job fast paths promise: the same answers as the general code, with less built per job."""

from __future__ import annotations

import collections
import math
from typing import Any

import pytest

from mjasync import _attempts
from mjasync._attempts import SendRecord
from mjasync._config import Timeouts
from mjasync._exceptions import InvalidRequestError
from mjasync._models.params import build_prompt
from mjasync._models.results import EditsResult, ErrorDetail, ImagineResult, VideoResult
from mjasync._transport import Transport


class Clock:
    """A clock for `SendRecord`, set by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def transport() -> Transport:
    """A transport whose timeouts are all that is used here."""
    return Transport(
        None,  # type: ignore[arg-type]
        base_url="http://127.0.0.1:1",
        headers={},
        secrets=(),
        timeouts=Timeouts(),
        max_response_bytes=1 << 20,
        error_for_status=None,  # type: ignore[arg-type]
    )


def test_the_deadline_is_set_at_the_first_send_only() -> None:
    clock = Clock(100.0)
    record = SendRecord(60.0, clock=clock)
    assert deadline_of(record) is None and record.time_left() is None and not record.expired()
    record.mark_sent()
    assert deadline_of(record) == 160.0
    clock.now = 130.0
    record.mark_sent()  # a later send: the deadline still counts from the first
    assert deadline_of(record) == 160.0
    assert deadline_of(SendRecord(None)) is None


def deadline_of(record: SendRecord) -> float | None:
    """`record.deadline_at`, read afresh (not narrowed by an earlier assert)."""
    return record.deadline_at


def test_a_first_send_gets_the_whole_deadline_and_later_ones_the_time_left() -> None:
    clock = Clock(100.0)
    record = SendRecord(900.0, clock=clock)
    record.mark_sent()
    assert record.time_left() == 900.0
    clock.now += _attempts._FRESH / 2  # the request goes out a moment after it was noted
    assert record.time_left() == 900.0
    clock.now = 100.5  # a retry, half a second on
    assert record.time_left() == pytest.approx(899.5)
    clock.now = 1_000.0 + 1  # past the deadline: a sliver, never 0 (which aiohttp reads as "none")
    assert record.time_left() == _attempts._LEAST_TIMEOUT
    assert record.expired()


def test_the_whole_deadline_timeout_is_built_once_and_a_time_left_is_exact() -> None:
    wire = transport()
    first = wire.client_timeout(read=900.0, total=900.0)
    assert wire.client_timeout(read=900.0, total=900.0) is first
    assert first.total == 900.0 and first.sock_read == 900.0 and first.ceil_threshold == math.inf
    left = wire.client_timeout(read=900.0, total=899.25)
    assert left.total == 899.25  # exact: aiohttp would round it up to a whole second otherwise
    assert wire.client_timeout(read=900.0, total=899.25) is not left  # not kept: new every time


@pytest.mark.parametrize(
    "urls",
    [(), [], ("https://example.com/a.png",), ["https://example.com/a.png"]],
    ids=["empty-tuple", "empty-list", "tuple", "list"],
)
def test_prompt_of_a_list_or_tuple(urls: tuple[str, ...] | list[str]) -> None:
    prompt = build_prompt("  a lighthouse  ", image_urls=urls)
    assert prompt == " ".join([*urls, "a lighthouse"])


def test_prompt_of_any_other_sequence_and_of_no_sequence() -> None:
    assert build_prompt("x", image_urls=collections.UserList(["https://example.com/a.png"])) == (
        "https://example.com/a.png x"
    )
    for wrong in ("https://example.com/a.png", b"https://example.com/a.png", {"https://example.com/a.png"}):
        with pytest.raises(InvalidRequestError, match="must be a sequence"):
            build_prompt("x", image_urls=wrong)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="empty"):
        build_prompt("   ")


def test_finality_reads_the_same_whichever_field_is_checked_first() -> None:
    done: dict[str, Any] = {"image_id": "i", "image_url": "u", "progress": 100, "actions": ["upscale1"]}
    assert ImagineResult(**done).is_final
    assert not ImagineResult(**{**done, "actions": []}).is_final
    assert not ImagineResult(**{**done, "progress": 50}).is_final
    assert not ImagineResult(**{**done, "image_id": None}).is_final
    assert not ImagineResult(**done, success=False).is_final
    assert not ImagineResult(**done, error=ErrorDetail(code="x")).is_final
    assert EditsResult(image_url="u", progress=100).is_final
    assert not EditsResult(image_url="u", progress=100, success=False).is_final
    assert VideoResult(video_urls=["v"]).is_final
    assert not VideoResult(video_urls=["v"], error="boom").is_final
