"""Leaf layer: client options as small frozen value objects, and every default in one place."""

import math

import msgspec

from ._exceptions import InvalidRequestError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ENV_API_KEY",
    "ENV_API_KEY_FALLBACK",
    "ENV_BASE_URL",
    "Limits",
    "PollPolicy",
    "Timeouts",
]

DEFAULT_BASE_URL = "https://api.acedata.cloud"
ENV_API_KEY = "MJASYNC_API_KEY"
#: AceData's own tools read this one; we fall back to it.
ENV_API_KEY_FALLBACK = "ACEDATACLOUD_API_TOKEN"
ENV_BASE_URL = "MJASYNC_BASE_URL"

#: A JSON body bigger than this is refused without reading it all.
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: An ndjson progress line bigger than this ends the stream with LineTooLongError.
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
#: AceData's own default for the server-side `timeout` of a synchronous call.
DEFAULT_SERVER_TIMEOUT = 480.0


def _check_positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    if value is None:
        if not allow_none:
            raise InvalidRequestError(f"{name} must be a number of seconds, not None")
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequestError(f"{name} must be a positive number of seconds, got {value!r}")


class Timeouts(msgspec.Struct, kw_only=True, frozen=True):
    """Socket-level time limits, in seconds.

    `read` is an idle limit: the longest gap between two reads. A synchronous long-wait call stretches
    it to the server-side `timeout` it sends plus `long_wait_margin`, so the server gives up first.
    """

    connect: float = 10.0
    #: Idle gap allowed while reading a plain JSON response.
    read: float = 60.0
    #: Idle gap allowed between two ndjson lines (a job may sit in a queue before its first line).
    stream_read: float = 900.0
    #: Overall limit for one plain request; None for no limit.
    total: float | None = 120.0
    long_wait_margin: float = 30.0

    def __post_init__(self) -> None:
        _check_positive("Timeouts.connect", self.connect, allow_none=False)
        _check_positive("Timeouts.read", self.read, allow_none=False)
        _check_positive("Timeouts.stream_read", self.stream_read, allow_none=False)
        _check_positive("Timeouts.total", self.total)
        _check_positive("Timeouts.long_wait_margin", self.long_wait_margin, allow_none=False)


class Limits(msgspec.Struct, kw_only=True, frozen=True):
    """Connection-pool limits for the client's aiohttp connector."""

    max_connections: int = 256
    max_connections_per_host: int = 128
    #: Seconds an idle keep-alive connection is kept for reuse.
    keepalive_expiry: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_host"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequestError(f"Limits.{name} must be a positive int, got {value!r}")
        _check_positive("Limits.keepalive_expiry", self.keepalive_expiry, allow_none=False)


class PollPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """How a submitted job is polled: a growing interval, and an overall deadline."""

    #: The first poll comes this long after the submit.
    initial_interval: float = 2.0
    #: The interval grows by this factor after each poll ...
    factor: float = 1.5
    #: ... up to this.
    max_interval: float = 10.0
    #: Give up waiting (the job may still finish) after this many seconds; None waits forever.
    deadline: float | None = 900.0
    #: Waiters are gathered for this long so that one `retrieve_batch` serves many.
    batch_window: float = 0.02
    #: The most task ids in one `retrieve_batch`.
    max_batch: int = 50

    def __post_init__(self) -> None:
        _check_positive("PollPolicy.initial_interval", self.initial_interval, allow_none=False)
        _check_positive("PollPolicy.max_interval", self.max_interval, allow_none=False)
        _check_positive("PollPolicy.deadline", self.deadline)
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor >= 1):
            raise InvalidRequestError(f"PollPolicy.factor must be >= 1, got {self.factor!r}")
        if not (math.isfinite(self.batch_window) and self.batch_window >= 0):
            raise InvalidRequestError(f"PollPolicy.batch_window must be >= 0, got {self.batch_window!r}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise InvalidRequestError(f"PollPolicy.max_batch must be a positive int, got {self.max_batch!r}")
