"""Sans-IO ndjson line splitting: bytes chunks in, complete non-blank lines out.

`NdjsonSplitter` knows nothing about sockets, aiohttp or event loops; the streaming layer feeds it
whatever `resp.content.iter_any()` yields (chunk boundaries are arbitrary, never line boundaries) and
decodes each returned line on its own.

Rules:

- A line ends at LF, CRLF or a lone CR (the WHATWG / openai `_SSELineDecoder` semantics). Only those
  bytes break lines: unlike `str.splitlines`, `bytes.splitlines` ignores VT, FF, FS, NEL and friends.
- Blank and whitespace-only lines are keep-alives and are never returned.
- Lines come back without their terminator and otherwise untouched (bytes in, bytes out, so a
  multi-byte UTF-8 character cut by a chunk boundary is reassembled intact).
- No line, complete or still buffered, may be longer than `max_line_bytes`; see `NdjsonSplitter`.

`NdjsonDecoder` is the fast path the client streams through: `NdjsonSplitter.feed_runs` cuts each
chunk only at its first and last line break into a few *runs* of whole lines, and each run is decoded
in one call (msgspec's `decode_lines`), with no Python work per line. Two leniencies come from
decoding runs as concatenated JSON rather than line by line:

- a line holding several values (`{..}{..}`) gives each of them, whatever the chunking (a line that
  fails per line is first retried as a run of its own);
- a value broken across lines may decode as one value when its lines arrive in the same run, and
  fails as malformed lines when they do not, so that depends on the chunking. Providers send one
  object per line; the check that would rule this out (counting line breaks) costs about a quarter
  of the throughput.

Either way `line_number` counts values handed out, which is the line number for one value per line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from mjasync._exceptions import QUOTE_BYTES, LineTooLongError, MalformedLineError, MJError
from mjasync._redact import redact_cause

__all__ = ["DEFAULT_MAX_LINE_BYTES", "PREFIX_BYTES", "NdjsonDecoder", "NdjsonSplitter", "iter_lines"]

T = TypeVar("T")

#: The default cap on one line: far above any real progress update (~1 KiB), low enough to bound memory.
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
#: How much of an over-long line `LineTooLongError.prefix` keeps (as much as any error quotes of a line).
PREFIX_BYTES = QUOTE_BYTES

_LF = 0x0A
_CR = 0x0D


class NdjsonSplitter:
    """Incrementally split a byte stream into ndjson lines (LF, CRLF or CR), skipping blank lines.

    Call `feed()` with each chunk as it arrives and `finish()` once at EOF. Each byte is scanned once
    by C code and copied at most a couple of times, so the cost is linear in the input however it is
    chunked; only the unterminated tail of the stream is buffered, and never more than
    `max_line_bytes` of it.

    `finish()` flushes the tail and resets the splitter, so one instance can serve several streams
    in turn.

    Too-long lines: a line longer than `max_line_bytes` raises `LineTooLongError(max_line_bytes,
    prefix)` as soon as the bytes seen so far prove it too long, even before its newline arrives.
    Lines that came *before* it in the same chunk are still returned first: that `feed()` call
    returns them and the error is raised by the next `feed()` or `finish()`. After the error the
    over-long data is dropped and every `feed()`/`finish()` raises again until `reset()`.
    """

    __slots__ = ("_buf", "_failed_prefix", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {max_line_bytes}")
        self.max_line_bytes = max_line_bytes
        # The unterminated tail. A bytearray (not a list of parts) so that 1-byte chunks cost one
        # byte each, not one bytes object each; `+=` grows it in amortised O(1) per byte.
        self._buf = bytearray()
        # Set once a too-long line was seen: the prefix to report on every later call.
        self._failed_prefix: bytes | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Add a chunk; return the lines it completed (terminators stripped, blank lines skipped)."""
        if self._failed_prefix is not None:
            raise LineTooLongError(self.max_line_bytes, self._failed_prefix)
        if not chunk:
            return []
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # so that every line we return is `bytes`
        buf = self._buf
        limit = self.max_line_bytes
        # One C-level pass over the new bytes only; the buffered tail is never rescanned. If the
        # chunk does not end with a terminator, the last element is an unfinished line (possibly the
        # whole chunk).
        lines = chunk.splitlines()
        tail: bytes | None = None
        if chunk[-1] != _LF and chunk[-1] != _CR:
            tail = lines.pop()
            if not lines:
                # No terminator at all (a long line arriving in pieces): just buffer it.
                if len(buf) + len(tail) > limit:
                    return self._fail(bytes(buf[:PREFIX_BYTES]) + tail[:PREFIX_BYTES], [])
                buf += tail
                return []
        # A CR at the end of one chunk ends its line right away; if the next chunk opens with the LF
        # of a split CRLF, `splitlines` yields one empty line for it, which the blank filter drops.
        # So CR|LF counts as one break with no state carried between chunks.
        if lines and buf:
            if len(buf) + len(lines[0]) > limit:
                return self._fail(bytes(buf[:PREFIX_BYTES]) + lines[0][:PREFIX_BYTES], [])
            buf += lines[0]
            lines[0] = bytes(buf)
            buf.clear()
        # A chunk no longer than the cap cannot hold a line longer than the cap: skip the check.
        if len(chunk) > limit:
            for i, line in enumerate(lines):
                if len(line) > limit:
                    return self._fail(line[:PREFIX_BYTES], _non_blank(lines[:i]))
        out = _non_blank(lines)
        if tail is not None:
            if len(buf) + len(tail) > limit:
                return self._fail(bytes(buf[:PREFIX_BYTES]) + tail[:PREFIX_BYTES], out)
            buf += tail
        return out

    def feed_runs(self, chunk: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Add a chunk; return *runs*: pieces each holding one or more complete lines, terminators kept.

        Blank lines are not removed. Typically the buffered tail joined with the chunk's first line,
        then a view (no copy) of the rest of the chunk up to its last line break. Chunks that could
        complete a too-long line go through `feed()` instead (each line a run), with its errors.
        """
        buf = self._buf
        if self._failed_prefix is not None or len(buf) + len(chunk) > self.max_line_bytes:
            return [*self.feed(chunk)]
        # Below the cap no line can be too long, so only the first and last breaks matter.
        if not chunk:
            return []
        if type(chunk) is not bytes:
            chunk = bytes(chunk)  # the caller may reuse its buffer; our views must not change
        lf = chunk.rfind(b"\n")
        # A CR before the last LF cannot be the last break: scan only what follows it (memrchr).
        end = max(lf, chunk.rfind(b"\r", lf + 1))
        if end < 0:
            buf += chunk
            return []
        runs: list[bytes | memoryview] = []
        start = 0
        if buf:
            stop = chunk.find(b"\n", 0, end + 1)
            if stop < 0:
                stop = end
            cr = chunk.find(b"\r", 0, stop)
            if cr >= 0:
                stop = cr
            buf += memoryview(chunk)[: stop + 1]
            runs.append(bytes(buf))
            buf.clear()
            start = stop + 1
        # The LF of a CRLF split by the previous chunk opens this run: whitespace to the decoder.
        if start <= end:
            runs.append(memoryview(chunk)[start : end + 1])
        if end + 1 < len(chunk):
            buf += memoryview(chunk)[end + 1 :]
        return runs

    def finish(self) -> list[bytes]:
        """Signal EOF: return the last line if it had no terminator, and reset the splitter."""
        if self._failed_prefix is not None:
            raise LineTooLongError(self.max_line_bytes, self._failed_prefix)
        buf = self._buf
        out = [bytes(buf)] if buf and not buf.isspace() else []
        buf.clear()
        return out

    def reset(self) -> None:
        """Drop any buffered partial line and clear a too-long-line failure."""
        self._buf.clear()
        self._failed_prefix = None

    def _fail(self, prefix: bytes, good: list[bytes]) -> list[bytes]:
        """Enter the failed state; raise now unless there are good lines to hand out first."""
        prefix = prefix[:PREFIX_BYTES]
        self._buf.clear()  # release up to max_line_bytes of memory now, not at reset()
        self._failed_prefix = prefix
        if good:
            return good
        raise LineTooLongError(self.max_line_bytes, prefix)


class NdjsonDecoder(Generic[T]):
    """Sans-IO: bytes chunks in, decoded values out, in stream order.

    `decode_run(run)` decodes a run of whole lines (blank lines included) to its values at once;
    None or an exception means it cannot, and then the run is taken line by line: each non-blank line
    by `decode_run` again, else by `decode_line(line, line_number)`, which raises the typed error
    (line numbers count from 1).

    Errors follow `NdjsonSplitter`: values before a bad line are returned first, the error is raised
    by the next `feed()`/`finish()`, and every call raises it again until `reset()`.
    """

    __slots__ = ("_decode_line", "_decode_run", "_error", "_splitter", "line_number")

    def __init__(
        self,
        decode_run: Callable[[bytes | memoryview], list[T] | None],
        decode_line: Callable[[bytes, int], T],
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self._splitter = NdjsonSplitter(max_line_bytes)
        self._decode_run = decode_run
        self._decode_line = decode_line
        self._error: Exception | None = None
        #: How many values have been handed out.
        self.line_number = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[T]:
        """Add a chunk; return the values of the lines it completed."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        return self._decode(self._splitter.feed_runs(chunk))

    def finish(self) -> list[T]:
        """Signal EOF: return the value(s) of an unterminated last line."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        return self._decode(self._splitter.finish())

    def check(self) -> None:
        """Raise the error a bad or too-long line left pending, so a reader need not wait for more input."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        # Asked before every read of a stream, so no call unless a too-long line was seen (same module).
        if self._splitter._failed_prefix is not None:
            self._splitter.feed(b"")  # raises its LineTooLongError

    def reset(self) -> None:
        """Start afresh: drop any partial line and any error, count from line 1 again."""
        self._splitter.reset()
        self._error = None
        self.line_number = 0

    def _decode(self, runs: list[bytes | memoryview] | list[bytes]) -> list[T]:
        out: list[T] = []
        for run in runs:
            values = self._try_run(run)
            if values is not None:
                out += values
                continue
            for line in _non_blank(bytes(run).splitlines()):
                values = self._try_run(line)
                if values is not None:
                    out += values
                    continue
                number = self.line_number + len(out) + 1
                try:
                    out.append(self._decode_line(line, number))
                except MJError as exc:
                    return self._fail(exc, out)
                except Exception as exc:
                    # A decoder's own failure (a RecursionError, a bug) is still this line's error, and
                    # only this stream's: typed, with the foreign exception cleaned of any secret.
                    error = MalformedLineError(number, line, f"{type(exc).__name__}: {exc}")
                    error.__cause__ = redact_cause(exc)
                    return self._fail(error, out)
        self.line_number += len(out)
        return out

    def _try_run(self, run: bytes | memoryview) -> list[T] | None:
        try:
            return self._decode_run(run)
        except Exception:
            return None  # not a failure yet: the lines one by one will say which one is bad

    def _fail(self, error: Exception, good: list[T]) -> list[T]:
        """Enter the failed state; raise now unless there are good values to hand out first."""
        self._error = error
        self._splitter.reset()  # nothing after a bad line is ours to read
        self.line_number += len(good)
        if good:
            return good
        raise error


def _non_blank(lines: list[bytes]) -> list[bytes]:
    """The lines that are not empty or whitespace-only (keep-alives)."""
    # `isspace()` stops at the first non-space byte, so this is one byte per line for JSON lines.
    return [line for line in lines if line and not line.isspace()]


def iter_lines(chunks: Iterable[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[bytes]:
    """Split an iterable of chunks into ndjson lines, flushing the tail at the end (for tests and benchmarks)."""
    splitter = NdjsonSplitter(max_line_bytes)
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.finish()
