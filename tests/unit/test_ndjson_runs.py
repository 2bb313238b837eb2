"""NdjsonDecoder and NdjsonSplitter.feed_runs: decoding whole runs of lines gives exactly what the
splitter plus a per-line decode gives, at every chunk boundary, with the same errors at the same time."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mjasync
from mjasync._exceptions import LineTooLongError, MalformedLineError
from mjasync._ndjson import DEFAULT_MAX_LINE_BYTES, NdjsonDecoder, NdjsonSplitter, iter_lines
from mjasync._providers import AceDataProvider, GoapiProvider
from mjasync._transport import LineReader
from mjasync.types import ImagineUpdate

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "acedata_imagine.ndjson"
PROVIDER = AceDataProvider()

LINES = [
    b'{"task_id":"t1","success":true,"progress":10}',
    '{"task_id":"t1","progress":50,"image_url":"https://cdn.example/猫 🐱 café.png"}'.encode(),
    b' {"task_id":"t1","progress":90}\t',  # JSON whitespace around the object is part of the line
    b'{"task_id":"t1","progress":100,"image_id":"i1","actions":["upscale1","reroll"]}',
]


def _decode_line(line: bytes, number: int) -> ImagineUpdate:
    return PROVIDER.decode_update(ImagineUpdate, line, number)


def _decoder(cap: int = DEFAULT_MAX_LINE_BYTES) -> NdjsonDecoder[ImagineUpdate]:
    """Built the way a stream builds its reader's decoder."""
    return NdjsonDecoder(lambda run: PROVIDER.decode_updates(ImagineUpdate, run), _decode_line, cap)


EXPECTED = [_decode_line(line, n) for n, line in enumerate(LINES, 1)]


def _reference(chunks: list[bytes], cap: int = DEFAULT_MAX_LINE_BYTES) -> list[ImagineUpdate]:
    """The old path: split, then decode each line on its own."""
    return [_decode_line(line, n) for n, line in enumerate(iter_lines(chunks, cap), 1)]


def _decode_all(decoder: NdjsonDecoder[ImagineUpdate], chunks: list[bytes]) -> list[ImagineUpdate]:
    out: list[ImagineUpdate] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out + decoder.finish()


def _join(terms: list[bytes], lines: list[bytes] = LINES) -> bytes:
    return b"".join(line + term for line, term in zip(lines, terms, strict=True))


STREAMS = {
    "lf": _join([b"\n"] * 4),
    "crlf": _join([b"\r\n"] * 3 + [b""]),
    "cr": _join([b"\r"] * 4),
    # Keep-alives: empty, spaces and tabs (JSON whitespace), VT and FF (blank to the splitter, not to
    # JSON: the run fails and the lines are taken one by one), in front and between.
    "keepalive": b"\n \r\n" + _join([b"\n\n", b"\r\n \t \r\n", b"\n\x0b\x0c\n", b"\r\r \n"]),
    "mixed": _join([b"\r\n", b"\r", b"\n\r\n", b"\r"]),
}


def _two_chunk_cuts(payload: bytes) -> list[list[bytes]]:
    return [[payload[:cut], payload[cut:]] for cut in range(len(payload) + 1)]


@pytest.mark.parametrize("name", list(STREAMS))
def test_every_two_chunk_cut_decodes_like_the_splitter(name: str) -> None:
    payload = STREAMS[name]
    for first, rest in _two_chunk_cuts(payload):
        decoder = _decoder()
        early = decoder.feed(first)
        # Values come out as soon as their line's terminator arrives, as the splitter's lines do.
        assert early == [_decode_line(line, 0) for line in NdjsonSplitter().feed(first)], len(first)
        out = early + decoder.feed(rest) + decoder.finish()
        assert out == _reference([first, rest]) == EXPECTED, len(first)
        assert decoder.line_number == len(EXPECTED)


@pytest.mark.parametrize("name", list(STREAMS))
def test_one_byte_at_a_time_decodes_like_the_splitter(name: str) -> None:
    payload = STREAMS[name]
    chunks = [payload[i : i + 1] for i in range(len(payload))]
    assert _decode_all(_decoder(), chunks) == EXPECTED


def test_recorded_stream_at_every_cut() -> None:
    payload = FIXTURE.read_bytes()
    expected = _reference([payload])
    assert len(expected) == 3 and expected[-1].is_final
    for chunks in _two_chunk_cuts(payload):
        assert _decode_all(_decoder(), chunks) == expected, len(chunks[0])


def test_cr_at_chunk_end_then_lf_is_one_break() -> None:
    decoder = _decoder()
    assert decoder.feed(LINES[0] + b"\r") == EXPECTED[:1]  # a lone CR ends the line at once
    assert decoder.feed(b"\n" + LINES[1] + b"\r") == EXPECTED[1:2]  # the LF completes CRLF
    assert decoder.feed(b"\n" + LINES[2][:5]) == []
    assert decoder.feed(LINES[2][5:] + b"\r") == EXPECTED[2:3]  # buffered tail + first line
    assert decoder.feed(b"\n") == []
    assert decoder.finish() == []
    assert decoder.line_number == 3


def test_runs_are_the_joined_tail_then_a_view_of_the_rest() -> None:
    splitter = NdjsonSplitter()
    assert splitter.feed_runs(b'{"a"') == []
    chunk = b':1}\r\n{"b":2}\n\n{"c":3}\r{"d"'
    runs = splitter.feed_runs(chunk)
    assert runs[0] == b'{"a":1}\r'
    assert isinstance(runs[1], memoryview) and runs[1].obj is chunk  # no copy of the bulk
    assert bytes(runs[1]) == b'\n{"b":2}\n\n{"c":3}\r'
    assert len(runs) == 2
    # With nothing buffered the whole chunk up to its last break is one run.
    runs = NdjsonSplitter().feed_runs(b'{"b":2}\n{"c":3}\n{"d"')
    assert [bytes(run) for run in runs] == [b'{"b":2}\n{"c":3}\n']
    assert splitter.finish() == [b'{"d"']


def test_runs_do_not_see_later_changes_to_a_reused_buffer() -> None:
    splitter = NdjsonSplitter()
    chunk = bytearray(b'{"a":1}\n{"b"')
    runs = splitter.feed_runs(chunk)
    chunk[:] = b"x" * len(chunk)
    assert [bytes(run) for run in runs] == [b'{"a":1}\n']
    assert splitter.finish() == [b'{"b"']


_url = st.text(max_size=30)
_line = st.builds(
    lambda task, progress, url: json.dumps(
        {"task_id": task, "progress": progress, "image_url": url}, ensure_ascii=False
    ).encode(),
    st.sampled_from(["t1", "t2"]),
    st.integers(0, 100),
    _url,
)
_terminator = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n \r\n", b"\r\r", b"\n\t\n", b"\n\x0b\n", b" \n"]
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(_line, max_size=12), data=st.data())
def test_random_lines_terminators_and_chunkings(lines: list[bytes], data: st.DataObject) -> None:
    terms = data.draw(st.lists(_terminator, min_size=len(lines), max_size=len(lines)))
    payload = _join(terms, lines)
    if lines and not data.draw(st.booleans()):
        payload = payload.rstrip(b"\r\n \t\x0b")  # no trailing terminator: finish() flushes it
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=30)))
    chunks = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
    expected = [_decode_line(line, 0) for line in lines]
    assert _decode_all(_decoder(), chunks) == _reference(chunks) == expected


# Errors


BAD = b'{"progress":'
BAD_STREAM = b"\n".join([LINES[0], LINES[1], BAD, LINES[3]]) + b"\n"


def _collect(
    decoder: NdjsonDecoder[ImagineUpdate], chunks: list[bytes]
) -> tuple[list[ImagineUpdate], Exception | None]:
    """Values handed out until the first error, and that error."""
    out: list[ImagineUpdate] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        out += decoder.finish()
    except (MalformedLineError, LineTooLongError) as exc:
        return out, exc
    return out, None


def _old_path(
    chunks: list[bytes], cap: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[list[ImagineUpdate], Exception]:
    out: list[ImagineUpdate] = []
    try:
        for number, line in enumerate(iter_lines(chunks, cap), 1):
            out.append(_decode_line(line, number))
    except (MalformedLineError, LineTooLongError) as exc:
        return out, exc
    raise AssertionError("the old path decoded a bad stream")


def test_malformed_line_in_the_middle_at_every_cut() -> None:
    _, old_error = _old_path([BAD_STREAM])
    for chunks in [*_two_chunk_cuts(BAD_STREAM), [BAD_STREAM[i : i + 1] for i in range(len(BAD_STREAM))]]:
        decoder = _decoder()
        out, error = _collect(decoder, chunks)
        assert out == EXPECTED[:2], len(chunks[0])  # the lines before it first
        assert isinstance(error, MalformedLineError)
        assert error.line_number == 3 and error.prefix == BAD
        assert str(error) == str(old_error)
        assert decoder.line_number == 2


def test_a_decoder_that_fails_its_own_way_gives_a_malformed_line() -> None:
    """A line decoder raising something other than an MJError (a RecursionError) still fails only this stream,
    typed as the bad line, with the original chained."""

    def crashing(line: bytes, number: int) -> ImagineUpdate:
        if line == BAD:
            raise RecursionError("maximum recursion depth exceeded")
        return _decode_line(line, number)

    decoder = NdjsonDecoder(lambda run: PROVIDER.decode_updates(ImagineUpdate, run), crashing)
    out, error = _collect(decoder, [BAD_STREAM])
    assert out == EXPECTED[:2]
    assert isinstance(error, MalformedLineError) and isinstance(error.__cause__, RecursionError)
    assert error.line_number == 3 and error.prefix == BAD[:64]
    assert "RecursionError" in error.reason


def test_malformed_line_is_raised_by_the_call_after_the_good_values() -> None:
    decoder = _decoder()
    # The same run: decoded line by line up to the bad one.
    assert decoder.feed(BAD_STREAM + b'{"partial') == EXPECTED[:2]
    assert not decoder._splitter._buf  # what follows a bad line is dropped at once
    for again in (lambda: decoder.feed(LINES[0] + b"\n"), decoder.finish):
        with pytest.raises(MalformedLineError) as info:
            again()
        assert info.value.line_number == 3  # stays failed
    decoder.reset()
    assert decoder.feed(LINES[0] + b"\n") == EXPECTED[:1]
    assert decoder.line_number == 1


def test_malformed_first_line_raises_at_once() -> None:
    decoder = _decoder()
    with pytest.raises(MalformedLineError) as info:
        decoder.feed(b"\n \n" + BAD + b"\n" + LINES[0] + b"\n")
    assert info.value.line_number == 1
    with pytest.raises(MalformedLineError):
        decoder.finish()


def test_malformed_unterminated_last_line_raises_from_finish() -> None:
    decoder = _decoder()
    assert decoder.feed(LINES[0] + b"\n" + BAD) == EXPECTED[:1]
    with pytest.raises(MalformedLineError) as info:
        decoder.finish()
    assert info.value.line_number == 2


CAP = 100
EXACT = b'{"task_id":"' + b"x" * (CAP - 14) + b'"}'
LONG = b'{"task_id":"' + b"L" * CAP + b'"}'


def _outcomes(target: NdjsonSplitter | NdjsonDecoder[ImagineUpdate], chunks: list[bytes]) -> list[Any]:
    """What each feed() and the finish() returned (values for lines) or raised, calls going on after errors."""
    outcomes: list[Any] = []
    for chunk in [*chunks, None]:
        try:
            got = target.feed(chunk) if chunk is not None else target.finish()
        except LineTooLongError as exc:
            outcomes.append(("raised", exc.limit, exc.prefix))
            continue
        outcomes.append([_decode_line(x, 0) if isinstance(x, bytes) else x for x in got])
    return outcomes


@pytest.mark.parametrize(
    "payload",
    [
        b"\n".join([LINES[0], EXACT, b"", LINES[2], EXACT]) + b"\r\n",  # exactly the cap: fine
        b"\n".join([LINES[0], b"", LINES[2], LONG, LINES[3]]) + b"\n",
        LINES[0] + b"\r\n" + LONG,  # too long before its terminator arrives
        LONG + b"\n" + LINES[0] + b"\n",
    ],
    ids=["exact", "middle", "unterminated", "first"],
)
def test_line_cap_behaves_like_the_splitter_at_every_cut(payload: bytes) -> None:
    assert len(EXACT) == CAP and len(LONG) > CAP
    raised = ("raised", CAP, LONG[:64])
    for chunks in [*_two_chunk_cuts(payload), [payload[i : i + 7] for i in range(0, len(payload), 7)]]:
        # Each call returns the splitter's lines decoded, or raises as it does, at the same call.
        outcomes = _outcomes(_decoder(CAP), chunks)
        assert outcomes == _outcomes(NdjsonSplitter(CAP), chunks), len(chunks[0])
        values = [v for got in outcomes if isinstance(got, list) for v in got]
        if b"L" in payload:
            assert outcomes[-1] == raised  # stays failed
            assert values == _old_path(chunks, CAP)[0]
        else:
            assert raised not in outcomes and values == _reference(chunks, CAP)


def test_values_before_a_long_line_then_the_error() -> None:
    decoder = _decoder(CAP)
    assert decoder.feed(LINES[0] + b"\n\n" + LINES[2] + b"\r\n" + LONG) == [EXPECTED[0], EXPECTED[2]]
    with pytest.raises(LineTooLongError) as info:
        decoder.feed(b"\n")
    assert info.value.prefix == LONG[:64]
    with pytest.raises(LineTooLongError):  # stays failed
        decoder.finish()
    decoder.reset()
    assert decoder.feed(LINES[0] + b"\n") == EXPECTED[:1]


# Leniencies of decoding runs as concatenated JSON (documented in mjasync._ndjson)


TWO_IN_ONE = b'{"progress":1}{"progress":2}'


def test_two_values_on_one_line_give_both_at_every_cut() -> None:
    with pytest.raises(MalformedLineError):  # a line-by-line decode would refuse it
        _decode_line(TWO_IN_ONE, 1)
    both = [ImagineUpdate(progress=1), ImagineUpdate(progress=2)]
    payload = LINES[0] + b"\n" + TWO_IN_ONE + b"\r\n" + LINES[3] + b"\n"
    for chunks in _two_chunk_cuts(payload):
        decoder = _decoder()
        assert _decode_all(decoder, chunks) == [EXPECTED[0], *both, EXPECTED[3]], len(chunks[0])
        assert decoder.line_number == 4  # counts values


def test_two_values_on_one_line_even_when_a_later_line_is_bad() -> None:
    # The bad line makes the whole run fail; taken line by line, the double line is still accepted.
    payload = LINES[0] + b"\n" + TWO_IN_ONE + b"\n" + BAD + b"\n"
    for chunks in _two_chunk_cuts(payload):
        out, error = _collect(_decoder(), chunks)
        assert out == [EXPECTED[0], ImagineUpdate(progress=1), ImagineUpdate(progress=2)]
        assert isinstance(error, MalformedLineError) and error.line_number == 4  # values before it + 1


def test_a_value_broken_across_lines_depends_on_the_chunking() -> None:
    payload = b'{"progress":\n50}\n'
    assert _decode_all(_decoder(), [payload]) == [ImagineUpdate(progress=50)]  # one run: one value
    out, error = _collect(_decoder(), [payload[:13], payload[13:]])  # two runs: two bad lines
    assert out == [] and isinstance(error, MalformedLineError) and error.line_number == 1


# Providers and the reader


def test_goapi_decodes_line_by_line() -> None:
    goapi = GoapiProvider()
    lines = [
        b'{"task_id":"g1","status":"processing","task_result":{"task_progress":40}}',
        b'{"task_id":"g1","status":"finished","task_result":{"image_url":"https://x/a.png"}}',
    ]
    assert goapi.decode_updates(ImagineUpdate, b"\n".join(lines)) is None
    decoder = NdjsonDecoder(
        lambda run: goapi.decode_updates(ImagineUpdate, run),
        lambda line, number: goapi.decode_update(ImagineUpdate, line, number),
    )
    payload = b"\r\n".join(lines)
    for chunks in _two_chunk_cuts(payload):
        decoder.reset()
        expected = [goapi.decode_update(ImagineUpdate, line, n) for n, line in enumerate(lines, 1)]
        assert _decode_all(decoder, chunks) == expected
    assert expected[0].progress == 40 and expected[1].is_final


def test_acedata_decode_updates_refuses_a_run_with_any_bad_line() -> None:
    assert PROVIDER.decode_updates(ImagineUpdate, b"\n".join(LINES)) == EXPECTED
    assert PROVIDER.decode_updates(ImagineUpdate, memoryview(b"xx" + LINES[0])[2:]) == EXPECTED[:1]
    assert PROVIDER.decode_updates(ImagineUpdate, LINES[0] + b"\n" + BAD) is None
    assert PROVIDER.decode_updates(ImagineUpdate, b"[1]\n") is None
    assert PROVIDER.decode_updates(ImagineUpdate, b"[" * 5000) is None  # too deep


class _Content:
    def __init__(self, chunks: list[bytes | BaseException]) -> None:
        self._chunks = chunks

    async def readany(self) -> bytes:
        if not self._chunks:
            return b""
        chunk = self._chunks.pop(0)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


class _Response:
    def __init__(self, chunks: list[bytes | BaseException]) -> None:
        self.content = _Content(chunks)


def _reader(chunks: list[bytes | BaseException]) -> LineReader[ImagineUpdate]:
    response: Any = _Response(chunks)
    return LineReader(
        response,
        decode_run=lambda run: PROVIDER.decode_updates(ImagineUpdate, run),
        decode_line=_decode_line,
        max_line_bytes=CAP * 10,
        request="POST /midjourney/imagine",
    )


async def _drain(reader: LineReader[ImagineUpdate]) -> list[ImagineUpdate]:
    out: list[ImagineUpdate] = []
    while (update := await reader.next_update()) is not None:
        out.append(update)
    return out


async def test_reader_hands_out_values_one_by_one_then_none() -> None:
    payload = STREAMS["mixed"]
    reader = _reader([payload[:7], payload[7:40], payload[40:]])
    assert await _drain(reader) == EXPECTED
    assert await reader.next_update() is None


async def test_reader_hands_out_good_values_before_a_bad_line() -> None:
    reader = _reader([BAD_STREAM])
    got = [await reader.next_update(), await reader.next_update()]
    assert got == EXPECTED[:2]
    with pytest.raises(MalformedLineError) as info:
        await reader.next_update()
    assert info.value.line_number == 3


async def test_reader_maps_a_broken_connection() -> None:
    reader = _reader([LINES[0] + b"\n", aiohttp.ClientPayloadError("cut")])
    assert await reader.next_update() == EXPECTED[0]
    with pytest.raises(mjasync.APIConnectionError) as info:
        await reader.next_update()
    assert info.value.may_have_reached_server and info.value.request == "POST /midjourney/imagine"


def test_check_raises_a_pending_bad_line_without_more_input() -> None:
    """After the good values before a bad line are handed out, check() raises at once; before, it is quiet."""
    decoder = _decoder()
    decoder.check()
    values = decoder.feed(b'{"progress": 1}\n{"progress": \n')
    assert [v.progress for v in values] == [1]
    with pytest.raises(MalformedLineError):
        decoder.check()


def test_check_raises_a_pending_too_long_line() -> None:
    """A too-long line seen after good ones in the same chunk is raised by check(), not by the next chunk."""
    decoder = _decoder(cap=32)
    values = decoder.feed(b'{"progress": 1}\n' + b"x" * 40 + b"\n")
    assert [v.progress for v in values] == [1]
    with pytest.raises(LineTooLongError):
        decoder.check()
