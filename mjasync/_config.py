"""Leaf layer: client options as small frozen value objects, and every default in one place."""

import math
from typing import Final, Literal, get_args

import msgspec

from ._exceptions import InvalidRequestError
from ._types import WaitVia

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "MAX_IMAGE_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ClientSettings",
    "Limits",
    "PollPolicy",
    "RetryPolicy",
    "Timeouts",
]

DEFAULT_BASE_URL = "https://api.acedata.cloud"
#: Read for every provider; each provider may name its own variables to read after it
#: (`Provider.api_key_env`), never another provider's.
ENV_API_KEY = "MJASYNC_API_KEY"
ENV_BASE_URL = "MJASYNC_BASE_URL"

#: A JSON body bigger than this (16 MiB) is refused without reading it all (`Client(max_response_bytes=)`).
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: An ndjson progress line bigger than this (8 MiB) ends the stream with LineTooLongError
#: (`Client(max_line_bytes=)`).
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
#: Result files bigger than this (64 MiB) are refused unless the caller raises the limit
#: (`Client.download(url, max_bytes=)`, `download_to`, `save_images`).
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 64 * 1024 * 1024
#: One image a provider takes inline (a `data:` URL, fetched by the client first) at most: Discord's
#: upload limit for most accounts.
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
#: AceData's own default for the server-side `timeout` of a synchronous call (`server_wait=`).
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
    """Time limits for requests, in seconds.

    `read` is an idle limit: the longest gap between two reads. A synchronous long-wait call stretches
    it to the server-side wait it sends (a job's `server_wait`) plus `long_wait_margin`, so the server
    gives up first.

    `total` is the overall budget of one call, retries included, so a slow drip cannot multiply it:
    a lookup, describe, translate, shorten or seed, or an asynchronous submit (`job.submit()`, and the
    submit of `await job` via "poll" or "callback": its sends, its retries and the lookups that settle
    a lost answer), counted from its first send, each attempt getting what is left. A call out of
    budget raises `APITimeoutError`; a submit out of budget raises `AmbiguousSubmitError` (it may have
    made a task: `Client.find_task(job, since=job.sent_at)`). A stream or a synchronous long wait is
    the wait itself, so `PollPolicy.deadline` bounds it, as it bounds all waiting for a result.
    """

    #: Seconds to open a connection (TCP and TLS).
    connect: float = 10.0
    #: Idle gap allowed while reading a plain JSON response.
    read: float = 60.0
    #: Idle gap allowed between two ndjson lines (a job may sit in a queue before its first line).
    stream_read: float = 900.0
    #: Overall budget of one call or submit with all its retries, from its first send; None for none.
    total: float | None = 120.0
    #: Added to a synchronous long wait's `server_wait` to make its read limit, so the server gives up first.
    long_wait_margin: float = 30.0

    def __post_init__(self) -> None:
        _check_positive("Timeouts.connect", self.connect, allow_none=False)
        _check_positive("Timeouts.read", self.read, allow_none=False)
        _check_positive("Timeouts.stream_read", self.stream_read, allow_none=False)
        _check_positive("Timeouts.total", self.total)
        _check_positive("Timeouts.long_wait_margin", self.long_wait_margin, allow_none=False)


class Limits(msgspec.Struct, kw_only=True, frozen=True):
    """How much runs at once: jobs in flight, submits per second, and the connection pool.

    Jobs in flight (submitted, not finished) are what the provider counts; sockets are a separate,
    larger cap, so that task lookups never queue behind streams.
    """

    #: Jobs submitted and not yet finished, per client (it shrinks on 429s and grows back).
    max_in_flight: int = 64
    #: Submits per second at most; None for no pacing.
    submits_per_second: float | None = None
    #: Sockets in the client's pool at most; must exceed `max_in_flight`, so lookups never wait for a socket.
    max_connections: int = 256
    #: Sockets to one host at most; must exceed `max_in_flight` too.
    max_connections_per_host: int = 128
    #: Seconds an idle keep-alive connection is kept for reuse.
    keepalive_expiry: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "max_connections", "max_connections_per_host"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequestError(f"Limits.{name} must be a positive int, got {value!r}")
        _check_positive("Limits.keepalive_expiry", self.keepalive_expiry, allow_none=False)
        if self.submits_per_second is not None:
            _check_positive("Limits.submits_per_second", self.submits_per_second)
        if min(self.max_connections, self.max_connections_per_host) <= self.max_in_flight:
            raise InvalidRequestError(
                "Limits.max_connections and max_connections_per_host must exceed max_in_flight, "
                "so that task lookups have sockets while every job holds one"
            )


class PollPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """How a submitted job is waited on: when it is looked up, and one overall deadline.

    When. The first lookup comes `initial_interval` (1 s) after the submit is answered, so a job done
    within a second or two is known about a second after it was sent. Then each lookup is planned from
    what the lookups have shown (`mjasync._poller`):

    - while a job shows no progress (queued) or has moved only once, the wait grows from
      `initial_interval` by `factor` up to `max_interval` (1, 1.5, 2.25, ... 10 s), and starts again
      from `initial_interval` whenever progress rises;
    - once progress has risen twice, its pace gives an estimate of the job's end (the sooner of the
      pace over the whole span and over the latest step). Lookups close in on it, each after a
      third of the time left, and the one meant to find the job done comes just after the
      estimate (0.1 s);
    - a job still running past its estimate is looked up again after a third of the time it has
      overrun, so noticing its end late stays a share of how wrong the estimate was.

    No wait is shorter than `initial_interval` nor longer than `max_interval`, except that a lookup
    other than the first may come early (never late) to ride in a batched lookup that goes out anyway.
    Every waiting job of a client shares those lookups: one `retrieve_batch` (AceData) or `multi_fetch`
    (GoAPI) of up to `max_batch` ids serves all that fall due within `batch_window`, and takes those
    due within half their wait while it has room.

    `deadline` bounds every way of waiting for a job: `await job` with every `via` (stream, poll,
    callback, sync long wait), iterating `job.stream()`, and `TaskHandle.wait()` / `updates()` (GoAPI's
    describe and seed, run as tasks, too). It is counted from the job's first send, so a stream that
    broke and carries on by polling, or a long wait cut by a 504, gets no fresh deadline. When it runs
    out, `WaitTimeoutError` (with `task_id` when known) is raised; the job may still finish.

    With the defaults, every such await returns or raises within `deadline` (900 s) of the job's first
    send. Not counted: waiting for an in-flight slot held by the client's other jobs, and a shared 429
    cooldown before the first send (at most `RetryPolicy.max_retry_after`). `await job.submit()` is
    bounded by `Timeouts.total`; a handle waited on later counts its deadline from that same first
    send (a handle from `Client.task(id)` from its first wait), and `wait(deadline=s)` counts `s`
    from the call.

    A task the provider keeps saying it has no record of ends the wait sooner: after
    `max_missing_lookups` lookups in a row without its record, `TaskNotFoundError` is raised (or
    `ResponseDecodeError`, with the task id, when the answers could not be read).
    """

    #: The first lookup comes this long after the submit; also the shortest wait between lookups.
    initial_interval: float = 1.0
    #: While there is no estimate of the end, the wait grows by this factor after each lookup ...
    factor: float = 1.5
    #: ... up to this; no wait is longer.
    max_interval: float = 10.0
    #: Give up waiting (the job may still finish) this many seconds after the job's first send; None
    #: waits forever.
    deadline: float | None = 900.0
    #: Waiters are gathered for this long so that one `retrieve_batch` serves many.
    batch_window: float = 0.02
    #: The most task ids in one `retrieve_batch`.
    max_batch: int = 50
    #: A job awaited by callback is polled only once no callback has come for this long (the
    #: callback may be lost); then every `max_interval` until a callback or the result arrives.
    callback_grace: float = 120.0
    #: Lookups in a row that find no readable record of the task (a just-accepted task may not be
    #: indexed yet, and one garbled answer may be a hiccup, so one is not enough) before the wait ends
    #: with `TaskNotFoundError` (or the `ResponseDecodeError`); any record resets the count.
    max_missing_lookups: int = 3

    def __post_init__(self) -> None:
        _check_positive("PollPolicy.initial_interval", self.initial_interval, allow_none=False)
        _check_positive("PollPolicy.callback_grace", self.callback_grace, allow_none=False)
        _check_positive("PollPolicy.max_interval", self.max_interval, allow_none=False)
        _check_positive("PollPolicy.deadline", self.deadline)
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor >= 1):
            raise InvalidRequestError(f"PollPolicy.factor must be >= 1, got {self.factor!r}")
        if not (math.isfinite(self.batch_window) and self.batch_window >= 0):
            raise InvalidRequestError(f"PollPolicy.batch_window must be >= 0, got {self.batch_window!r}")
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise InvalidRequestError(f"PollPolicy.max_batch must be a positive int, got {self.max_batch!r}")
        missing = self.max_missing_lookups
        if isinstance(missing, bool) or not isinstance(missing, int) or missing < 1:
            raise InvalidRequestError(
                f"PollPolicy.max_missing_lookups must be a positive int, got {missing!r}"
            )


class RetryPolicy(msgspec.Struct, kw_only=True, frozen=True):
    """When and how a failed request is tried again.

    Failures are sorted by phase (see `mjasync._retry`): a request that never left, or that the
    provider turned away before accepting it (429, 408), is retried for every call. A submit whose
    fate is unknown is first looked up at the provider, and never blindly sent again: a found task
    is resumed; otherwise `on_ambiguous_submit` decides. Lookups and other idempotent calls are
    also retried on 5xx and dropped connections. 400, 401, 403 and 404 are never retried.
    """

    #: Retries after the first attempt. 0 turns the whole layer off: no retry, no lookup of a submit
    #: of unknown fate, no resuming of a broken stream; the first error is raised as it is. A submit
    #: refused with 429 (nothing made) does not count: the limiter paces it, and time bounds it
    #: (`Timeouts.total`, or the job's deadline for a stream or a long wait).
    max_retries: int = 2
    #: Backoff: `initial_delay * 2**n`, at most `max_delay`, less up to `jitter` of it at random.
    initial_delay: float = 0.5
    #: The longest backoff between two attempts, in seconds.
    max_delay: float = 8.0
    #: Share of each backoff taken off at random (0 to 1), so that many clients do not retry in step.
    jitter: float = 0.25
    #: A Retry-After longer than this is not waited for: the error is raised instead.
    max_retry_after: float = 120.0
    #: A submit whose connection died after sending, or that got a 5xx, and that the provider's
    #: records do not show: "raise" an `AmbiguousSubmitError`, or "resubmit" (may pay twice).
    on_ambiguous_submit: Literal["raise", "resubmit"] = "raise"
    #: Seconds to let a possibly-received submit settle before looking it up.
    reconcile_delay: float = 1.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise InvalidRequestError(
                f"RetryPolicy.max_retries must be an int >= 0, got {self.max_retries!r}"
            )
        _check_positive("RetryPolicy.initial_delay", self.initial_delay, allow_none=False)
        _check_positive("RetryPolicy.max_delay", self.max_delay, allow_none=False)
        _check_positive("RetryPolicy.max_retry_after", self.max_retry_after, allow_none=False)
        if not (math.isfinite(self.jitter) and 0 <= self.jitter < 1):
            raise InvalidRequestError(f"RetryPolicy.jitter must be in [0, 1), got {self.jitter!r}")
        if not (math.isfinite(self.reconcile_delay) and self.reconcile_delay >= 0):
            raise InvalidRequestError(
                f"RetryPolicy.reconcile_delay must be >= 0, got {self.reconcile_delay!r}"
            )
        if self.on_ambiguous_submit not in ("raise", "resubmit"):
            raise InvalidRequestError(
                f"RetryPolicy.on_ambiguous_submit must be 'raise' or 'resubmit', got {self.on_ambiguous_submit!r}"
            )


class ClientSettings(msgspec.Struct, kw_only=True, frozen=True):
    """A client's options, checked: what `Client.with_options` starts from and changes.

    The API key, base URL, connection pool and webhook receiver are not here: they are what a derived
    client shares with (or takes instead of) the one it came from.
    """

    provider: str
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    poll: PollPolicy = PollPolicy()
    retry: RetryPolicy = RetryPolicy()
    #: Sent with every request to the provider (checked by the client: names and values headers can carry).
    default_headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: How `await job` waits: "stream" by default, "callback" when the client has a webhook receiver.
    wait_via: WaitVia = "stream"
    #: The largest ndjson progress line read (8 MiB); a longer one ends the stream with `LineTooLongError`.
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    #: The largest JSON answer read (16 MiB); a bigger one is refused without reading it all.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    #: Checked by the client (`check_max_prompt_chars`), whose default it takes (`MAX_PROMPT_CHARS`).
    max_prompt_chars: int

    def __post_init__(self) -> None:
        if self.wait_via not in _WAIT_VIAS:
            raise InvalidRequestError(f"wait_via must be one of {_WAIT_VIAS}, not {self.wait_via!r}")
        for name in ("max_line_bytes", "max_response_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise InvalidRequestError(f"{name} must be an int of at least 1024, got {value!r}")


_WAIT_VIAS: Final = get_args(WaitVia)
