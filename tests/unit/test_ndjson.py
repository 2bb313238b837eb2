"""NdjsonSplitter: line breaks at every chunk boundary, keep-alives, the line cap, linear cost."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mjasync._exceptions import LineTooLongError, StreamError
from mjasync._ndjson import DEFAULT_MAX_LINE_BYTES, PREFIX_BYTES, NdjsonSplitter, iter_lines

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "acedata_imagine.ndjson"
RECORDED = FIXTURE.read_bytes().split(b"\n")[:-1]

TERMINATORS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
# Blank keep-alive lines as servers send them: empty, spaces, tabs.
KEEPALIVES = [b"", b"   ", b"\t", b" \t "]


def _split_reference(data: bytes) -> list[bytes]:
    """An independent oracle: regex split on CRLF / CR / LF, blank lines dropped."""
    return [line for line in re.split(rb"\r\n|\r|\n", data) if line.strip()]


def _complete_lines(prefix: bytes) -> list[bytes]:
    """The non-blank lines already terminated within `prefix` (the last piece is unfinished)."""
    return [line for line in re.split(rb"\r\n|\r|\n", prefix)[:-1] if line.strip()]


def _build(lines: list[bytes], term: bytes, *, trailing: bool, keepalive: bool) -> bytes:
    """Join lines with `term`, optionally with blank keep-alive lines around and between them."""
    parts: list[bytes] = []
    for i, line in enumerate(lines):
        if keepalive:
            parts.append(KEEPALIVES[i % len(KEEPALIVES)] + term)
        parts.append(line)
        if trailing or i < len(lines) - 1:
            parts.append(term)
    if keepalive and trailing:
        parts.append(b" " + term + term)
    return b"".join(parts)


def _feed_all(splitter: NdjsonSplitter, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out + splitter.finish()


VARIANTS = [
    pytest.param(
        term,
        trailing,
        keepalive,
        id=f"{name}-{'trailing' if trailing else 'no_trailing'}-{'keepalive' if keepalive else 'plain'}",
    )
    for name, term in TERMINATORS.items()
    for trailing in (True, False)
    for keepalive in (False, True)
]


def test_fixture_holds_the_three_recorded_lines() -> None:
    assert len(RECORDED) == 3
    for line in RECORDED:
        assert b"\r" not in line
        assert set(json.loads(line)) >= {"image_url", "progress", "task_id", "success"}


@pytest.mark.parametrize(("term", "trailing", "keepalive"), VARIANTS)
def test_every_two_chunk_cut_gives_the_recorded_lines(term: bytes, trailing: bool, keepalive: bool) -> None:
    payload = _build(RECORDED, term, trailing=trailing, keepalive=keepalive)
    assert _split_reference(payload) == RECORDED  # the payload itself is what we think it is
    splitter = NdjsonSplitter()  # reused: finish() resets it for the next round
    for cut in range(len(payload) + 1):
        first = splitter.feed(payload[:cut])
        # Lines come out as soon as their terminator arrives, not later.
        assert first == _complete_lines(payload[:cut]), cut
        rest = splitter.feed(b"") + splitter.feed(payload[cut:]) + splitter.finish()
        assert first + rest == RECORDED, cut


@pytest.mark.parametrize(("term", "trailing", "keepalive"), VARIANTS)
def test_one_byte_at_a_time_gives_the_recorded_lines(term: bytes, trailing: bool, keepalive: bool) -> None:
    payload = _build(RECORDED, term, trailing=trailing, keepalive=keepalive)
    chunks = [payload[i : i + 1] for i in range(len(payload))]
    assert _feed_all(NdjsonSplitter(), chunks) == RECORDED


def test_fixture_bytes_split_as_is() -> None:
    assert list(iter_lines([FIXTURE.read_bytes()])) == RECORDED


def test_cr_at_chunk_end_then_lf_is_one_break() -> None:
    splitter = NdjsonSplitter()
    assert splitter.feed(b'{"a":1}\r') == [b'{"a":1}']  # a lone CR ends the line at once
    assert splitter.feed(b'\n{"b":2}\r') == [b'{"b":2}']  # the LF completes CRLF: no extra line
    assert splitter.feed(b'{"c":3}\n') == [b'{"c":3}']  # CR followed by something else: a break too
    assert splitter.finish() == []


def test_cr_then_empty_chunks_then_lf() -> None:
    assert list(iter_lines([b"a\r", b"", b"", b"\nb", b"", b"\r\n"])) == [b"a", b"b"]


def test_mixed_terminators_in_one_chunk() -> None:
    assert NdjsonSplitter().feed(b"a\nb\r\nc\rd\n\re\r\r\nf\n") == [b"a", b"b", b"c", b"d", b"e", b"f"]


def test_only_cr_and_lf_break_lines() -> None:
    # str.splitlines would also break on VT, FF, FS, GS, RS, NEL and U+2028; ndjson must not.
    line = b'{"a":"x\x0by\x0cz\x1c\x1d\x1e\x85' + "\u2028\u2029".encode() + b'"}'
    assert NdjsonSplitter().feed(line + b"\n") == [line]
    assert list(iter_lines([line[:5], line[5:]])) == [line]


def test_blank_and_whitespace_lines_are_skipped() -> None:
    splitter = NdjsonSplitter()
    assert splitter.feed(b"\n\r\n\r  \n\t\r\n \x0b\x0c \n") == []
    assert splitter.feed(b'  {"a":1}  \n') == [b'  {"a":1}  ']  # content is returned untouched
    assert splitter.feed(b"   ") == []
    assert splitter.finish() == []  # a whitespace-only tail is a keep-alive too


def test_finish_flushes_an_unterminated_line_and_resets() -> None:
    splitter = NdjsonSplitter()
    assert splitter.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert splitter.feed(b":2}") == []
    assert splitter.finish() == [b'{"b":2}']
    # The splitter starts afresh: nothing of the previous tail leaks into the next stream.
    assert splitter.feed(b'{"c":3}\n') == [b'{"c":3}']
    assert splitter.finish() == []


def test_buffer_protocol_chunks_give_bytes_lines() -> None:
    splitter = NdjsonSplitter()
    out = splitter.feed(bytearray(b"ab\ncd")) + splitter.feed(memoryview(b"ef\n"))
    assert out == [b"ab", b"cdef"]
    assert all(type(line) is bytes for line in out)


def test_multibyte_utf8_split_at_every_offset() -> None:
    text = '{"prompt":"猫 🐱 café — ünïcödé","progress":42}'
    line = text.encode()
    assert len(line) > len(text)  # really multi-byte
    payload = line + b"\r\n" + line
    for cut in range(len(payload) + 1):
        out = list(iter_lines([payload[:cut], payload[cut:]]))
        assert out == [line, line], cut
        assert [json.loads(x)["prompt"] for x in out] == ["猫 🐱 café — ünïcödé"] * 2
    assert list(iter_lines(payload[i : i + 1] for i in range(len(payload)))) == [line, line]


_line_bytes = st.one_of(st.binary(min_size=1), st.text(min_size=1).map(str.encode)).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"")
)
_lines = st.lists(_line_bytes.filter(lambda b: b.strip() != b""), max_size=20)
_terminator = st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n \r\n", b"\r\r", b"\n\t\n", b"\r\n\r\n"])


@settings(max_examples=300, deadline=None)
@given(lines=_lines, data=st.data())
def test_random_lines_terminators_and_chunkings(lines: list[bytes], data: st.DataObject) -> None:
    terms = data.draw(st.lists(_terminator, min_size=len(lines), max_size=len(lines)))
    trailing = data.draw(st.booleans())
    payload = b"".join(line + term for line, term in zip(lines, terms, strict=True))
    if lines and not trailing:
        payload = payload[: -len(terms[-1])]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=30)))
    bounds = [0, *cuts, len(payload)]
    chunks = [payload[a:b] for a, b in itertools.pairwise(bounds)]  # duplicates give empty chunks
    assert b"".join(chunks) == payload
    assert _feed_all(NdjsonSplitter(), chunks) == lines


# The line cap


CAP = 100


@pytest.mark.parametrize("term", [b"\n", b"\r\n", b"\r", b""], ids=["lf", "crlf", "cr", "eof"])
def test_line_of_exactly_the_cap_is_accepted(term: bytes) -> None:
    line = b"x" * CAP
    payload = b"a\n" + line + term
    assert _feed_all(NdjsonSplitter(CAP), [payload]) == [b"a", line]
    assert _feed_all(NdjsonSplitter(CAP), [payload[i : i + 1] for i in range(len(payload))]) == [b"a", line]
    assert _feed_all(NdjsonSplitter(CAP), [payload[:50], payload[50:]]) == [b"a", line]


def _assert_too_long(err: LineTooLongError, line: bytes) -> None:
    assert err.limit == CAP
    assert err.prefix == line[:PREFIX_BYTES]
    assert len(err.prefix) <= 64
    assert isinstance(err, StreamError)
    assert str(CAP) in str(err)


def test_line_over_the_cap_with_newline_raises() -> None:
    line = bytes(range(48, 48 + 64)) + b"y" * (CAP + 1 - 64)
    with pytest.raises(LineTooLongError) as info:
        NdjsonSplitter(CAP).feed(line + b"\n")
    _assert_too_long(info.value, line)


def test_line_over_the_cap_raises_before_its_newline() -> None:
    line = b"z" * (CAP + 1)
    with pytest.raises(LineTooLongError) as info:
        NdjsonSplitter(CAP).feed(line)
    _assert_too_long(info.value, line)


def test_line_over_the_cap_in_small_chunks_raises_at_the_first_byte_too_many() -> None:
    line = bytes(range(32, 127)) + b"q" * 50  # the prefix spans several chunks
    splitter = NdjsonSplitter(CAP)
    for i in range(CAP):
        assert splitter.feed(line[i : i + 1]) == []
        assert len(splitter._buf) <= CAP  # memory stays bounded by the cap
    with pytest.raises(LineTooLongError) as info:
        splitter.feed(line[CAP : CAP + 1])
    _assert_too_long(info.value, line)
    assert len(splitter._buf) == 0  # the partial line is released at once


def test_line_over_the_cap_completed_by_a_later_chunk_raises() -> None:
    line = b"0123456789" * 10 + b"!"
    splitter = NdjsonSplitter(CAP)
    assert splitter.feed(line[:70]) == []
    with pytest.raises(LineTooLongError) as info:
        splitter.feed(line[70:] + b"\nok\n")
    _assert_too_long(info.value, line)


def test_lines_before_a_long_line_are_delivered_then_the_error() -> None:
    long = b"L" * (CAP + 1)
    splitter = NdjsonSplitter(CAP)
    assert splitter.feed(b'{"p":1}\n\n{"p":2}\r\n' + long) == [b'{"p":1}', b'{"p":2}']
    with pytest.raises(LineTooLongError) as info:
        splitter.feed(b"\n")
    _assert_too_long(info.value, long)
    with pytest.raises(LineTooLongError):  # stays failed
        splitter.finish()
    splitter.reset()
    assert splitter.feed(b"fine\n") == [b"fine"]


def test_long_line_inside_a_chunk_bigger_than_the_cap() -> None:
    long = b"M" * (CAP + 5)
    splitter = NdjsonSplitter(CAP)
    assert splitter.feed(b"a\n" + long + b"\nb\n") == [b"a"]
    with pytest.raises(LineTooLongError) as info:
        splitter.finish()
    _assert_too_long(info.value, long)


def test_big_chunk_of_short_lines_is_not_a_long_line() -> None:
    payload = b"".join(b"%05d\n" % i for i in range(100))  # 600 bytes, far above the cap
    assert len(payload) > CAP
    assert NdjsonSplitter(CAP).feed(payload) == [b"%05d" % i for i in range(100)]


def test_default_cap_and_bad_cap() -> None:
    assert NdjsonSplitter().max_line_bytes == DEFAULT_MAX_LINE_BYTES == 8 * 1024 * 1024
    with pytest.raises(ValueError, match="max_line_bytes"):
        NdjsonSplitter(0)


def test_iter_lines_passes_the_cap() -> None:
    assert list(iter_lines([b"abc\n", b"d"], max_line_bytes=3)) == [b"abc", b"d"]
    with pytest.raises(LineTooLongError):
        list(iter_lines([b"abcd\n"], max_line_bytes=3))


# Linear cost


class CountingBuffer(bytearray):
    """A bytearray that counts every byte the splitter appends to, copies, slices or scans in it."""

    def __init__(self) -> None:
        super().__init__()
        self.touched = 0

    def __iadd__(self, other: Any) -> CountingBuffer:
        self.touched += len(memoryview(other))
        super().__iadd__(other)
        return self

    def __bytes__(self) -> bytes:  # what `bytes(buf)` calls
        self.touched += len(self)
        return bytes(memoryview(self))

    def __getitem__(self, key: Any) -> Any:
        result = super().__getitem__(key)
        self.touched += len(result) if isinstance(result, bytearray) else 1
        return result

    # Whole-buffer scans: each one costs the buffer's length.
    def _scanned(self) -> None:
        self.touched += len(self)

    def find(self, *args: Any) -> int:
        self._scanned()
        return super().find(*args)

    def rfind(self, *args: Any) -> int:
        self._scanned()
        return super().rfind(*args)

    def splitlines(self, keepends: bool = False) -> list[bytearray]:
        self._scanned()
        return super().splitlines(keepends)

    def isspace(self) -> bool:
        self._scanned()
        return super().isspace()

    def __contains__(self, item: Any) -> bool:
        self._scanned()
        return super().__contains__(item)

    def __add__(self, other: Any) -> bytearray:
        self._scanned()
        return super().__add__(other)


@pytest.mark.parametrize(("size", "chunk"), [(4 << 20, 1024), (256 << 10, 1), (4 << 20, 64 << 10)])
def test_long_line_in_small_chunks_costs_linear_work(size: int, chunk: int) -> None:
    splitter = NdjsonSplitter()
    buf = splitter._buf = CountingBuffer()
    line = b"x" * size
    for i in range(0, size, chunk):
        assert splitter.feed(line[i : i + chunk]) == []
    assert splitter.feed(b"\n") == [line]
    assert splitter._buf is buf  # still the instrumented buffer
    # Appending plus one final copy is ~2x the line; re-copying or rescanning the buffer on each
    # feed would be ~size * feeds / 2, i.e. thousands of times more.
    assert size <= buf.touched <= 3 * size
