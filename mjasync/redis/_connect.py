"""Transport layer of the scale-out: a Redis connection with bounded waits, and its errors made ours.

Every key of an account lives under one hash tag, `{mj:<account>}`, so the scripts that touch several
keys touch one slot (a Redis Cluster keeps them on one node). The URL's password is held by
`_redact` for as long as its owner lives, and is never shown: reprs and messages use `describe(url)`.
A redis-py error becomes a `CoordinatorUnavailableError` (and an epoch error from a script a
`RunDataLostError`), chained to the original through `redact_cause`, as every foreign error is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._exceptions import CoordinatorUnavailableError, InvalidRequestError, RunDataLostError
from .._redact import hold, redact, redact_cause

__all__ = [
    "EPOCH_ERROR",
    "account_tag",
    "check_name",
    "connect",
    "coordinator_errors",
    "describe",
]

_NAME: Final = re.compile(r"[A-Za-z0-9._:-]{1,100}")
#: How a script says the run's epoch is gone or another's: `return redis.error_reply(EPOCH_ERROR .. ...)`.
EPOCH_ERROR: Final = "EPOCH"


def check_name(name: str, what: str = "account") -> str:
    """`name` (an account or a run), refused unless it is 1-100 of `A-Za-z0-9._:-`: it becomes part of keys."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError(f"{what} must be 1-100 characters of A-Z a-z 0-9 . _ : -, not {name!r}")
    return name


def account_tag(account: str) -> str:
    """The hash tag every key of `account` starts with."""
    return "{mj:" + check_name(account) + "}"


def describe(url: str) -> str:
    """`url` without its user and password, for reprs and messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unreadable Redis URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def connect(url: str, *, owner: object, timeout: float = 5.0) -> redis.asyncio.Redis:
    """A client for `url` (`redis://`, `rediss://` or `unix://`) whose every command waits at most
    `timeout` seconds, with no retries of its own (callers decide: a submit fails closed).

    The password in the URL, if any, is held by `_redact` for `owner`'s lifetime. Nothing is
    connected until the first command.
    """
    if not isinstance(url, str):
        raise InvalidRequestError("the Redis URL must be a string such as redis://127.0.0.1:6379/0")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises here, before anything connects)
    except ValueError:
        raise InvalidRequestError(f"not a Redis URL: {describe(url)}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise InvalidRequestError(
            f"a Redis URL starts with redis://, rediss:// or unix://, not {parts.scheme or 'nothing'}"
        )
    if not timeout > 0:
        raise InvalidRequestError(f"timeout must be > 0 seconds, not {timeout!r}")
    hold(owner, parts.password)
    return redis.asyncio.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        decode_responses=False,
    )


@contextmanager
def coordinator_errors(what: str) -> Iterator[None]:
    """`with coordinator_errors("admitting a job"):` turns redis-py's errors into ours.

    An epoch error a script returned is `RunDataLostError`; anything else Redis-side (no connection,
    a timeout, a server still loading its data, an error reply) is `CoordinatorUnavailableError`.
    The original is chained scrubbed of every held secret (`redact_cause`).
    """
    try:
        yield
    except redis.exceptions.ResponseError as exc:
        text = redact(str(exc), excerpt=True)
        if text.startswith(EPOCH_ERROR):
            raise RunDataLostError(
                f"Redis lost this run's data while {what} ({text}): it was restarted without "
                "persistence or flushed. The run stops rather than submit anything twice; start a "
                "new run (another --run name) after checking what the provider already made."
            ) from redact_cause(exc)
        raise CoordinatorUnavailableError(f"Redis refused a command while {what}: {text}") from redact_cause(
            exc
        )
    except (redis.exceptions.RedisError, OSError) as exc:
        raise CoordinatorUnavailableError(
            f"Redis could not be reached while {what} ({type(exc).__name__}); no submit goes out "
            "until it answers"
        ) from redact_cause(exc)
