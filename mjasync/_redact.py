"""Leaf layer: the one place that knows the credentials, so that nothing mjasync shows can carry them.

Every secret the package holds (a client's API key, a webhook receiver's secret) is registered here for
as long as its owner lives (`hold`). Everything built from what a server sent — every error's
message, body, trace id and code, a stream line's quoted prefix, a foreign exception chained as a
cause, a log record — is passed through `redact` before anyone can see it. The registry is per
process: redacting another client's key from an error is harmless, and one registry means no layer
has to thread a key to wherever an error happens to be built.

The cost is paid only on the error path: nothing here touches a successful answer.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Final

__all__ = ["REDACTED", "hold", "redact", "redact_bytes", "secrets"]

#: What a secret is replaced with.
REDACTED: Final = "[redacted]"
#: A part of a secret this long or longer, cut at the edge of a quoted excerpt, is redacted too.
MIN_PARTIAL: Final = 6

_lock = threading.Lock()
#: secret -> how many live owners hold it.
_held: dict[str, int] = {}
#: The secrets, longest first (so that one secret inside another is replaced whole), rebuilt on change.
_ordered: tuple[str, ...] = ()

# JSON (`\u002d`, `\/`) and percent escapes let a server echo a secret in a form that decoding turns
# back into it; an excerpt is unescaped before it is searched.
_JSON_ESCAPE: Final = re.compile(r"\\u([0-9a-fA-F]{4})|\\([\"\\/bfnrt])")
_SIMPLE: Final = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "/": "/"}


def _rebuild() -> None:
    global _ordered
    _ordered = tuple(sorted(_held, key=len, reverse=True))


def _release(secret: str) -> None:
    with _lock:
        count = _held.get(secret, 0) - 1
        if count > 0:
            _held[secret] = count
        else:
            _held.pop(secret, None)
        _rebuild()


def hold(owner: object, secret: str | None) -> None:
    """Register `secret` for as long as `owner` lives (owners may share a secret)."""
    if not secret:
        return
    with _lock:
        _held[secret] = _held.get(secret, 0) + 1
        _rebuild()
    weakref.finalize(owner, _release, secret)


def secrets() -> tuple[str, ...]:
    """The secrets held now, longest first."""
    return _ordered


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return chr(int(match.group(1), 16))
        return _SIMPLE[match.group(2)]

    return _JSON_ESCAPE.sub(one, text)


def redact(text: str, *, excerpt: bool = False) -> str:
    """`text` with every held secret replaced by `REDACTED`.

    With `excerpt` (a piece cut out of a longer answer: a line's prefix, a capped body), a secret cut
    in two at either edge is redacted too, as long as the part left is `MIN_PARTIAL` characters or more.
    """
    held = _ordered
    if not held or not text:
        return text
    if "\\" in text:
        unescaped = _unescape(text)
        if any(secret in unescaped for secret in held):
            text = unescaped
    elif "%" in text:
        from urllib.parse import unquote

        unquoted = unquote(text)
        if any(secret in unquoted for secret in held):
            text = unquoted
    for secret in held:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if excerpt:
        text = _redact_edges(text, held)
    return text


def _redact_edges(text: str, held: tuple[str, ...]) -> str:
    for secret in held:
        longest = min(len(secret) - 1, len(text))
        for size in range(longest, MIN_PARTIAL - 1, -1):
            if text.endswith(secret[:size]):
                text = text[:-size] + REDACTED
                break
        longest = min(len(secret) - 1, len(text))
        for size in range(longest, MIN_PARTIAL - 1, -1):
            if text.startswith(secret[-size:]):
                text = REDACTED + text[size:]
                break
    return text


def redact_bytes(data: bytes, *, excerpt: bool = False) -> bytes:
    """`data` with every held secret replaced (see `redact`); bytes that hold none come back as they were."""
    held = _ordered
    if not held or not data:
        return data
    text = data.decode("utf-8", "surrogateescape")
    cleaned = redact(text, excerpt=excerpt)
    if cleaned is text:
        return data
    return cleaned.encode("utf-8", "surrogateescape")
