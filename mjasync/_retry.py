"""Retry support. For now only the pure parsing of the server's Retry-After hint.

The retry policy itself (which failures to retry, the backoff schedule, the sleep) will live here too;
this module stays free of I/O so that all of it can be tested without a network or a clock.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER", "parse_retry_after"]

#: Longest wait we take from a Retry-After header (seconds), as openai-python's MAX_RETRY_AFTER_DELAY.
MAX_RETRY_AFTER = 120.0

# RFC 9110 delay-seconds is 1*DIGIT; we also take a fraction and an exponent, as openai-python does
# ("if someone sends a float there's no reason for us to not respect it"). ASCII only: `float()` alone
# would also accept "inf", "nan", "1_000" and non-ASCII (e.g. Arabic-Indic) digits.
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
# Checked in this order; names are lower case.
_MS = "retry-after-ms"
_SECONDS = "retry-after"


def parse_retry_after(
    headers: Mapping[str, str], *, now: float | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Return how many seconds the server asks us to wait, from Retry-After headers, or None.

    Looks up, case-insensitively, `retry-after-ms` (milliseconds, non-standard but more precise),
    then `retry-after` as delay-seconds, then `retry-after` as an HTTP date, taken relative to `now`
    (a Unix timestamp; `time.time()` when None). An unusable header falls through to the next form.

    The result is in `[0, cap]`: a date in the past gives 0.0 and a longer wait gives `cap`. Pass
    `cap=math.inf` to get the uncapped value (e.g. to refuse to retry when the server asks for more
    than some limit). Missing headers, junk, negative values, NaN, infinity, numbers beyond the float
    range and unrepresentable dates (year 100000) all give None. It never raises on header values.
    """
    found = _find(headers)
    ms = found.get(_MS)
    if ms is not None:
        delay = _parse_number(ms)
        if delay is not None:
            return min(delay / 1000.0, cap)
    value = found.get(_SECONDS)
    if value is None:
        return None
    delay = _parse_number(value)
    if delay is not None:
        return min(delay, cap)
    delay = _parse_http_date(value, time.time() if now is None else now)
    if delay is not None:
        return min(max(delay, 0.0), cap)
    return None


def _find(headers: Mapping[str, str]) -> dict[str, str]:
    """The Retry-After headers present, by lower-case name; the first one wins for repeated names."""
    # One pass with `.lower()` works for a plain dict with any key case as well as for aiohttp's
    # case-insensitive CIMultiDictProxy (whose `.items()` also yields repeated headers).
    found: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in (_MS, _SECONDS) and name not in found:
            found[name] = value
    return found


def _parse_number(value: str) -> float | None:
    """A finite, non-negative number of (milli)seconds, or None."""
    text = value.strip()
    if _NUMBER.fullmatch(text) is None:
        return None
    # The regex admits only numeric text, but "1e999" still parses to inf: hence the finiteness check.
    number = float(text)
    return number if math.isfinite(number) else None


def _parse_http_date(value: str, now: float) -> float | None:
    """Seconds from `now` until the HTTP date in `value` (negative if it is past), or None."""
    try:
        when = parsedate_to_datetime(value.strip())
        if when.tzinfo is None:
            # "-0000" (and an absent zone) come back naive; HTTP dates are always GMT.
            when = when.replace(tzinfo=timezone.utc)
        delay = when.timestamp() - now
    # ValueError: junk or a year out of range; TypeError: junk on older 3.x releases; OverflowError/OSError:
    # a timestamp the platform cannot represent; IndexError: malformed input in some versions.
    except (ValueError, TypeError, OverflowError, OSError, IndexError):
        return None
    return delay if math.isfinite(delay) else None
