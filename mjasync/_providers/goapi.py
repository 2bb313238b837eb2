"""Mapping layer: GoAPI's Midjourney API v2 (`/mj/v2/*`) on the wire.

GoAPI differs from AceData in shape, not in what a job is, so everything here is translation:

- every job (describe and seed too) is a task: a submit answers `{task_id, status, message}` and the
  result is read from the task object that `fetch`, `multi_fetch` and webhooks all show;
- follow-ups name their parent by task id (`origin_task_id`) and pick the action with an endpoint and
  an `index`; the task object's action names are mapped to the neutral ones the client offers
  (`high_variation` -> `variation_strong`, `inpaint` -> `variation_region`, `outpaint_2x` ->
  `zoom_out_2x`, ...), and the object itself is kept whole in `Result.raw`;
- there is no ndjson and no long wait: progress comes from polling (`task_progress`, preview images)
  or from webhooks (`notify_progress`), whose `x-webhook-secret` header carries our secret back;
- errors carry no code and no trace id; a task that fails (a banned prompt) says so in
  `task_result.error_messages`.

Pure: no sockets, no event loop. Facts: seed 003 and goapi-api.md (§2 task object, §3 webhooks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeVar

import msgspec

from .._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BannedPromptError,
    InvalidRequestError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
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
from .._models.results import DescribeResult, ImagineUpdate, Result, SeedResult
from .._models.task import TaskBatch, TaskRecord, TaskState
from .._redact import redact_cause
from .._retry import parse_retry_after
from .._types import BlendDimension, WaitVia
from ._callback import CallbackTarget
from ._one_submit import OneSubmitJobs
from ._wire import CallRequest, PageRequest, WireRequest

__all__ = ["GOAPI", "GoapiProvider"]

R = TypeVar("R", bound=Result)

PREFIX: Final = "/mj/v2"
FETCH_PATH: Final = f"{PREFIX}/fetch"
MULTI_FETCH_PATH: Final = f"{PREFIX}/multi_fetch"
SECRET_HEADER: Final = "x-webhook-secret"
_ACCEPT_JSON: Final = MappingProxyType({"accept": "application/json"})

#: GoAPI's action names (task_result.actions) -> the client's neutral ones; others pass unchanged.
_NEUTRAL_ACTIONS: Final = {
    "high_variation": "variation_strong",
    "low_variation": "variation_subtle",
    "inpaint": "variation_region",
    "outpaint_2x": "zoom_out_2x",
    "outpaint_1.5x": "zoom_out_1_5x",
}
#: Neutral follow-up action -> (endpoint, extra body fields).
_FOLLOW_UPS: Final[dict[str, tuple[str, dict[str, str]]]] = {
    **{f"upscale{i}": ("upscale", {"index": str(i)}) for i in range(1, 5)},
    "upscale_2x": ("upscale", {"index": "2x"}),
    "upscale_4x": ("upscale", {"index": "4x"}),
    **{f"variation{i}": ("variation", {"index": str(i)}) for i in range(1, 5)},
    "variation_strong": ("variation", {"index": "high_variation"}),
    "variation_subtle": ("variation", {"index": "low_variation"}),
    "reroll": ("reroll", {}),
    "variation_region": ("inpaint", {}),
    "zoom_out_2x": ("outpaint", {"zoom_ratio": "2"}),
    "zoom_out_1_5x": ("outpaint", {"zoom_ratio": "1.5"}),
    "outpaint_1x": ("outpaint", {"zoom_ratio": "1"}),
    **{f"pan_{d}": ("pan", {"direction": d}) for d in ("up", "down", "left", "right")},
}
#: Follow-ups that take a new prompt (the others act on the picture alone).
_PROMPTED: Final = frozenset({"variation", "reroll", "inpaint", "outpaint", "pan"})
#: `meta.task_type` -> the result type its task_result fills.
_RESULT_BY_TASK_TYPE: Final[dict[str, type[Result]]] = {
    **dict.fromkeys(
        ("imagine", "upscale", "variation", "reroll", "inpaint", "outpaint", "pan", "blend"), ImagineUpdate
    ),
    "describe": DescribeResult,
    "seed": SeedResult,
}
#: AceData body fields GoAPI has no counterpart for, and the feature each stands for.
_UNSUPPORTED_FIELDS: Final = (
    ("translation", "translation (translate the prompt first)"),
    ("quality", "the quality field (put --q in the prompt)"),
    ("moodboard", "moodboards"),
)
_STATUS_CLASSES: Final[dict[int, type[APIStatusError]]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
_RUNNING: Final = frozenset({"processing"})
_QUEUED: Final = frozenset({"pending", "staged", "retry", "starting"})
_KEYCAP: Final = re.compile(r"^\s*\d\ufe0f?\u20e3\s*")
#: Where a numbered prompt starts: a keycap digit at the start of a line.
_KEYCAP_START: Final = re.compile(r"(?:^|\n)\s*(?=\d\ufe0f?\u20e3)")


class _TaskResult(msgspec.Struct):
    image_url: str | None = None
    image_urls: list[str] | None = None
    task_progress: float | None = None
    intermediate_image_urls: list[str] | None = None
    image_id: str | None = None
    seed: str | int | None = None
    message: str | None = None
    description: str | None = None
    error_messages: list[str] | None = None
    actions: list[str] | None = None


class _Meta(msgspec.Struct):
    created_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    process_mode: str | None = None
    task_type: str | None = None
    task_request: dict[str, Any] | None = None


class _Task(msgspec.Struct):
    task_id: str | None = None
    status: str | None = None
    process_time: float | None = None
    meta: _Meta | None = None
    task_result: _TaskResult | None = None


class _Receipt(msgspec.Struct):
    task_id: str | None = None
    status: str | None = None
    message: str | None = None


class _MultiFetch(msgspec.Struct):
    data: dict[str, msgspec.Raw] = {}


_encoder = msgspec.json.Encoder()
_dict_decoder = msgspec.json.Decoder(dict[str, Any])
_receipt_decoder = msgspec.json.Decoder(_Receipt, strict=False)
_multi_decoder = msgspec.json.Decoder(_MultiFetch)
_any_decoder = msgspec.json.Decoder()
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


class GoapiProvider(OneSubmitJobs):
    """GoAPI Midjourney v2: `X-API-KEY`, JSON POSTs under `/mj/v2/`, tasks read by `fetch`/`multi_fetch`."""

    name: Final = "goapi"
    default_base_url: Final = "https://api.goapi.ai"
    streams: Final = False
    long_waits: Final = False
    callback_secret_header: Final = SECRET_HEADER
    #: No variable of its own: the key comes from `api_key` or `MJASYNC_API_KEY` only.
    api_key_env: Final[tuple[str, ...]] = ()

    # -- requests ---------------------------------------------------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the API key (sent on fetch too: it is free, and some hosts want it)."""
        return {"x-api-key": api_key}

    def credential_headers(self) -> frozenset[str]:
        """Header names that hold a credential (lower case), never to be logged or forwarded."""
        return frozenset({"x-api-key"})

    def check(self, request: AnyRequest) -> None:
        """Refuse, before anything is sent, what GoAPI cannot do."""
        if isinstance(request, VideosRequest):
            raise UnsupportedFeatureError(self.name, "videos")
        if isinstance(request, EditsRequest):
            raise UnsupportedFeatureError(self.name, "edits (use variation_region on an upscaled image)")
        if isinstance(request, ShortenRequest):
            raise UnsupportedFeatureError(self.name, "shorten")
        if isinstance(request, TranslateRequest):
            raise UnsupportedFeatureError(self.name, "translate")
        if not isinstance(request, ImagineRequest):
            return
        for field, feature in _UNSUPPORTED_FIELDS:
            # `False` asks for nothing GoAPI lacks; any other value does.
            if getattr(request, field) not in (None, False):
                raise UnsupportedFeatureError(self.name, feature)
        if request.action != "generate" and request.action not in _FOLLOW_UPS:
            raise UnsupportedFeatureError(self.name, f"the {request.action!r} action")
        if request.blend_urls is not None and _blend_extras(request):
            raise UnsupportedFeatureError(self.name, "text or parameters in a blend (its images only)")

    def blend_aspect_ratio(self, dimension: BlendDimension) -> str | None:
        """None: the shape goes as the `dimension` field, and a blend's prompt is not sent."""
        del dimension
        return None

    def follow_up_id(self, result: ImagineUpdate) -> str | None:
        """A follow-up names its parent by task id."""
        return result.task_id

    def job_request(
        self,
        request: JobRequest,
        *,
        via: WaitVia,
        callback: CallbackTarget | None = None,
        images: Sequence[bytes] | None = None,
        nonce: str | None = None,
    ) -> WireRequest:
        """A submit; every GoAPI job answers with a task id at once."""
        # One way only: a task, then fetch or webhooks; no bytes (`image_urls`); no nonce, as a lost
        # submit is never looked up (no listing).
        del via, images, nonce
        self.check(request)
        assert isinstance(request, ImagineRequest)
        endpoint, body = _job_body(request)
        if callback is not None:
            body["webhook_endpoint"] = callback.url
            body["webhook_secret"] = callback.secret
            if callback.progress:
                body["notify_progress"] = True
        elif request.callback_url is not None:
            body["webhook_endpoint"] = request.callback_url
        return WireRequest(f"{PREFIX}/{endpoint}", _encoder.encode(body), _ACCEPT_JSON)

    def call_request(
        self, request: AnyRequest, *, images: Sequence[bytes] | None = None, nonce: str | None = None
    ) -> CallRequest:
        """Describe or seed, which GoAPI runs as tasks."""
        del images, nonce
        self.check(request)
        if isinstance(request, DescribeRequest):
            body = _encoder.encode({"image_url": request.image_url})
            return CallRequest(f"{PREFIX}/describe", body, result_type=DescribeResult, as_task=True)
        if isinstance(request, SeedRequest):
            body = _encoder.encode({"task_id": request.image_id})
            return CallRequest(f"{PREFIX}/seed", body, result_type=SeedResult, as_task=True)
        raise UnsupportedFeatureError(self.name, type(request).__name__)

    def task_request(self, task_id: str | None = None, *, trace_id: str | None = None) -> WireRequest:
        """`fetch`."""
        del trace_id  # GoAPI has none
        if task_id is None:
            raise InvalidRequestError("GoAPI has no trace ids; look a task up by its task_id")
        return WireRequest(FETCH_PATH, _encoder.encode({"task_id": task_id}))

    def task_batch_request(
        self, task_ids: list[str] | None = None, *, trace_ids: list[str] | None = None
    ) -> WireRequest:
        """`multi_fetch`."""
        if trace_ids:
            raise InvalidRequestError("GoAPI has no trace ids; look tasks up by their task_ids")
        return WireRequest(MULTI_FETCH_PATH, _encoder.encode({"task_ids": task_ids or []}))

    def recent_tasks_request(
        self, request: AnyRequest, *, since: float, offset: int = 0
    ) -> PageRequest | None:
        """None: v2 cannot list an account's tasks, so a lost submit cannot be looked up."""
        del request, since, offset
        return None

    def same_request(self, record: TaskRecord[Any], request: AnyRequest, *, nonce: str | None = None) -> bool:
        """Never asked (no listing); kept for the protocol."""
        del record, request, nonce
        return False

    # -- responses --------------------------------------------------------------------------------

    def decode_result(self, kind: type[R], body: bytes, *, request: str | None = None) -> R:
        """A result from a task object."""
        try:
            task, raw = self._task_and_raw(body)
        except ResponseDecodeError as exc:
            exc.request = request
            raise
        return _convert(kind, task, raw)

    def decode_update(self, kind: type[R], line: bytes, line_number: int) -> R:
        """Never asked: GoAPI has no ndjson."""
        return self.decode_result(kind, line, request=f"line {line_number}")

    def decode_updates(self, kind: type[R], run: bytes | memoryview) -> list[R] | None:
        """Never asked: None, so each line goes through `decode_update`."""
        del kind, run  # a GoAPI update is a task object to convert, not a Struct to decode in bulk
        return None

    def decode_callback(self, kind: type[R], body: bytes) -> R:
        """A webhook's body: the task object, as fetch shows it."""
        return self.decode_result(kind, body, request="webhook")

    def decode_receipt(self, body: bytes, *, request: str | None = None) -> str:
        """The task_id from a submit's `{task_id, status, message}`."""
        try:
            receipt = _receipt_decoder.decode(body)
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable submit answer: {_reason(exc)}", body=body, request=request
            ) from redact_cause(exc)
        if receipt.status not in (None, "success"):
            raise APIStatusError(
                receipt.message or f"the submit was refused (status {receipt.status!r})",
                status=200,
                body=body,
                request=request,
            )
        if not receipt.task_id:
            raise ResponseDecodeError("submit answered without a task_id", body=body, request=request)
        return receipt.task_id

    def decode_task(self, body: bytes, kind: type[R] | None = None) -> TaskRecord[Any]:
        """A task object as a `TaskRecord`; without `kind`, `meta.task_type` picks the result type."""
        task, raw = self._task_and_raw(body)
        meta = task.meta or _Meta()
        if kind is None:
            kind = _RESULT_BY_TASK_TYPE.get(meta.task_type or "", Result)  # type: ignore[assignment]
        assert kind is not None
        status = task.status or ""
        queued = status in _QUEUED or (status not in _RUNNING and status not in ("finished", "failed"))
        return TaskRecord(
            id=task.task_id or None,
            type=meta.task_type,
            response=None if queued else _convert(kind, task, raw),
            request=meta.task_request,
            mode=meta.process_mode,
            state=status or None,
            created_at=meta.created_at or None,
            started_at=meta.started_at or None,
            finished_at=meta.ended_at or None,
            duration=task.process_time,
        )

    def decode_task_batch(self, body: bytes, kind: type[R] | None = None) -> TaskBatch[Any]:
        """A `multi_fetch` answer's tasks (ids it has no task for are left out)."""
        bodies = self.task_bodies(body, batch=True)
        return TaskBatch(items=[self.decode_task(item, kind) for item in bodies.values()], count=len(bodies))

    def task_bodies(self, body: bytes, *, batch: bool) -> dict[str, bytes]:
        """Each task object in a fetch or multi_fetch answer, undecoded, by task id."""
        if not batch:
            try:
                task_id = _receipt_decoder.decode(body).task_id
            except _UNDECODABLE as exc:
                raise ResponseDecodeError(
                    f"undecodable task object: {_reason(exc)}", body=body
                ) from redact_cause(exc)
            return {task_id: bytes(body)} if task_id else {}
        try:
            data = _multi_decoder.decode(body).data
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable multi_fetch answer: {_reason(exc)}", body=body
            ) from redact_cause(exc)
        return {task_id: bytes(raw) for task_id, raw in data.items() if bytes(raw) != b"null"}

    def task_state(self, record: TaskRecord[Any]) -> TaskState:
        """Where a task stands: `finished` and `failed` end it; unknown states read as queued."""
        status = record.state or ""
        if status == "finished":
            return "succeeded" if record.response is not None else "pending"
        if status == "failed":
            return "failed"
        if status in _RUNNING and record.response is not None:
            return "running"
        return "pending"

    def allowed_actions(self, result: ImagineUpdate) -> frozenset[str]:
        """Actions a follow-up may use (already in neutral names)."""
        return frozenset(result.actions)

    # -- errors -----------------------------------------------------------------------------------

    def status_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request: str | None = None
    ) -> APIStatusError:
        """The typed error for an error response: `{task_id, status: failed, message}` or anything else."""
        message = _error_message(body) or _describe_status(status, body)
        cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIStatusError)
        return cls(
            message,
            status=status,
            trace_id=headers.get("x-request-id"),
            body=body,
            request=request,
            retry_after=parse_retry_after(headers, cap=float("inf")),
        )

    def job_failed(self, result: Result, *, request: str | None = None) -> JobFailedError:
        """The error for a task that ended `failed` (a banned prompt: `BannedPromptError`, which GoAPI
        reports only once the task has failed)."""
        message = result.error if isinstance(result.error, str) else None
        if message and message.startswith("Banned Prompt"):
            return BannedPromptError(
                message,
                status=403,
                code="banned_prompt",
                task_id=result.task_id,
                body=_encoder.encode(result.raw) if result.raw is not None else None,
                request=request,
            )
        return JobFailedError(
            message or "the provider reports the job as failed",
            task_id=result.task_id,
            body=_encoder.encode(result.raw) if result.raw is not None else None,
            request=request,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _task_and_raw(self, body: bytes) -> tuple[_Task, dict[str, Any]]:
        try:
            raw = _dict_decoder.decode(body)
            return msgspec.convert(raw, _Task, strict=False), raw
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable task object: {_reason(exc)}", body=bytes(body)
            ) from redact_cause(exc)


def _job_body(request: ImagineRequest) -> tuple[str, dict[str, Any]]:
    """The GoAPI endpoint and body of a neutral imagine request."""
    body: dict[str, Any]
    if request.action == "generate" and request.blend_urls is not None:
        body = {"image_urls": list(request.blend_urls)}
        if request.dimension is not None:
            body["dimension"] = request.dimension
        if request.mode is not None:
            body["process_mode"] = request.mode
        return "blend", body
    if request.action == "generate":
        body = {"prompt": request.prompt or ""}
        if request.mode is not None:
            body["process_mode"] = request.mode
        if request.aspect_ratio is not None:
            body["aspect_ratio"] = request.aspect_ratio
        if request.skip_prompt_check is not None:
            body["skip_prompt_check"] = request.skip_prompt_check
        return "imagine", body
    endpoint, extra = _FOLLOW_UPS[request.action]
    body = {"origin_task_id": request.image_id or "", **extra}
    if request.prompt is not None and endpoint in _PROMPTED:
        body["prompt"] = request.prompt
    if request.mask is not None:
        body["mask"] = request.mask
    if request.skip_prompt_check is not None:
        body["skip_prompt_check"] = request.skip_prompt_check
    return endpoint, body


def _blend_extras(request: ImagineRequest) -> list[str]:
    """Words of a blend's prompt that are neither its images nor the `--ar` of its dimension."""
    urls = set(request.blend_urls or ())
    words = (request.prompt or "").split()
    extras: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--ar" and request.dimension is not None:
            skip = True
        elif word not in urls:
            extras.append(word)
    return extras


def _convert(kind: type[R], task: _Task, raw: dict[str, Any]) -> R:
    """A neutral result (of `kind`) from a task object; its fields as GoAPI's plan and phase give them."""
    result = task.task_result or _TaskResult()
    status = task.status or ""
    failed = status == "failed"
    finished = status == "finished"
    error = "; ".join(m for m in result.error_messages or () if m) or result.message or "task failed"
    fields: dict[str, Any] = {
        "task_id": task.task_id or None,
        "success": not failed,
        "error": error if failed else None,
        "finished": finished,
        "raw": raw,
    }
    if issubclass(kind, ImagineUpdate):
        progress = result.task_progress
        fields.update(
            image_id=(result.image_id or None) if finished else None,
            image_url=result.image_url or None,
            progress=100.0 if finished else progress,
            sub_image_urls=result.image_urls or None,
            actions=[_NEUTRAL_ACTIONS.get(a, a) for a in result.actions or ()] if finished else [],
        )
    elif issubclass(kind, DescribeResult) and finished:
        fields["descriptions"] = _descriptions(result.description or result.message or "")
    elif issubclass(kind, SeedResult) and finished and result.seed not in (None, ""):
        fields["seed"] = result.seed
    try:
        return kind(**{k: v for k, v in fields.items() if k in kind.__struct_fields__})
    except TypeError as exc:  # pragma: no cover - the fields above are all the result types have
        raise ResponseDecodeError(f"cannot build a {kind.kind} result: {exc}") from redact_cause(exc)


def _descriptions(text: str) -> list[str]:
    """Describe's four prompts from the bot's numbered text ("1️⃣ ...\\n\\n2️⃣ ..."); unnumbered text
    is split at blank lines."""
    numbered = _KEYCAP_START.split(text)
    parts = numbered[1:] if len(numbered) > 1 else re.split(r"\n\s*\n", text)
    return [_KEYCAP.sub("", part).strip() for part in parts if part.strip()]


def _error_message(body: bytes) -> str | None:
    try:
        data = _any_decoder.decode(body)
    except _UNDECODABLE:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("message", "error", "detail"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict) and isinstance(value.get("message"), str) and value["message"]:
            return str(value["message"])
    return None


def _describe_status(status: int, body: bytes) -> str:
    if not body:
        return f"HTTP {status} with an empty body"
    return f"HTTP {status} with no error message ({len(body)} bytes)"


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


#: The one GoAPI provider every client shares (stateless, so also a stable cache key).
GOAPI: Final = GoapiProvider()
