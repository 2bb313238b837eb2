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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mjasync._exceptions import LineTooLongError

__all__ = ["DEFAULT_MAX_LINE_BYTES", "PREFIX_BYTES", "NdjsonSplitter", "iter_lines"]

#: The default cap on one line: far above any real progress update (~1 KiB), low enough to bound memory.
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
#: How much of an over-long line `LineTooLongError.prefix` keeps.
PREFIX_BYTES = 64

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
