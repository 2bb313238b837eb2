"""Leaf layer: every error mjasync raises, under one root.

```
MJError
├── InvalidRequestError (also ValueError)   bad input, refused before anything is sent
│   ├── ActionNotAvailableError              the action is not in the result's `actions`
│   └── UnsupportedFeatureError              the provider has no such feature (videos on GoAPI)
├── APIError                                 something went wrong talking to the provider
│   ├── APIConnectionError                   no usable HTTP response (.may_have_reached_server)
│   │   └── APITimeoutError
│   ├── APIStatusError                       the provider answered with an error status
│   │   ├── BadRequestError            400
│   │   ├── AuthenticationError        401 (and the token codes AceData sends with 400)
│   │   ├── PermissionDeniedError      403
│   │   │   ├── ModerationError        403 `forbidden`
│   │   │   └── QuotaExceededError     403 `used_up`
│   │   ├── NotFoundError              404
│   │   ├── RateLimitError             429 (.retry_after)
│   │   └── ServerError                5xx
│   │       └── GatewayTimeoutError    504 (the server-side `timeout` ran out)
│   ├── ResponseDecodeError                  a 2xx body we could not decode
│   ├── StreamError                          an ndjson stream went wrong
│   │   ├── LineTooLongError
│   │   ├── MalformedLineError
│   │   └── StreamInterruptedError           the stream ended before the final result
│   ├── AmbiguousSubmitError                 a submit may or may not have created a task
│   ├── JobFailedError                       the provider reports the job itself as failed
│   └── TaskNotFoundError                    the provider keeps saying it has no such task
├── WaitTimeoutError (also TimeoutError)     our own deadline for a job ran out
└── CoordinatorError                         the shared state on Redis (`mjasync.redis`)
    ├── CoordinatorUnavailableError          Redis cannot be reached: no submit goes out
    └── RunDataLostError                     Redis lost the run's data: the run halts
```

Every `APIError` carries `status`, `code`, `message`, `trace_id` and a capped copy of the body. None of
them ever holds a credential (the API key, a webhook secret): every `MJError` passes its `args` and
every value set on it through `mjasync._redact`, whoever builds it and whenever a value is set, so no
error built from a server's answer can carry what the server echoed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._redact import redact_bytes, redact_cause, redact_value

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "ActionNotAvailableError",
    "AmbiguousSubmitError",
    "AuthenticationError",
    "BadRequestError",
    "BannedPromptError",
    "CoordinatorError",
    "CoordinatorUnavailableError",
    "GatewayTimeoutError",
    "InvalidRequestError",
    "JobFailedError",
    "LineTooLongError",
    "MJError",
    "MalformedLineError",
    "ModerationError",
    "NotFoundError",
    "RunDataLostError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "ResponseDecodeError",
    "ServerError",
    "StreamError",
    "StreamInterruptedError",
    "TaskNotFoundError",
    "UnsupportedFeatureError",
    "WaitTimeoutError",
]

#: How much of a response body an error keeps.
BODY_CAP = 2048
#: How much of a stream line an error quotes (`prefix`).
QUOTE_BYTES = 64


def cap_body(body: bytes | str | None, cap: int = BODY_CAP) -> str | None:
    """A printable, length-capped copy of a response body."""
    if body is None:
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if len(text) > cap:
        return text[:cap] + f"... [{len(text) - cap} more characters]"
    return text


class MJError(Exception):
    """Root of every error mjasync raises.

    Every held secret is redacted from its `args` and from every value set on it (a decoded Struct
    deeply), and a foreign exception chained to it from Python code is cleaned too (`redact_cause`).
    """

    #: Attributes that hold a piece cut out of a longer answer: a secret the cut left a piece of
    #: (`MIN_PARTIAL` characters or more) is redacted too.
    _EXCERPTS: ClassVar[frozenset[str]] = frozenset({"body", "prefix"})

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_value(arg) for arg in args))

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("__cause__", "__context__"):
            if isinstance(value, BaseException):
                value = redact_cause(value)
        else:
            value = redact_value(value, excerpt=name in self._EXCERPTS)
        super().__setattr__(name, value)


class InvalidRequestError(MJError, ValueError):
    """Raised for bad input, before any request is sent."""


class ActionNotAvailableError(InvalidRequestError):
    """Raised when an action is not in the `actions` list of the result it is applied to."""

    def __init__(self, action: str, available: list[str]) -> None:
        self.action = action
        self.available = list(available)
        listed = ", ".join(self.available) if self.available else "none"
        super().__init__(f"action {action!r} is not available on this result; available: {listed}")


class UnsupportedFeatureError(InvalidRequestError):
    """Raised when the client's provider has no such feature (videos on GoAPI, say)."""

    def __init__(self, provider: str, feature: str) -> None:
        self.provider = provider
        self.feature = feature
        super().__init__(f"{feature} is not supported by the {provider} provider")


class APIError(MJError):
    """Something went wrong while talking to the provider."""

    #: HTTP status, when there was a response.
    status: int | None
    #: The provider's error code (`bad_request`, `forbidden`, ...), when it sent one.
    code: str | None
    #: A human-readable message.
    message: str
    #: The provider's trace id for this request, to quote to its support.
    trace_id: str | None
    #: A capped copy of the response body.
    body: str | None
    #: The task this error belongs to, when known.
    task_id: str | None
    #: `METHOD /path` of the request, never the query string or headers.
    request: str | None
    #: How many times the request was retried before this error was raised.
    retries_taken: int

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        trace_id: str | None = None,
        body: bytes | str | None = None,
        task_id: str | None = None,
        request: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.trace_id = trace_id
        # Redacted whole before it is capped, so that the cap cannot cut a secret in two.
        self.body = cap_body(redact_value(body, excerpt=True))
        self.task_id = task_id
        self.request = request
        self.retries_taken = 0

    def __str__(self) -> str:
        head = " ".join(str(p) for p in (self.status, self.code) if p is not None)
        text = f"{head}: {self.message}" if head else self.message
        extras = [f"{k}={v}" for k, v in (("trace_id", self.trace_id), ("task_id", self.task_id)) if v]
        if self.request:
            extras.insert(0, self.request)
        return f"{text} ({', '.join(extras)})" if extras else text

    def __repr__(self) -> str:
        fields: dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "trace_id": self.trace_id,
            "task_id": self.task_id,
        }
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
        return f"{type(self).__name__}({shown})"


class APIConnectionError(APIError):
    """No usable HTTP response: the connection failed, was reset, or a read timed out."""

    #: False only when the request certainly never left this machine (e.g. the connect failed).
    may_have_reached_server: bool

    def __init__(self, message: str, *, may_have_reached_server: bool, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.may_have_reached_server = may_have_reached_server


class APITimeoutError(APIConnectionError):
    """A connect, idle-read or total timeout ran out."""


class APIStatusError(APIError):
    """The provider answered with an error status."""

    status: int
    #: Seconds the server asked us to wait (Retry-After), when it said so (429, 503, ...).
    retry_after: float | None

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BadRequestError(APIStatusError):
    """400: the provider rejected the request's content."""


class AuthenticationError(APIStatusError):
    """401, or a token error code: the API key is missing, wrong or expired."""


class PermissionDeniedError(APIStatusError):
    """403: the request is not allowed."""


class ModerationError(PermissionDeniedError):
    """403 `forbidden`: the provider's moderation refused the prompt or image."""


class QuotaExceededError(PermissionDeniedError):
    """403 `used_up`: the account's balance or package is used up."""


class NotFoundError(APIStatusError):
    """404: wrong path, or an unknown task or image."""


class RateLimitError(APIStatusError):
    """429: too many requests (`retry_after` says for how long, when the server said so)."""


class ServerError(APIStatusError):
    """5xx: the provider failed."""


class GatewayTimeoutError(ServerError):
    """504: the provider's own `timeout` ran out before the job finished (it may still finish)."""


class ResponseDecodeError(APIError):
    """A success response whose body is not what the provider documents."""


class StreamError(APIError):
    """An ndjson progress stream went wrong."""


class LineTooLongError(StreamError):
    """A stream line grew past the maximum line length."""

    def __init__(self, limit: int, prefix: bytes) -> None:
        self.limit = limit
        self.prefix = prefix
        super().__init__(f"ndjson line longer than {limit} bytes; it starts {self.prefix!r}")


class MalformedLineError(StreamError):
    """A stream line is not a JSON object of the expected shape."""

    def __init__(self, line_number: int, line: bytes, reason: str) -> None:
        """`line` may be the whole line: it is redacted whole, then cut to its first `QUOTE_BYTES` (`prefix`)."""
        self.line_number = line_number
        self.prefix = redact_bytes(bytes(line))[:QUOTE_BYTES]
        self.reason = reason
        super().__init__(f"ndjson line {line_number} is malformed ({self.reason}); it starts {self.prefix!r}")


class StreamInterruptedError(StreamError):
    """The stream ended before the final result; `task_id` says which job to resume."""

    #: The last update received before the break, if any.
    last_update: object | None

    def __init__(self, message: str, *, last_update: object | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.last_update = last_update


class AmbiguousSubmitError(APIError):
    """A submit may have reached the provider, and its records do not show the task.

    Sending it again could pay for the job twice, so mjasync does not, unless told to
    (`RetryPolicy(on_ambiguous_submit="resubmit")`). `__cause__` is the failure that made it unsure.
    """


class JobFailedError(APIError):
    """The provider reports the job as failed (a `success: false` result, stream line or task record)."""


class BannedPromptError(JobFailedError, ModerationError):
    """The provider accepted the job, then failed it because moderation banned its prompt.

    Both a `JobFailedError` (the task exists, and failed) and a `ModerationError` (the prompt was
    refused), so either `except` catches it. `status` is 403, as for a refusal at the submit; `code`
    is "banned_prompt"; the message is the provider's reason (a banned word when it names one).
    """


class TaskNotFoundError(APIError):
    """Lookup after lookup, the provider says it has no record of this task id (`task_id`).

    A wait on an id the provider does not know (a typo, another account's task, a journal replayed
    against another server) ends with this after a bounded number of lookups instead of waiting out
    its whole deadline.
    """


class WaitTimeoutError(MJError, TimeoutError):
    """Our own deadline for waiting on a job ran out; the job may still be running."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class CoordinatorError(MJError):
    """Something went wrong with the state many workers share on Redis (`mjasync.redis`)."""


class CoordinatorUnavailableError(CoordinatorError):
    """Redis could not be reached, or did not answer in time. Shared limits fail closed: no submit
    goes out without its admission (or a run's fenced intent), while waits on submitted tasks go on."""


class RunDataLostError(CoordinatorError):
    """The run's epoch is gone from Redis: it lost its data (restarted without persistence, flushed).

    The run halts rather than guess which jobs were paid for: submitting them again could pay twice.
    """
