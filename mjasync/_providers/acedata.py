"""Mapping layer: AceData Cloud's Midjourney API on the wire (paths, headers, bodies, errors, task state).

Pure: no sockets, no event loop. Facts come from the provider's guides; where its OpenAPI spec and its
guides disagree (mask as base64, width as int), the guides win because their examples are recorded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeVar

import msgspec

from .._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    GatewayTimeoutError,
    JobFailedError,
    MalformedLineError,
    ModerationError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    UnsupportedFeatureError,
)
from .._models.requests import (
    AnyRequest,
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    JobRequest,
    SeedRequest,
    ShortenRequest,
    TranslateRequest,
    VideosRequest,
)
from .._models.results import (
    DescribeResult,
    EditsUpdate,
    ErrorDetail,
    ImagineUpdate,
    Result,
    SeedResult,
    ShortenResult,
    SubmitReceipt,
    TranslateResult,
    VideoUpdate,
)
from .._models.task import TaskBatch, TaskRecord, TaskState
from .._redact import redact_cause
from .._retry import parse_retry_after
from .._types import BlendDimension, WaitVia
from ._callback import CallbackTarget
from ._one_submit import OneSubmitJobs
from ._wire import CallRequest, PageRequest, WireRequest

__all__ = ["ACEDATA", "AceDataProvider"]

R = TypeVar("R", bound=Result)

NDJSON: Final = "application/x-ndjson"
JSON: Final = "application/json"

_JOB_PATHS: Final[dict[type[Any], str]] = {
    ImagineRequest: "/midjourney/imagine",
    EditsRequest: "/midjourney/edits",
    VideosRequest: "/midjourney/videos",
}
_CALL_PATHS: Final[dict[type[Any], tuple[str, type[Result]]]] = {
    DescribeRequest: ("/midjourney/describe", DescribeResult),
    ShortenRequest: ("/midjourney/shorten", ShortenResult),
    TranslateRequest: ("/midjourney/translate", TranslateResult),
    SeedRequest: ("/midjourney/seed", SeedResult),
}
TASKS_PATH: Final = "/midjourney/tasks"
#: AceData has no blend shape field: the shape is the `--ar` at the end of the blend's prompt.
_BLEND_ASPECT_RATIOS: Final[dict[str, str]] = {"square": "1:1", "portrait": "2:3", "landscape": "3:2"}

#: The task record's `type` tells which result its `response` holds (an update: it may be running).
_RESULT_BY_TASK_TYPE: Final[dict[str, type[Result]]] = {
    "imagine": ImagineUpdate,
    "edits": EditsUpdate,
    "videos": VideoUpdate,
    "describe": DescribeResult,
    "shorten": ShortenResult,
}

_AUTH_CODES: Final = frozenset({"invalid_token", "token_expired", "token_mismatched", "no_token"})
_CODE_CLASSES: Final[dict[str, type[APIStatusError]]] = {
    "forbidden": ModerationError,
    "used_up": QuotaExceededError,
    "too_many_requests": RateLimitError,
    "timeout": GatewayTimeoutError,
    **dict.fromkeys(_AUTH_CODES, AuthenticationError),
}
_STATUS_CLASSES: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
    504: GatewayTimeoutError,
}
_FAILED_STATES: Final = frozenset({"failed", "error", "cancelled", "canceled"})


class _TypeProbe(msgspec.Struct):
    id: str | None = None
    type: str | None = None


class _RawBatch(msgspec.Struct):
    items: list[msgspec.Raw] = []
    count: int | None = None


class _TaskQuery(msgspec.Struct, omit_defaults=True):
    action: str
    id: str | None = None
    trace_id: str | None = None
    ids: list[str] | None = None
    trace_ids: list[str] | None = None
    type: str | None = None
    created_at_min: float | None = None
    offset: int | None = None
    limit: int | None = None


_TASK_TYPE_BY_REQUEST: Final[dict[type[Any], str]] = {
    ImagineRequest: "imagine",
    EditsRequest: "edits",
    VideosRequest: "videos",
}
#: Body fields that say how to deliver the answer, not what the job is; they can differ between tries.
_DELIVERY_FIELDS: Final = frozenset({"async", "timeout", "callback_url"})
#: Neutral request fields AceData's body never carries (the prompt says the same).
_NOT_SENT: Final = frozenset({"aspect_ratio", "skip_prompt_check", "blend_urls", "dimension"})
_NOT_COMPARED: Final = _DELIVERY_FIELDS | _NOT_SENT
#: How far back (seconds) a reconciling lookup searches before the submit, for clock skew.
_RECONCILE_SKEW = 120.0
_RECENT_PAGE = 100
_ACCEPT_JSON: Final = MappingProxyType({"accept": JSON})
_ACCEPT_NDJSON: Final = MappingProxyType({"accept": NDJSON})


_encoder = msgspec.json.Encoder()
_probe_decoder = msgspec.json.Decoder(_TypeProbe)
_batch_decoder = msgspec.json.Decoder(_RawBatch, strict=False)
_any_decoder = msgspec.json.Decoder()
_result_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_record_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def _result_decoder(kind: type[R]) -> msgspec.json.Decoder[R]:
    decoder = _result_decoders.get(kind)
    if decoder is None:
        decoder = _result_decoders[kind] = msgspec.json.Decoder(kind, strict=False)
    return decoder


def _record_decoder(kind: type[R]) -> msgspec.json.Decoder[TaskRecord[R]]:
    decoder = _record_decoders.get(kind)
    if decoder is None:
        decoder = _record_decoders[kind] = msgspec.json.Decoder(TaskRecord[kind], strict=False)  # type: ignore[valid-type]
    return decoder


#: What a body that is not the JSON we expect can make msgspec raise (deep nesting: RecursionError).
_UNDECODABLE = (msgspec.DecodeError, RecursionError)


class AceDataProvider(OneSubmitJobs):
    """AceData Cloud: Bearer token, JSON POSTs under `/midjourney/`, ndjson progress, a tasks endpoint."""

    name: Final = "acedata"
    default_base_url: Final = "https://api.acedata.cloud"
    streams: Final = True
    long_waits: Final = True
    callback_secret_header: Final = None
    #: AceData's own tools read the key from this; the client does after `MJASYNC_API_KEY`.
    api_key_env: Final = ("ACEDATACLOUD_API_TOKEN",)

    # -- requests ---------------------------------------------------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the API key."""
        return {"authorization": f"Bearer {api_key}"}

    def credential_headers(self) -> frozenset[str]:
        """Header names that hold a credential (lower case), never to be logged or forwarded."""
        return frozenset({"authorization"})

    def check(self, request: AnyRequest) -> None:
        """Refuse, before anything is sent, what AceData cannot do."""
        if isinstance(request, ImagineRequest) and request.skip_prompt_check:
            raise UnsupportedFeatureError(self.name, "skip_prompt_check")

    def blend_aspect_ratio(self, dimension: BlendDimension) -> str | None:
        """The `--ar` that says a blend's shape in its prompt."""
        return _BLEND_ASPECT_RATIOS[dimension]

    def follow_up_id(self, result: ImagineUpdate) -> str | None:
        """A follow-up names the image it acts on by `image_id`."""
        return result.image_id

    def job_request(
        self,
        request: JobRequest,
        *,
        via: WaitVia,
        callback: CallbackTarget | None = None,
        images: Sequence[bytes] | None = None,
        nonce: str | None = None,
    ) -> WireRequest:
        """The request that submits a long-running job the way `via` will wait for it."""
        # None to send: `image_urls` names none; and the body itself is what a lookup matches, so the
        # job's nonce goes nowhere (AceData keeps no field of ours to carry it).
        del images, nonce
        path = _JOB_PATHS[type(request)]
        changes: dict[str, Any] = {}
        if isinstance(request, ImagineRequest) and (
            request.aspect_ratio or request.skip_prompt_check is not None or request.blend_urls
        ):
            # Said in the prompt already (`--ar`, the images at its head); AceData has no such fields.
            changes.update(aspect_ratio=None, skip_prompt_check=None, blend_urls=None, dimension=None)
        if callback is not None:
            changes["callback_url"] = callback.url
        if via == "stream":
            # The stream itself is the result; `async` would turn it into a bare task_id answer.
            request = msgspec.structs.replace(request, async_=None, timeout=None, **changes)
            return WireRequest(path, _encoder.encode(request), _ACCEPT_NDJSON)
        if via in ("poll", "callback"):
            request = msgspec.structs.replace(request, async_=True, timeout=None, **changes)
        elif changes:
            request = msgspec.structs.replace(request, **changes)
        return WireRequest(path, _encoder.encode(request), _ACCEPT_JSON)

    def call_request(
        self, request: AnyRequest, *, images: Sequence[bytes] | None = None, nonce: str | None = None
    ) -> CallRequest:
        """A short synchronous call (never a task)."""
        del images, nonce
        path, kind = _CALL_PATHS[type(request)]
        return CallRequest(path, _encoder.encode(request), result_type=kind)

    def task_request(self, task_id: str | None = None, *, trace_id: str | None = None) -> WireRequest:
        """The request that retrieves one task."""
        return WireRequest(
            TASKS_PATH, _encoder.encode(_TaskQuery(action="retrieve", id=task_id, trace_id=trace_id))
        )

    def task_batch_request(
        self, task_ids: list[str] | None = None, *, trace_ids: list[str] | None = None
    ) -> WireRequest:
        """The request that retrieves many tasks at once."""
        wanted = len(task_ids or ()) + len(trace_ids or ())
        # The batch call pages with a default limit of 12, so ask for every id we name.
        query = _TaskQuery(
            action="retrieve_batch", ids=task_ids, trace_ids=trace_ids, offset=0, limit=max(wanted, 1)
        )
        return WireRequest(TASKS_PATH, _encoder.encode(query))

    def recent_tasks_request(
        self, request: AnyRequest, *, since: float, offset: int = 0
    ) -> PageRequest | None:
        """One page of this account's recent tasks like `request`.

        For reconciling a submit; newest first, so later pages reach back towards `since`.
        """
        task_type = _TASK_TYPE_BY_REQUEST.get(type(request))
        if task_type is None:
            return None  # short calls make no task to look up
        query = _TaskQuery(
            action="retrieve_batch",
            type=task_type,
            created_at_min=since - _RECONCILE_SKEW,
            offset=offset,
            limit=_RECENT_PAGE,
        )
        return PageRequest(TASKS_PATH, _encoder.encode(query), page_size=_RECENT_PAGE)

    def same_request(self, record: TaskRecord[Any], request: AnyRequest, *, nonce: str | None = None) -> bool:
        """Whether the task was made by a submit of `request` (the record keeps the body it was sent;
        no nonce was sent, so `nonce` changes nothing)."""
        del nonce
        stored = record.request
        if not stored:
            return False
        sent = msgspec.to_builtins(request)
        return all(stored.get(key) == value for key, value in sent.items() if key not in _NOT_COMPARED)

    # -- responses --------------------------------------------------------------------------------

    def decode_result(self, kind: type[R], body: bytes, *, request: str | None = None) -> R:
        """Decode a JSON result body."""
        try:
            return _result_decoder(kind).decode(body)
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable {kind.kind} response: {_reason(exc)}", body=body, request=request
            ) from redact_cause(exc)

    def decode_update(self, kind: type[R], line: bytes, line_number: int) -> R:
        """Decode one ndjson progress line."""
        try:
            return _result_decoder(kind).decode(line)
        except _UNDECODABLE as exc:
            raise MalformedLineError(line_number, line, _reason(exc)) from redact_cause(exc)

    def decode_updates(self, kind: type[R], run: bytes | memoryview) -> list[R] | None:
        """Decode a run of whole ndjson lines in one call; None if any of it is not an update."""
        try:
            return _result_decoder(kind).decode_lines(run)
        except _UNDECODABLE:
            return None  # `decode_update`, line by line, finds the bad line and says why

    def decode_callback(self, kind: type[R], body: bytes) -> R:
        """A callback's body: the final result, or (for a streamed job) one progress line."""
        return self.decode_result(kind, body, request="callback")

    def decode_receipt(self, body: bytes, *, request: str | None = None) -> str:
        """The task_id from an asynchronous submit's immediate answer.

        With `callback_url` and an ndjson `accept`, the documents allow either a receipt or the
        progress stream itself as the answer; for a stream, its first line names the task.
        """
        try:
            receipt = self.decode_result(SubmitReceipt, body, request=request)
        except ResponseDecodeError:
            head, newline, rest = bytes(body).strip().partition(b"\n")
            if not (newline and rest.strip()):
                raise
            receipt = self.decode_result(SubmitReceipt, head, request=request)
        if not receipt.task_id:
            raise ResponseDecodeError(
                "asynchronous submit answered without a task_id", body=body, request=request
            )
        return receipt.task_id

    def decode_task(self, body: bytes, kind: type[R] | None = None) -> TaskRecord[Any]:
        """Decode a task record; without `kind`, its `type` field picks the result type."""
        try:
            if kind is None:
                probed = _probe_decoder.decode(body).type or ""
                kind = _RESULT_BY_TASK_TYPE.get(probed, Result)  # type: ignore[assignment]
            assert kind is not None
            return _record_decoder(kind).decode(body)
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable task record: {_reason(exc)}", body=bytes(body)
            ) from redact_cause(exc)

    def decode_task_batch(self, body: bytes, kind: type[R] | None = None) -> TaskBatch[Any]:
        """Decode a `retrieve_batch` answer: its records and the provider's `count`."""
        batch = self._decode_batch(body)
        return TaskBatch(items=[self.decode_task(item, kind) for item in batch.items], count=batch.count)

    def task_bodies(self, body: bytes, *, batch: bool) -> dict[str, bytes]:
        """Each task record in a tasks answer, undecoded, by task id (records without an id are left out).

        Waiting handles decode their own record once, with the result type they expect.
        """
        items = self._decode_batch(body).items if batch else [msgspec.Raw(body)]
        bodies: dict[str, bytes] = {}
        for item in items:
            try:
                task_id = _probe_decoder.decode(item).id
            except _UNDECODABLE as exc:
                raise ResponseDecodeError(
                    f"undecodable task record: {_reason(exc)}", body=bytes(item)
                ) from redact_cause(exc)
            if task_id:
                bodies[task_id] = bytes(item)
        return bodies

    def _decode_batch(self, body: bytes) -> _RawBatch:
        try:
            return _batch_decoder.decode(body)
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable retrieve_batch answer: {_reason(exc)}", body=body
            ) from redact_cause(exc)

    def task_state(self, record: TaskRecord[Any]) -> TaskState:
        """Where a task stands. `success: true` alone never means done: progress lines carry it too."""
        response: Result | None = record.response
        if response is not None and response.failed:
            return "failed"
        if (record.state or "").lower() in _FAILED_STATES:
            return "failed"
        if response is None:
            return "pending"
        if response.is_final:
            return "succeeded"
        # No progress yet (`{}`, or a type we cannot judge) reads as queued, never as done.
        if getattr(response, "progress", None) is None:
            return "pending"
        return "running"

    def allowed_actions(self, result: ImagineUpdate) -> frozenset[str]:
        """Actions a follow-up may use on this result."""
        actions = frozenset(result.actions)
        # The guide applies `variation_region` to upscaled images although their `actions` never list it.
        if "variation_subtle" in actions:
            actions |= {"variation_region"}
        return actions

    # -- errors -----------------------------------------------------------------------------------

    def status_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request: str | None = None
    ) -> APIStatusError:
        """The typed error for an error response, whatever shape its body has."""
        code, message, trace_id = _parse_error_body(body)
        trace_id = trace_id or headers.get("x-request-id")
        cls = (code and _CODE_CLASSES.get(code)) or _STATUS_CLASSES.get(status)
        if cls is None:
            cls = ServerError if status >= 500 else APIStatusError
        if message is None:
            message = _describe_status(status, headers, body, code)
        # Uncapped: the retry layer decides whether a long wait is worth it, and the caller sees the truth.
        retry_after = parse_retry_after(headers, cap=math.inf)
        return cls(
            message,
            status=status,
            code=code,
            trace_id=trace_id,
            body=body,
            request=request,
            retry_after=retry_after,
        )

    def job_failed(self, result: Result, *, request: str | None = None) -> JobFailedError:
        """The error for a job the provider reports as failed."""
        error = result.error
        if isinstance(error, ErrorDetail):
            code, message = error.code, error.message
        else:
            code, message = None, error
        return JobFailedError(
            message or "the provider reports the job as failed",
            code=code,
            trace_id=result.trace_id,
            task_id=result.task_id,
            body=_encoder.encode(result),
            request=request,
        )


def _parse_error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(code, message, trace_id) from any error body: `error` object or string, `detail`, or not JSON."""
    try:
        data = _any_decoder.decode(body)
    except _UNDECODABLE:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    error = data.get("error")
    code = message = None
    if isinstance(error, dict):
        code = _str_or_none(error.get("code"))
        message = _str_or_none(error.get("message"))
    else:
        message = _str_or_none(error)
    if message is None and data.get("detail") not in (None, ""):
        detail = data["detail"]
        message = detail if isinstance(detail, str) else _encoder.encode(detail).decode()
    if message is None:
        message = _str_or_none(data.get("message"))
    return code, message, _str_or_none(data.get("trace_id"))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _describe_status(status: int, headers: Mapping[str, str], body: bytes, code: str | None) -> str:
    if not body:
        return f"HTTP {status} with an empty body"
    try:
        _any_decoder.decode(body)
    except _UNDECODABLE:
        kind = headers.get("content-type", "").split(";")[0].strip() or "no content type"
        return f"HTTP {status} with a non-JSON body ({kind}, {len(body)} bytes)"
    return f"HTTP {status} ({code})" if code else f"HTTP {status} with no error message"


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


#: The one AceData provider every client shares (stateless, so also a stable cache key).
ACEDATA: Final = AceDataProvider()
