"""Pure layer: which failures may be tried again, and after how long.

A failure is sorted by the phase the request reached, because a Midjourney submit is paid work with
no idempotency key: sending it twice can pay twice.

- `not_sent`: the request never left (connect failed). Safe to send again.
- `rejected`: the provider turned it away before accepting it (429, 408, and a 503 that says when to
  come back with Retry-After: an overloaded server shedding load, not a failure mid-work). Safe,
  after Retry-After.
- `unknown`: it may have been received (the connection died after sending, a read timed out, a 5xx
  or any `ServerError`, which a gateway whose relay failed may send with a 4xx, or a success answer
  that cannot be decoded: the server got the request, and may have made a task before its answer was
  garbled). Safe to repeat for idempotent calls; a submit must be looked up first.
- `fatal`: the provider refused it for good (400, 401, 403, 404, ...). Never retried.

No I/O here: the sleeping and the lookups live in the client layer, and all of this is tested
without a network or a clock.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Literal

from ._config import RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    InvalidRequestError,
    MJError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "Phase",
    "backoff_delay",
    "made_no_task",
    "parse_retry_after",
    "phase_of",
    "retry_delay",
]

Phase = Literal["not_sent", "rejected", "unknown", "fatal"]

#: Statuses that say "not now" without having accepted anything.
_REJECTED_STATUSES = frozenset({408, 429})


def phase_of(error: BaseException) -> Phase:
    """How far the failed request got; see the module docstring."""
    if isinstance(error, APIConnectionError):
        return "unknown" if error.may_have_reached_server else "not_sent"
    if isinstance(error, ResponseDecodeError):
        return "unknown"
    if isinstance(error, RateLimitError):
        return "rejected"
    if isinstance(error, APIStatusError):
        if error.status in _REJECTED_STATUSES:
            return "rejected"
        if error.status == 503 and error.retry_after is not None:
            return "rejected"
        # A ServerError whatever its status: a gateway that failed to relay the request says so with a
        # 4xx (new-api's 400 `do_request_failed`), and the upstream may have got it all the same.
        if error.status >= 500 or isinstance(error, ServerError):
            return "unknown"
    return "fatal"


def made_no_task(error: BaseException) -> bool:
    """Whether a submit that ended with `error` certainly made no task at the provider.

    True when it never left or was refused (a 4xx: turned away or rejected for good) or was bad
    input; False whenever the provider may hold a task for it (an error after it was received, an
    answer that could not be read, a wait that ran out before the task id was known).
    """
    if isinstance(error, InvalidRequestError):
        return True
    if isinstance(error, ServerError):
        return False  # a failure after it was received, even when a gateway reports it with a 4xx
    if isinstance(error, APIStatusError) and 400 <= error.status < 500:
        return True
    return phase_of(error) == "not_sent"


def backoff_delay(attempt: int, policy: RetryPolicy, *, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential, capped, with jitter."""
    base = min(policy.initial_delay * (2.0 ** min(attempt, 30)), policy.max_delay)
    return base * (1.0 - policy.jitter * rand())


def retry_delay(
    error: MJError, attempt: int, policy: RetryPolicy, *, rand: Callable[[], float] = random.random
) -> float | None:
    """Seconds to wait before retrying after `error`, or None when the provider's wait is too long.

    A Retry-After the provider sent wins over the backoff schedule; past `policy.max_retry_after` we
    give up rather than hold a job that long.
    """
    hinted = getattr(error, "retry_after", None)
    if isinstance(hinted, (int, float)):
        return None if hinted > policy.max_retry_after else float(hinted)
    return backoff_delay(attempt, policy, rand=rand)


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
