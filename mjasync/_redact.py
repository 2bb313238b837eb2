"""Leaf layer: the one place that knows the credentials, so that nothing mjasync shows can carry them.

Every secret the package holds (a client's API key, a webhook receiver's secret) is registered here for
as long as its owner lives (`hold`). Everything built from what a server sent — every error's
message, body, trace id and code, a stream line's quoted prefix, a foreign exception chained as a
cause, a log record — is passed through `redact` before anyone can see it. The registry is per
process: redacting another client's key from an error is harmless, and one registry means no layer
has to thread a key to wherever an error happens to be built.

The cost is paid only on the error path: nothing here touches a successful answer.

Three entry points serve the rest of the package: `MJError` passes every value it is given through
`redact_value`; every place that translates a foreign exception (aiohttp, msgspec, a RecursionError)
into an mjasync error chains it through `redact_cause`; and `RedactingFilter` sits on the `mjasync`
logger.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Final, TypeVar

__all__ = [
    "REDACTED",
    "RedactedCause",
    "RedactingFilter",
    "hold",
    "redact",
    "redact_bytes",
    "redact_cause",
    "redact_value",
    "secrets",
]

V = TypeVar("V")

#: What a secret is replaced with.
REDACTED: Final = "[redacted]"
#: A secret shorter than this cannot be told from ordinary text (replacing "k" would mangle every
#: message), so it is not held; no provider issues keys that short.
MIN_SECRET: Final = 8
#: A part of a secret this long or longer, cut off by the edge of a quoted excerpt, is redacted too.
MIN_PARTIAL: Final = 6

_lock = threading.Lock()
#: secret -> how many live owners hold it.
_held: dict[str, int] = {}
#: The secrets, longest first (so that one secret inside another is replaced whole), rebuilt on change.
_ordered: tuple[str, ...] = ()

# JSON (`\u002d`, `\/`) and percent escapes let a server echo a secret in a form that decoding turns
# back into it; an excerpt is unescaped before it is searched. A `repr` of escaped JSON doubles the
# backslash (`\\u002d`), which counts too.
_JSON_ESCAPE: Final = re.compile(
    r"\\+u([dD][89abAB][0-9a-fA-F]{2})\\+u([dD][c-fC-F][0-9a-fA-F]{2})|\\+u([0-9a-fA-F]{4})|\\([\"\\/bfnrt])"
)
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
    """Register `secret` for as long as `owner` lives (owners may share a secret).

    A secret shorter than `MIN_SECRET` characters is not held (see there).
    """
    if not secret or len(secret) < MIN_SECRET:
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
        high, low, unit, simple = match.groups()
        if high is not None:
            # A surrogate pair (an emoji escaped by an ASCII-only encoder) is one character.
            return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00))
        if unit is not None:
            code = int(unit, 16)
            # A lone surrogate could not be encoded back to UTF-8: it stands for nothing readable.
            return "\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code)
        return _SIMPLE[simple]

    return _JSON_ESCAPE.sub(one, text)


def redact(text: str, *, excerpt: bool = False) -> str:
    """`text` with every held secret replaced by `REDACTED`.

    With `excerpt` (a piece cut out of a longer answer: a line's prefix, a capped body, the quote in a
    parser's message), a secret cut in two is redacted too, as long as the part left (its head or its
    tail) is `MIN_PARTIAL` characters or more.
    """
    held = _ordered
    if not held or not text:
        return text
    if "\\" in text:
        unescaped = _unescape(text)
        if _shows_any(unescaped, held, excerpt=excerpt):
            text = unescaped
    elif "%" in text:
        from urllib.parse import unquote

        unquoted = unquote(text)
        if _shows_any(unquoted, held, excerpt=excerpt):
            text = unquoted
    for secret in held:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if excerpt:
        text = _redact_pieces(text, held)
    return text


def _shows_any(text: str, held: tuple[str, ...], *, excerpt: bool) -> bool:
    """Whether `text` shows a held secret; in an excerpt, a cut one counts too (its head or its tail)."""
    if any(secret in text for secret in held):
        return True
    return excerpt and any(
        len(secret) > MIN_PARTIAL and (secret[:MIN_PARTIAL] in text or secret[-MIN_PARTIAL:] in text)
        for secret in held
    )


def _redact_pieces(text: str, held: tuple[str, ...]) -> str:
    """`text` with every piece of a secret cut off at one end (its head or its tail, `MIN_PARTIAL`
    characters or more) redacted, wherever it is: an excerpt's cut can fall inside a quote in its middle."""
    for secret in held:
        if len(secret) <= MIN_PARTIAL:
            continue
        head, tail = secret[:MIN_PARTIAL], secret[-MIN_PARTIAL:]
        start = text.find(head)
        while start >= 0:
            end = start + MIN_PARTIAL
            while end < len(text) and end - start < len(secret) and text[end] == secret[end - start]:
                end += 1
            text = text[:start] + REDACTED + text[end:]
            start = text.find(head, start + len(REDACTED))
        end = text.find(tail)
        while end >= 0:
            end += MIN_PARTIAL
            start = end - MIN_PARTIAL
            while (
                start > 0
                and end - start < len(secret)
                and text[start - 1] == secret[len(secret) - (end - start) - 1]
            ):
                start -= 1
            text = text[:start] + REDACTED + text[end:]
            end = text.find(tail, start + len(REDACTED))
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


#: Containers nested deeper than this inside an error's attribute are replaced whole (no recursion limit
#: is ever at stake, and a decoded answer that deep is never worth showing).
_MAX_DEPTH: Final = 32
#: Attributes some built-in exceptions keep outside `args` and `__dict__` (UnicodeDecodeError.object
#: holds the whole undecodable body).
_BUILTIN_FIELDS: Final = ("object", "reason", "strerror", "filename", "filename2", "msg", "text")


def redact_value(value: V, *, excerpt: bool = False) -> V:
    """`value` with every held secret redacted, the same object when it holds none.

    Strings and bytes as `redact`/`redact_bytes` do; lists, tuples (named ones too), mappings,
    dataclasses and msgspec Structs are copied with their contents redacted (a mapping becomes a
    `dict`). Anything else comes back as it is.
    """
    if not _ordered:
        return value
    cleaned: V = _redact_any(value, excerpt, 0)
    return cleaned


def _redact_any(value: Any, excerpt: bool, depth: int) -> Any:
    if isinstance(value, str):
        return redact(value, excerpt=excerpt)
    if isinstance(value, bytes):
        return redact_bytes(value, excerpt=excerpt)
    if isinstance(value, bytearray):
        scrubbed = redact_bytes(bytes(value), excerpt=excerpt)
        return value if scrubbed == value else bytearray(scrubbed)
    if isinstance(value, (int, float, type(None), BaseException)):
        return value
    struct_fields = getattr(type(value), "__struct_fields__", None)
    is_data = dataclasses.is_dataclass(value) and not isinstance(value, type)
    if not (struct_fields is not None or is_data or isinstance(value, (list, tuple, Mapping))):
        return value
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        pairs = list(value.items())
        cleaned = [(_redact_any(k, excerpt, depth + 1), _redact_any(v, excerpt, depth + 1)) for k, v in pairs]
        same = all(new[0] is old[0] and new[1] is old[1] for new, old in zip(cleaned, pairs, strict=True))
        return value if same else dict(cleaned)
    if isinstance(value, (list, tuple)):
        items = [_redact_any(item, excerpt, depth + 1) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        if isinstance(value, list):
            return items
        # A named tuple (aiohttp's RequestInfo) keeps its type.
        named: Any = value
        return named._make(items) if hasattr(value, "_fields") else tuple(items)
    names = (
        struct_fields if struct_fields is not None else [f.name for f in dataclasses.fields(value) if f.init]
    )
    changes = {}
    for name in names:
        old = getattr(value, name)
        new_value = _redact_any(old, excerpt, depth + 1)
        if new_value is not old:
            changes[name] = new_value
    if not changes:
        return value
    if struct_fields is not None:
        return value.__replace__(**changes)
    return dataclasses.replace(value, **changes)


def _shows(text: str) -> bool:
    """Whether `text` shows a held secret (also escaped)."""
    return redact(text) != text


class RedactedCause(Exception):
    """Stands in a chain of causes for a foreign exception that could not be cleaned of a secret."""


def redact_cause(exc: BaseException) -> BaseException:
    """`exc` with every held secret scrubbed from it and from its chain (`__cause__`, `__context__`), in place.

    Used wherever a foreign exception (aiohttp, msgspec, a RecursionError) is chained under an mjasync
    error: its `args` and its str/bytes/mapping attributes are redacted. An exception that still shows
    a secret after that is replaced by a `RedactedCause` naming its type (the return value).
    """
    if not _ordered:
        return exc
    return _clean_chain(exc, set())


def _clean_chain(exc: BaseException, seen: set[int]) -> BaseException:
    if id(exc) in seen:
        return exc
    seen.add(id(exc))
    suppress = exc.__suppress_context__
    cause, context = exc.__cause__, exc.__context__
    clean_cause = _clean_chain(cause, seen) if cause is not None else None
    clean_context = _clean_chain(context, seen) if context is not None else None
    if clean_cause is not cause:
        exc.__cause__ = clean_cause
    if clean_context is not context:
        exc.__context__ = clean_context
    exc.__suppress_context__ = suppress
    _scrub(exc)
    if not _still_shows(exc):
        return exc
    # Last resort: drop what still shows it, then, if even that is not enough, stand in for it.
    _set_quietly(exc, "args", (f"{type(exc).__name__} (withheld: it showed a secret)",))
    for name, value in _fields(exc):
        if _shows(_text_of(value)):
            _set_quietly(exc, name, None)
    if not _still_shows(exc):
        return exc
    placeholder = RedactedCause(
        f"{type(exc).__module__}.{type(exc).__qualname__} (withheld: it showed a secret)"
    )
    placeholder.__cause__, placeholder.__context__ = clean_cause, clean_context
    placeholder.__suppress_context__ = suppress
    return placeholder.with_traceback(exc.__traceback__)


def _fields(exc: BaseException) -> list[tuple[str, object]]:
    """An exception's own attributes: its `__dict__` and the built-in ones some exception types add."""
    found = dict(getattr(exc, "__dict__", {}))
    for name in _BUILTIN_FIELDS:
        if name not in found and hasattr(type(exc), name):
            found[name] = getattr(exc, name, None)
    return list(found.items())


def _scrub(exc: BaseException) -> None:
    args = _redact_any(exc.args, True, 0)
    if args is not exc.args:
        _set_quietly(exc, "args", args)
    for name, value in _fields(exc):
        cleaned = _redact_any(value, True, 0)
        if cleaned is not value:
            _set_quietly(exc, name, cleaned)


def _set_quietly(exc: BaseException, name: str, value: object) -> None:
    try:
        setattr(exc, name, value)
    except (AttributeError, TypeError, ValueError):
        if name in getattr(exc, "__dict__", {}):
            exc.__dict__[name] = value


def _text_of(value: object) -> str:
    try:
        return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else repr(value)
    except Exception:  # a foreign object's repr may fail; then it shows nothing
        return ""


def _still_shows(exc: BaseException) -> bool:
    try:
        shown = [str(exc), repr(exc)]
    except Exception:  # its own str failing, after our edits, is as bad as showing the secret
        return True
    shown += [_text_of(value) for _, value in _fields(exc)]
    return any(_shows(text) for text in shown)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts every record's message (its args formatted in) while a secret is held."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _ordered:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string is the handler's to report, not ours
            return True
        record.msg, record.args = redact(message), None
        return True
