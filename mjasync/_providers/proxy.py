"""Mapping layer: the midjourney-proxy protocol (`/mj/submit/*`, `/mj/task/*`) on the wire.

The de facto API of self-hosted Midjourney gateways: novicezk/midjourney-proxy (NZ), its paid "plus"
build (PL), trueai-org's .NET reimplementation (TA), and gateways such as new-api (NA) that relay its
`/mj` routes. Facts: midjourney-proxy-api.md (its section numbers below). Everything here is
translation, as for GoAPI:

- the key goes in `mj-api-secret`, which every variant reads (§2.3); `PROXY_BEARER` sends
  `Authorization: Bearer <key>` instead, for resellers that document only that (never the default:
  TA would look the literal `Bearer ...` up as a token);
- `mode=` picks the `/mj-fast`, `/mj-relax`, `/mj-turbo` path prefix of TA and NA (§2.2); lookups use
  plain `/mj`;
- a submit answers `{code, description, result, properties}` (§4). Codes 1 and 22 accept it, with the
  task id in `result`; 21 names a task too (an existing one, or one waiting for the MODAL step). Any
  other code is a refusal, and becomes the error the matching HTTP status would (the proxy answers 200
  and says it in `code`, which the error keeps): 23, TA's 9 "queue full" and 3 "no account free" a
  `RateLimitError` (429: retried like one, and fed to the capacity control), 24 a `ModerationError`
  naming the banned word (403), 4 and the rest a `BadRequestError` (400), a parent task that is gone
  a `NotFoundError` (404). All of those made no task; 9's internal failure may have, so it is a
  `ServerError` (500: the task's fate is unknown, and it is looked up);
- every submit carries `state`, a marker unique to its job (`job_marker`: a digest of the request and
  the job's nonce), which the proxy echoes in every Task object: a submit whose answer was lost is
  found by it in the task listing (`recent_tasks_request`, `same_request`). The job that sent it
  matches the whole marker, so an identical sibling's task is never taken for its own; a job rebuilt
  after a crash, which never had the nonce, matches the digest part. No `trace_id` is ever set,
  because an error's trace id plus an empty lookup would read as "proven absent" and allow a resubmit;
- follow-ups go through `submit/action` with the `customId` of the parent's button
  (`MJ::JOB::upsample::2::<job hash>`), or through `submit/change` on variants without buttons (NZ).
  The id a follow-up names its parent by (`follow_up_id`) is `<task id>:<job hash>[:<upscaler tag>]`
  (just `<task id>` when the parent had no buttons); each customId is rebuilt from it, and a result
  lists only the actions whose rebuilt customId is exactly one of its buttons, so nothing else is sent;
- tasks are read with `POST /mj/task/list-by-condition` (one id or many: the same POST on every
  variant, §6). A Task object (§5) becomes an update or a result, kept whole in `Result.raw`;
  `notifyHook` callbacks carry the same object (§7; unsigned, so `callback_secret_header` is None and
  the route's unguessable address is the secret).

What the client floor does with the hooks here:

- image bytes: `image_urls(request)` says what to fetch (an imagine's image prompts, a blend's images,
  a describe's image); the job fetches them once before its first send, and `job_request(...,
  images=)` / `call_request(..., images=)` send them as `data:` URLs (`base64Array`, `base64`), at most
  `MAX_IMAGE_BYTES` each and `MAX_INLINE_BYTES` in all;
- the MODAL two-step (§8): vary region, custom zoom and prompted (Remix) follow-ups pass `check`
  (`modal_step=True`); once the first submit gave the task id, the job sends `follow_up_step(request,
  task_id)` (`submit/modal`) for the same task, exactly once. `ProxyProvider(modal_step=False)` refuses
  them instead, and reads a task that waits for the step as failed rather than waiting out the deadline;
- a lost submit is looked up in `GET /mj/task/list` (NZ: every task; TA: the newest 100; NA: none,
  404): found by its marker, the job follows its task. Not found, or a listing that does not reach back
  to the send, it raises `AmbiguousSubmitError` (a listing cannot prove that a request still in flight
  behind a gateway made nothing), unless `on_ambiguous_submit="resubmit"`.

Pure: no sockets, no event loop.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeVar

import msgspec

from .._config import MAX_IMAGE_BYTES
from .._exceptions import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BannedPromptError,
    InvalidRequestError,
    JobFailedError,
    ModerationError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    TaskNotFoundError,
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
from .._models.results import DescribeResult, ImagineUpdate, Result, ShortenResult
from .._models.task import TaskBatch, TaskRecord, TaskState
from .._redact import redact_cause
from .._retry import parse_retry_after
from .._types import BlendDimension, WaitVia
from ._callback import CallbackTarget
from ._wire import CallRequest, PageRequest, WireRequest

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_INLINE_BYTES",
    "PROXY",
    "PROXY_BEARER",
    "ListingRequest",
    "ProxyProvider",
    "data_url",
    "job_marker",
]

R = TypeVar("R", bound=Result)

SUBMIT: Final = "/mj/submit"
LIST_BY_CONDITION_PATH: Final = "/mj/task/list-by-condition"
LIST_PATH: Final = "/mj/task/list"
SECRET_HEADER: Final = "mj-api-secret"
#: `mode=` -> the path prefix TA and NA route it by (§2.2); no mode: plain `/mj`.
_MODE_PREFIXES: Final[Mapping[str, str]] = MappingProxyType(
    {"fast": "/mj-fast", "relax": "/mj-relax", "turbo": "/mj-turbo"}
)
_ACCEPT_JSON: Final = MappingProxyType({"accept": "application/json"})

#: All of one submit's inline images at most: base64 of this stays under TA's default 30 MB body limit.
MAX_INLINE_BYTES: Final = 20 * 1024 * 1024
#: The listing is one read, never paged: NZ lists every stored task, TA the newest 100. So a listing of
#: 100 tasks all made after the send may be TA's cut (the engine cannot tell), and any other length,
#: or 100 reaching back past the send, is complete.
_LISTING_PAGE: Final = 100
_MARKER_PREFIX: Final = "mjasync-"
#: Between a marker's digest and its job's nonce (the digest is hex, so it never holds one).
_NONCE_SEPARATOR: Final = "-"
#: Request fields that say how to deliver the answer, not what the job is: a marker ignores them.
_DELIVERY_FIELDS: Final = ("async", "timeout", "callback_url")

#: The customId of each neutral action's button (§5.5, Discord's forms): `{h}` is the job hash the
#: buttons of one result share, `{tag}` the upscaler's model tag (v6, v6r1, v7) of v6+ upscales.
_BUTTONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{f"upscale{i}": f"MJ::JOB::upsample::{i}::{{h}}" for i in range(1, 5)},
        **{f"variation{i}": f"MJ::JOB::variation::{i}::{{h}}" for i in range(1, 5)},
        "reroll": "MJ::JOB::reroll::0::{h}::SOLO",
        "variation_strong": "MJ::JOB::high_variation::1::{h}::SOLO",
        "variation_subtle": "MJ::JOB::low_variation::1::{h}::SOLO",
        "variation_region": "MJ::Inpaint::1::{h}::SOLO",
        "zoom_out_2x": "MJ::Outpaint::50::1::{h}::SOLO",
        "zoom_out_1_5x": "MJ::Outpaint::75::1::{h}::SOLO",
        "zoom_custom": "MJ::CustomZoom::{h}",
        **{f"pan_{d}": f"MJ::JOB::pan_{d}::1::{{h}}::SOLO" for d in ("left", "right", "up", "down")},
        "upscale_2x": "MJ::JOB::upsample_v5_2x::1::{h}::SOLO",
        "upscale_4x": "MJ::JOB::upsample_v5_4x::1::{h}::SOLO",
        "upscale_subtle": "MJ::JOB::upsample_{tag}_2x_subtle::1::{h}::SOLO",
        "upscale_creative": "MJ::JOB::upsample_{tag}_2x_creative::1::{h}::SOLO",
    }
)
_HASH: Final = r"[0-9A-Za-z-]+"
_TAG: Final = r"[0-9a-z]+"
#: Each template as a pattern that captures the hash (and the tag) of a button's customId.
_BUTTON_PATTERNS: Final = tuple(
    (
        action,
        re.compile(
            re.escape(template)
            .replace(re.escape("{h}"), f"(?P<h>{_HASH})")
            .replace(re.escape("{tag}"), f"(?P<tag>{_TAG})")
        ),
    )
    for action, template in _BUTTONS.items()
)
#: The follow-ups `submit/change` can send, for variants without buttons (NZ): action and index.
_CHANGES: Final[Mapping[str, tuple[str, int | None]]] = MappingProxyType(
    {
        **{f"upscale{i}": ("UPSCALE", i) for i in range(1, 5)},
        **{f"variation{i}": ("VARIATION", i) for i in range(1, 5)},
        "reroll": ("REROLL", None),
    }
)
#: What a grid offers on a variant without buttons: exactly what `submit/change` can send, in the
#: order of a grid's buttons (U1–U4, reroll, V1–V4).
_GRID_ACTIONS: Final = (
    *(f"upscale{i}" for i in range(1, 5)),
    "reroll",
    *(f"variation{i}" for i in range(1, 5)),
)
#: Task actions whose result is a grid `submit/change` may act on (NZ `SubmitController.change`).
_GRID_TASK_ACTIONS: Final = frozenset({"IMAGINE", "VARIATION", "REROLL", "BLEND"})
#: Follow-ups that always wait for the MODAL step (§8): the proxy needs a mask or a prompt.
_ALWAYS_MODAL: Final = frozenset({"variation_region", "zoom_custom"})
_FOLLOW_UP_ID: Final = re.compile(rf"(?P<task>[^:\s]+)(?::(?P<h>{_HASH})(?::(?P<tag>{_TAG}))?)?")
_ZOOM: Final = re.compile(r"--zoom\s+(\d+(?:\.\d+)?)\b")
_URL: Final = re.compile(r"https?://\S+", re.IGNORECASE)

#: Task actions whose Task object is an image (NA and TA<v10 add their own names: §5.3).
_IMAGE_TASK_ACTIONS: Final = (
    "IMAGINE", "UPSCALE", "VARIATION", "REROLL", "BLEND", "ZOOM", "PAN", "UPSCALE_HD", "INPAINT",
    "OUTPAINT", "CUSTOM_ZOOM", "HIGH_VARIATION", "LOW_VARIATION", "ACTION", "MODAL",
)  # fmt: skip
#: Task `action` -> the result type its Task object fills (others: a bare `Result`).
_RESULT_BY_ACTION: Final[Mapping[str, type[Result]]] = MappingProxyType(
    {
        **dict.fromkeys(_IMAGE_TASK_ACTIONS, ImagineUpdate),
        "DESCRIBE": DescribeResult,
        "SHORTEN": ShortenResult,
    }
)
_BLEND_DIMENSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"square": "SQUARE", "portrait": "PORTRAIT", "landscape": "LANDSCAPE"}
)
#: Statuses before the task reached Discord (NA's `""` until its poller's first look): no update yet.
_WAITING: Final = frozenset({"", "NOT_START"})
_RUNNING: Final = frozenset({"SUBMITTED", "IN_PROGRESS"})
_FAILED: Final = frozenset({"FAILURE", "CANCEL"})
_STATUS_CLASSES: Final[Mapping[int, type[APIStatusError]]] = MappingProxyType(
    {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        429: RateLimitError,
    }
)
#: Descriptions of a full queue (NZ 23 `队列已满，请稍后尝试`, TA 9 `提交失败，队列已满，请稍后重试`).
_QUEUE_FULL: Final = re.compile(r"队列已满|queue\s*(is\s*)?full", re.IGNORECASE)
#: NA's error code for a relay that got no answer from the proxy (§9).
_RELAY_FAILED: Final = "do_request_failed"
#: Code 3 for a missing parent task (`关联任务不存在或已失效`); the other code 3 is "no account free".
_PARENT_GONE: Final = re.compile(r"关联任务|task", re.IGNORECASE)
#: A failure reason that says the prompt was banned (TA `可能包含敏感词`, MJ's `Banned prompt detected`).
_BANNED: Final = re.compile(r"敏感词|banned\s*prompt|违规", re.IGNORECASE)
_KEYCAP: Final = re.compile(r"^\s*\d\ufe0f?\u20e3\s*")
#: Where a numbered prompt starts: a keycap digit (1️⃣) at the start of a line.
_KEYCAP_START: Final = re.compile(r"(?:^|\n)\s*(?=\d\ufe0f?\u20e3)")
_MODAL_WAITING: Final = (
    "the task waits for the MODAL step (submit/modal), which this client does not send yet "
    "(its account may have Remix on)"
)
_IMAGE_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
#: Epoch milliseconds past this are not a time (year 33658): read as absent.
_MAX_EPOCH_MS: Final = 10**15


class _IdProbe(msgspec.Struct):
    """Just a Task object's `id` (a string, or a number some resellers send)."""

    id: Any = None


_encoder = msgspec.json.Encoder()
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_id_probe_decoder = msgspec.json.Decoder(_IdProbe)
_sorted_encoder = msgspec.json.Encoder(order="sorted")
_any_decoder = msgspec.json.Decoder()
_UNDECODABLE = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


@dataclass(frozen=True, slots=True)
class ListingRequest(PageRequest):
    """The task listing, `GET /mj/task/list`: every stored task (NZ) or the newest 100 (TA), newest
    first; NA has none (404). One read, with no further pages."""


class _FollowUp(NamedTuple):
    """What a follow-up's id names: the parent task, and its buttons' job hash and upscaler tag."""

    task_id: str
    hash: str | None
    tag: str | None


class ProxyProvider:
    """A midjourney-proxy gateway: JSON POSTs under `/mj/submit/`, tasks read by `list-by-condition`.

    `bearer`: send the key as `Authorization: Bearer <key>` rather than in `mj-api-secret`.
    `modal_step`: the engine sends `modal_request` when a task waits for the MODAL step, so the
    follow-ups that need it pass `check` and a waiting task reads as pending, not failed.
    """

    default_base_url: Final = "http://localhost:8080"
    streams: Final = False
    long_waits: Final = False
    #: Unsigned callbacks (§7): the route's unguessable address is what keeps them ours.
    callback_secret_header: Final = None

    def __init__(
        self, *, name: str = "midjourney-proxy", bearer: bool = False, modal_step: bool = False
    ) -> None:
        self.name: Final = name
        self.bearer: Final = bearer
        self.modal_step: Final = modal_step
        #: `MJ_API_SECRET` is named after NZ's own setting, `mj.api-secret`. A gateway that wants a
        #: bearer token (new-api) issues its own keys, not the proxy's secret, so that one reads none.
        self.api_key_env: Final[tuple[str, ...]] = () if bearer else ("MJ_API_SECRET",)

    def __repr__(self) -> str:
        return f"ProxyProvider(name={self.name!r}, bearer={self.bearer}, modal_step={self.modal_step})"

    # -- requests ---------------------------------------------------------------------------------

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """Headers that carry the API key (on lookups too: NZ guards `/task/**` as well)."""
        if self.bearer:
            return {"authorization": f"Bearer {api_key}"}
        return {SECRET_HEADER: api_key}

    def credential_headers(self) -> frozenset[str]:
        """Header names that hold a credential (lower case): both, whichever this one sends."""
        return frozenset({SECRET_HEADER, "authorization"})

    def check(self, request: AnyRequest) -> None:
        """Refuse, before anything is sent, what the proxy cannot do."""
        if isinstance(request, VideosRequest):
            raise UnsupportedFeatureError(self.name, "videos")
        if isinstance(request, EditsRequest):
            raise UnsupportedFeatureError(self.name, "edits")
        if isinstance(request, TranslateRequest):
            raise UnsupportedFeatureError(self.name, "translate (the proxy translates by its own settings)")
        if isinstance(request, SeedRequest):
            raise UnsupportedFeatureError(self.name, "seed (its endpoint is a GET, /mj/task/{id}/image-seed)")
        if not isinstance(request, ImagineRequest):
            return  # describe and shorten
        if request.translation:
            raise UnsupportedFeatureError(self.name, "translation (the proxy translates by its own settings)")
        if request.quality is not None:
            raise UnsupportedFeatureError(self.name, "the quality field (put --q in the prompt)")
        if request.moodboard:
            raise UnsupportedFeatureError(self.name, "moodboards")
        if request.split_images:
            raise UnsupportedFeatureError(self.name, "split_images")
        if request.skip_prompt_check:
            raise UnsupportedFeatureError(self.name, "skip_prompt_check")
        if request.action == "generate":
            if request.blend_urls is not None and _blend_extras(request):
                raise UnsupportedFeatureError(self.name, "text or parameters in a blend (its images only)")
            if request.mask is not None:
                raise InvalidRequestError("a mask goes with variation_region only")
            return
        self._check_follow_up(request)

    def _check_follow_up(self, request: ImagineRequest) -> None:
        action = request.action
        if action not in _BUTTONS:
            raise UnsupportedFeatureError(self.name, f"the {action!r} action")
        parent = _parse_follow_up_id(request.image_id)
        if parent.hash is None and action not in _CHANGES:
            raise InvalidRequestError(
                f"{action} acts through the parent's buttons: pass the result itself, or its "
                "follow_up_id ('<task id>:<job hash>'), not a bare task id"
            )
        if "{tag}" in _BUTTONS[action] and parent.tag is None:
            raise InvalidRequestError(
                f"{action} needs the upscaler's tag: pass the result itself, or its whole follow_up_id"
            )
        if action in _ALWAYS_MODAL or request.prompt is not None:
            if not self.modal_step:
                what = "a prompt with a follow-up (Remix)" if action not in _ALWAYS_MODAL else action
                raise UnsupportedFeatureError(self.name, f"{what}: it needs the MODAL step (submit/modal)")
            if parent.hash is None:
                raise InvalidRequestError(
                    "a prompted follow-up acts through the parent's buttons, not submit/change"
                )
            # Remix opens a prompt only for these (§8); any other button would run without the prompt,
            # and the step sent after it be refused.
            remixed = action == "reroll" or action.startswith(("variation", "pan_"))
            if action not in _ALWAYS_MODAL and not remixed:
                raise UnsupportedFeatureError(
                    self.name, f"a prompt with {action} (Remix takes one with variations, reroll and pan)"
                )
        if action == "zoom_custom":
            found = _ZOOM.search(request.prompt or "")
            if found is None or not 1.0 <= float(found.group(1)) <= 2.0:
                raise InvalidRequestError("zoom_custom needs a prompt with --zoom between 1 and 2")
        if request.mask is not None:
            if action != "variation_region":
                raise InvalidRequestError("a mask goes with variation_region only")
            if _URL.fullmatch(request.mask):
                raise InvalidRequestError("the proxy takes the mask's bytes (maskBase64), not a URL")

    def blend_aspect_ratio(self, dimension: BlendDimension) -> str | None:
        """None: the shape goes as the `dimensions` field, and a blend's prompt is not sent."""
        del dimension
        return None

    def follow_up_id(self, result: ImagineUpdate) -> str | None:
        """`<task id>:<job hash>[:<upscaler tag>]` for a result with buttons, else its task id."""
        if not result.task_id:
            return None
        if not result.image_id:
            return result.task_id
        tag = _buttons(result.raw.get("buttons") if result.raw else None).tag
        return ":".join(part for part in (result.task_id, result.image_id, tag) if part)

    def image_urls(self, request: AnyRequest) -> tuple[str, ...]:
        """The images a submit can send as bytes (`images=`), in order; the engine fetches them."""
        if isinstance(request, DescribeRequest):
            return (request.image_url,)
        if not isinstance(request, ImagineRequest) or request.action != "generate":
            return ()
        if request.blend_urls is not None:
            return tuple(request.blend_urls)
        return tuple(_leading_urls(request.prompt or ""))

    def job_request(
        self,
        request: JobRequest,
        *,
        via: WaitVia,
        callback: CallbackTarget | None = None,
        images: Sequence[bytes] | None = None,
        nonce: str | None = None,
    ) -> WireRequest:
        """A submit (every proxy job answers with a task id at once); `images`: the bytes of
        `image_urls(request)`, sent inline instead of the URLs; `nonce`: the job's, in its marker."""
        del via  # one way only: a task, then lookups or callbacks
        self.check(request)
        if not isinstance(request, ImagineRequest):  # pragma: no cover - `check` refused the others
            raise UnsupportedFeatureError(self.name, type(request).__name__)
        endpoint, body = self._job_body(request, images)
        hook = callback.url if callback is not None else request.callback_url
        if hook is not None:
            body["notifyHook"] = hook
        body["state"] = job_marker(request, nonce)
        return WireRequest(_submit_path(request.mode, endpoint), _encoder.encode(body), _ACCEPT_JSON)

    def _job_body(
        self, request: ImagineRequest, images: Sequence[bytes] | None
    ) -> tuple[str, dict[str, Any]]:
        urls = self.image_urls(request)
        inline = _inline(urls, images)
        if request.action == "generate" and request.blend_urls is not None:
            body: dict[str, Any] = {
                "base64Array": inline if inline is not None else list(urls),
                "dimensions": _BLEND_DIMENSIONS.get(request.dimension or "square", "SQUARE"),
            }
            return "blend", body
        if request.action == "generate":
            prompt = request.prompt or ""
            if inline is None:
                return "imagine", {"prompt": prompt}
            text = " ".join(prompt.split()[len(urls) :])
            if not text:
                raise InvalidRequestError(
                    "the proxy needs text besides the images (an empty prompt is code 4)"
                )
            return "imagine", {"prompt": text, "base64Array": inline}
        parent = _parse_follow_up_id(request.image_id)
        if parent.hash is None:
            action, index = _CHANGES[request.action]
            body = {"taskId": parent.task_id, "action": action}
            if index is not None:
                body["index"] = index
            return "change", body
        custom_id = _BUTTONS[request.action].format(h=parent.hash, tag=parent.tag)
        body = {"taskId": parent.task_id, "customId": custom_id}
        if request.prompt is not None and request.action not in _ALWAYS_MODAL:
            body["enableRemix"] = True  # TA: take the MODAL path, where the prompt goes
        return "action", body

    def modal_request(self, request: ImagineRequest, task_id: str) -> WireRequest:
        """The MODAL step's submit for the task `task_id` that `request`'s submit made (§8): the same
        task goes on, with the prompt and, for vary region, the mask."""
        body: dict[str, Any] = {"taskId": task_id}
        if request.prompt is not None:
            body["prompt"] = request.prompt
        if request.mask is not None:
            body["maskBase64"] = request.mask
        return WireRequest(_submit_path(request.mode, "modal"), _encoder.encode(body), _ACCEPT_JSON)

    def follow_up_step(self, request: AnyRequest, task_id: str) -> WireRequest | None:
        """The MODAL step (`modal_request`) for a follow-up that needs one: vary region and custom zoom
        always, a prompted (Remix) one too; None for everything else, or without `modal_step`.

        Decided by the request, not by the first submit's code: NA turns most 21 answers into 1.
        """
        if not self.modal_step or not isinstance(request, ImagineRequest) or request.action == "generate":
            return None
        if request.action in _ALWAYS_MODAL or request.prompt is not None:
            return self.modal_request(request, task_id)
        return None

    def call_request(
        self, request: AnyRequest, *, images: Sequence[bytes] | None = None, nonce: str | None = None
    ) -> CallRequest:
        """Describe or shorten, which the proxy runs as tasks; `images`: the describe's image bytes;
        `nonce`: the call's, in its marker."""
        self.check(request)
        if isinstance(request, DescribeRequest):
            inline = _inline(self.image_urls(request), images)
            body: dict[str, Any] = {"base64": inline[0]} if inline else {"link": request.image_url}
            body["state"] = job_marker(request, nonce)
            return CallRequest(
                f"{SUBMIT}/describe",
                _encoder.encode(body),
                _ACCEPT_JSON,
                result_type=DescribeResult,
                as_task=True,
            )
        if isinstance(request, ShortenRequest):
            body = {"prompt": request.prompt, "state": job_marker(request, nonce)}
            return CallRequest(
                f"{SUBMIT}/shorten",
                _encoder.encode(body),
                _ACCEPT_JSON,
                result_type=ShortenResult,
                as_task=True,
            )
        raise UnsupportedFeatureError(self.name, type(request).__name__)  # pragma: no cover - `check`

    def task_request(self, task_id: str | None = None, *, trace_id: str | None = None) -> WireRequest:
        """`list-by-condition` with one id (the same POST on every variant; `fetch` is a GET)."""
        if trace_id is not None or task_id is None:
            raise InvalidRequestError("the proxy has no trace ids; look a task up by its task_id")
        return WireRequest(LIST_BY_CONDITION_PATH, _encoder.encode({"ids": [task_id]}), _ACCEPT_JSON)

    def task_batch_request(
        self, task_ids: list[str] | None = None, *, trace_ids: list[str] | None = None
    ) -> WireRequest:
        """`list-by-condition`: unknown ids are left out, and the order is the proxy's (§6)."""
        if trace_ids:
            raise InvalidRequestError("the proxy has no trace ids; look tasks up by their task_ids")
        return WireRequest(LIST_BY_CONDITION_PATH, _encoder.encode({"ids": task_ids or []}), _ACCEPT_JSON)

    def recent_tasks_request(
        self, request: AnyRequest, *, since: float, offset: int = 0
    ) -> PageRequest | None:
        """The task listing, where a lost submit's task shows its `state` marker; one read, not paged
        (None for `offset` past it).

        TA lists only the newest 100 tasks of all its users, so a task older than those is not in it:
        the listing's oldest `created_at` says how far back it reached. A listing without the marker
        proves nothing (a gateway's upstream may still be making the task): found, the job follows
        its task; not found, it is ambiguous.
        """
        del since  # the listing takes no filter
        if offset > 0 or not isinstance(request, (ImagineRequest, DescribeRequest, ShortenRequest)):
            return None  # no further pages; nothing else makes a task
        return ListingRequest(LIST_PATH, b"", _ACCEPT_JSON, method="GET", page_size=_LISTING_PAGE)

    def same_request(self, record: TaskRecord[Any], request: AnyRequest, *, nonce: str | None = None) -> bool:
        """Whether the task carries the marker a submit of `request` sends in `state`: exactly the one
        with `nonce` (the job that sent it looks for its own task, never an identical sibling's), or,
        with no nonce, any of `request`'s (a job rebuilt after a crash knows only its request)."""
        stored = record.request
        state = stored.get("state") if stored is not None else None
        if not isinstance(state, str):
            return False
        if nonce is not None:
            return state == job_marker(request, nonce)
        digest = job_marker(request)
        # The bare digest too: what a submit built without a nonce carries.
        return state == digest or state.startswith(digest + _NONCE_SEPARATOR)

    # -- responses --------------------------------------------------------------------------------

    def decode_result(self, kind: type[R], body: bytes, *, request: str | None = None) -> R:
        """A result from a Task object."""
        task = _load(body, "Task object", request)
        if not isinstance(task, dict):
            raise ResponseDecodeError(
                "a Task object that is not a JSON object", body=bytes(body), request=request
            )
        return _convert(kind, task, modal_step=self.modal_step)

    def decode_update(self, kind: type[R], line: bytes, line_number: int) -> R:
        """Never asked: the proxy has no ndjson."""
        return self.decode_result(kind, line, request=f"line {line_number}")

    def decode_updates(self, kind: type[R], run: bytes | memoryview) -> list[R] | None:
        """Never asked: None, so each line goes through `decode_update`."""
        del kind, run
        return None

    def decode_callback(self, kind: type[R], body: bytes) -> R:
        """A `notifyHook` body: the Task object at that moment, as a lookup shows it."""
        return self.decode_result(kind, body, request="notifyHook")

    def decode_receipt(self, body: bytes, *, request: str | None = None) -> str:
        """The task id from a submit's `{code, description, result, properties}`; any code but 1, 21
        and 22 raises the error it amounts to (see the module docstring)."""
        reply = _load(body, "submit answer", request)
        if not isinstance(reply, dict):
            raise ResponseDecodeError(
                "a submit answer that is not a JSON object", body=bytes(body), request=request
            )
        code = _code(reply.get("code"))
        if code is None:
            raise ResponseDecodeError(
                "a submit answer without a numeric code", body=bytes(body), request=request
            )
        if code in (1, 21, 22):
            task_id = _task_id(reply.get("result"))
            if task_id is None:
                raise ResponseDecodeError(
                    f"submit answered code {code} without a task id", body=bytes(body), request=request
                )
            return task_id
        raise _refusal(code, reply, bytes(body), request)

    def decode_task(self, body: bytes, kind: type[R] | None = None) -> TaskRecord[Any]:
        """A Task object, or a `list-by-condition` answer for one id, as a `TaskRecord`; without
        `kind`, the task's `action` picks the result type."""
        data = _load(body, "Task object")
        if isinstance(data, list):
            if not data:
                raise TaskNotFoundError("the proxy has no task with that id")
            if len(data) > 1:
                raise ResponseDecodeError(f"{len(data)} tasks where one was asked for", body=bytes(body))
            data = data[0]
        if not isinstance(data, dict):
            raise ResponseDecodeError("a Task object that is not a JSON object", body=bytes(body))
        return self._record(data, kind)

    def decode_task_batch(self, body: bytes, kind: type[R] | None = None) -> TaskBatch[Any]:
        """A `list-by-condition` or listing answer: a JSON array of Task objects."""
        items = _task_list(body)
        return TaskBatch(items=[self._record(task, kind) for task in items], count=len(items))

    def task_bodies(self, body: bytes, *, batch: bool) -> dict[str, bytes]:
        """Each Task object in a lookup's answer, undecoded, by task id (ids it lacks are left out).

        Both lookups are `list-by-condition`, so `batch` changes nothing: the answer is an array (a
        single object, as `fetch` and callbacks send, is taken too).
        """
        del batch
        try:
            items = _raw_list_decoder.decode(body)
        except msgspec.ValidationError:
            items = [msgspec.Raw(body)]  # one object
        except _UNDECODABLE as exc:
            raise ResponseDecodeError(
                f"undecodable list-by-condition answer: {_reason(exc)}", body=bytes(body)
            ) from redact_cause(exc)
        bodies: dict[str, bytes] = {}
        for item in items:
            try:
                task_id = _task_id(_id_probe_decoder.decode(item).id)
            except _UNDECODABLE as exc:
                raise ResponseDecodeError(
                    f"undecodable Task object: {_reason(exc)}", body=bytes(item)
                ) from redact_cause(exc)
            if task_id is not None:
                bodies[task_id] = bytes(item)
        return bodies

    def task_state(self, record: TaskRecord[Any]) -> TaskState:
        """Where a task stands; a failure is never success, whatever its progress says (NA: "100%")."""
        status = (record.state or "").upper()
        if status == "SUCCESS":
            return "succeeded" if record.response is not None else "pending"
        if status in _FAILED:
            return "failed"
        if status == "MODAL":
            return "pending" if self.modal_step else "failed"
        if status in _RUNNING and record.response is not None:
            return "running"
        return "pending"

    def needs_modal(self, record: TaskRecord[Any]) -> bool:
        """Whether the task waits for the MODAL step (`modal_request`): status `MODAL` (§8). NA turns
        most 21 answers into 1, so the status, not the submit's code, is what tells."""
        return (record.state or "").upper() == "MODAL"

    def awaits_follow_up_step(self, record: TaskRecord[Any]) -> bool:
        """Whether the task still waits for its `follow_up_step` (`needs_modal`)."""
        return self.needs_modal(record)

    def allowed_actions(self, result: ImagineUpdate) -> frozenset[str]:
        """Actions a follow-up may use: the result's buttons (or, without buttons, what
        `submit/change` can do), in neutral names."""
        return frozenset(result.actions)

    # -- errors -----------------------------------------------------------------------------------

    def status_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request: str | None = None
    ) -> APIStatusError:
        """The typed error for an error status: a submit reply (TA's 404 code 3), NA's
        `{description, type, code}` or OpenAI-style `error`, plain text (TA's 401), or nothing (NZ's 401).

        NA's `do_request_failed` (it got no answer from the proxy within 60 s, and the proxy may have
        made the task), whatever its status (400, or 500) and shape, is a `ServerError`: its fate is
        unknown, so a submit is looked up. It keeps its status.
        """
        data = _load_or_none(body)
        message, code = _error_fields(data)
        if message is None:
            message = _plain_text(body)
        if message is None:
            message = _describe_status(status, headers, body)
        cls = _STATUS_CLASSES.get(status) or (ServerError if status >= 500 else APIStatusError)
        if _relay_failed(data):
            cls = ServerError
            message = f"the gateway got no answer from the proxy ({message}); the proxy may hold the task"
        return cls(
            message,
            status=status,
            code=code,
            body=body,
            request=request,
            retry_after=parse_retry_after(headers, cap=math.inf),
        )

    def job_failed(self, result: Result, *, request: str | None = None) -> JobFailedError:
        """The error for a task that ended `FAILURE` (its `failReason`; a banned prompt is a
        `BannedPromptError`), `CANCEL`, or that waits for the MODAL step this client cannot send."""
        message = result.error if isinstance(result.error, str) else None
        raw = result.raw or {}
        status = raw.get("status") if isinstance(raw.get("status"), str) else ""
        code = None
        if status == "MODAL":
            code = "modal"
        elif status == "CANCEL":
            code = "cancelled"
        elif message and _BANNED.search(message):
            # TA checks banned words after the submit (§4): the same refusal as NZ's code 24, found late.
            return BannedPromptError(
                message,
                status=403,
                code="banned_prompt",
                task_id=result.task_id,
                body=_encode_or_none(result.raw),
                request=request,
            )
        return JobFailedError(
            message or "the proxy reports the task as failed",
            code=code,
            task_id=result.task_id,
            body=_encode_or_none(result.raw),
            request=request,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _record(self, task: dict[str, Any], kind: type[R] | None) -> TaskRecord[Any]:
        action = _text(task.get("action"))
        if kind is None:
            kind = _RESULT_BY_ACTION.get((action or "").upper(), Result)  # type: ignore[assignment]
        assert kind is not None
        status = (_text(task.get("status")) or "").upper()
        waiting = status in _WAITING or status not in (_RUNNING | _FAILED | {"SUCCESS", "MODAL"})
        started, finished = _epoch(task.get("startTime")), _epoch(task.get("finishTime"))
        state = task.get("state")
        return TaskRecord(
            id=_task_id(task.get("id")),
            type=action.lower() if action else None,
            response=None if waiting else _convert(kind, task, modal_step=self.modal_step),
            request={"state": state} if isinstance(state, str) and state else None,
            mode=_text(task.get("mode")),
            state=status or None,
            created_at=_epoch(task.get("submitTime")),
            started_at=started,
            finished_at=finished,
            duration=finished - started if started is not None and finished is not None else None,
        )


def job_marker(request: AnyRequest, nonce: str | None = None) -> str:
    """The `state` a submit of `request` carries, which the proxy echoes in its task:
    `mjasync-<digest>-<nonce>`, a digest of what the request asks for (not of how its answer is
    delivered) and the job's `nonce` (random, made once per job and sent by each of its retries).

    The nonce tells apart jobs with the same request (a pipeline asking for one prompt four times):
    the job that sent a lost submit finds its own task by the whole marker, never a sibling's still
    in flight. The digest is the same for the same request always, so a job rebuilt after a crash,
    which never had the nonce, still finds the task by it (`same_request` with no nonce; the engine
    refuses to choose between several). With no `nonce`, the digest part alone.
    """
    fields = msgspec.to_builtins(request)
    for name in _DELIVERY_FIELDS:
        fields.pop(name, None)
    digest = hashlib.blake2b(
        type(request).__name__.encode() + b"\x00" + _sorted_encoder.encode(fields), digest_size=12
    )
    marker = _MARKER_PREFIX + digest.hexdigest()
    return marker if nonce is None else marker + _NONCE_SEPARATOR + nonce


def data_url(data: bytes) -> str:
    """`data` as the `data:<mime>;base64,...` URL the proxy takes (NZ refuses bare base64); PNG, JPEG,
    GIF or WEBP of at most `MAX_IMAGE_BYTES`."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequestError(f"an image of {len(data)} bytes is over {MAX_IMAGE_BYTES} bytes")
    mime = next((kind for magic, kind in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise InvalidRequestError(f"not a PNG, JPEG, GIF or WEBP image ({len(data)} bytes)")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _inline(urls: Sequence[str], images: Sequence[bytes] | None) -> list[str] | None:
    """The data URLs of the fetched `images` of `urls`, checked; None when none were given."""
    if images is None:
        return None
    if not isinstance(images, (list, tuple)) or len(images) != len(urls):
        raise InvalidRequestError(
            f"images= must hold the bytes of each of the {len(urls)} image URLs, in order"
        )
    if sum(len(image) for image in images) > MAX_INLINE_BYTES:
        raise InvalidRequestError(f"the images are over {MAX_INLINE_BYTES} bytes in all")
    return [data_url(bytes(image)) for image in images]


def _submit_path(mode: str | None, endpoint: str) -> str:
    return f"{_MODE_PREFIXES.get(mode or '', '')}{SUBMIT}/{endpoint}"


def _leading_urls(prompt: str) -> list[str]:
    """The image URLs a prompt starts with (where `build_prompt` puts them)."""
    urls: list[str] = []
    for word in prompt.split():
        if not _URL.fullmatch(word):
            break
        urls.append(word)
    return urls


def _blend_extras(request: ImagineRequest) -> list[str]:
    """Words of a blend's prompt that are not its images (the proxy's blend takes no prompt)."""
    urls = set(request.blend_urls or ())
    return [word for word in (request.prompt or "").split() if word not in urls]


def _parse_follow_up_id(value: str | None) -> _FollowUp:
    found = _FOLLOW_UP_ID.fullmatch(value or "")
    if found is None:
        raise InvalidRequestError(
            f"a follow-up names its parent as '<task id>' or '<task id>:<job hash>[:<tag>]', not {value!r}"
        )
    return _FollowUp(found.group("task"), found.group("h"), found.group("tag"))


class _Buttons(NamedTuple):
    """What a result's buttons offer: its job hash, its upscaler tag, and the neutral actions."""

    hash: str | None
    tag: str | None
    actions: list[str]


def _buttons(buttons: object) -> _Buttons:
    """The actions of `buttons` whose customId is exactly the one `_BUTTONS` rebuilds from the hash
    (and tag) they share; other buttons (describe's, videos', unknown forms) are left out."""
    if not isinstance(buttons, list):
        return _Buttons(None, None, [])
    matched: list[tuple[str, str, str | None]] = []
    for button in buttons:
        custom_id = button.get("customId") if isinstance(button, dict) else None
        if not isinstance(custom_id, str):
            continue
        for action, pattern in _BUTTON_PATTERNS:
            found = pattern.fullmatch(custom_id)
            if found is not None:
                matched.append((action, found.group("h"), found.groupdict().get("tag")))
                break
    if not matched:
        return _Buttons(None, None, [])
    job_hash = matched[0][1]
    tag = next((t for _, h, t in matched if t and h == job_hash), None)
    actions: list[str] = []
    for action, h, t in matched:
        if h == job_hash and t in (None, tag) and action not in actions:
            actions.append(action)
    return _Buttons(job_hash, tag, actions)


def _convert(kind: type[R], task: dict[str, Any], *, modal_step: bool) -> R:
    """A neutral result (of `kind`) from a Task object; the object itself kept whole in `raw`."""
    status = (_text(task.get("status")) or "").upper()
    waits_for_modal = status == "MODAL" and not modal_step
    failed = status in _FAILED or waits_for_modal
    finished = status == "SUCCESS"
    error: str | None = None
    if waits_for_modal:
        error = _MODAL_WAITING
    elif failed:
        reason = _text(task.get("failReason"))
        error = reason or (
            "the task was cancelled" if status == "CANCEL" else "the proxy reports the task as failed"
        )
    fields: dict[str, Any] = {
        "task_id": _task_id(task.get("id")),
        "success": not failed,
        "error": error,
        "finished": finished,
        "raw": task,
    }
    properties = task.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    if issubclass(kind, ImagineUpdate):
        buttons = _buttons(task.get("buttons")) if finished else _Buttons(None, None, [])
        actions = buttons.actions
        if finished and not actions and not _has_buttons(task.get("buttons")):
            # No buttons at all (NZ): what `submit/change` can do with this kind of task.
            actions = (
                list(_GRID_ACTIONS) if (_text(task.get("action")) or "").upper() in _GRID_TASK_ACTIONS else []
            )
        fields.update(
            image_id=buttons.hash,
            image_url=_text(task.get("imageUrl")),
            progress=100.0 if finished else (None if failed else _progress(task.get("progress"))),
            sub_image_urls=_image_urls(task.get("imageUrls")) if finished else None,
            actions=actions,
        )
    elif issubclass(kind, DescribeResult) and finished:
        text = (
            _text(properties.get("finalPrompt")) or _text(task.get("promptEn")) or _text(task.get("prompt"))
        )
        fields["descriptions"] = _numbered(text or "")
    elif issubclass(kind, ShortenResult) and finished:
        fields["prompts"] = _numbered(_text(properties.get("finalPrompt")) or "")
    try:
        return kind(**{k: v for k, v in fields.items() if k in kind.__struct_fields__})
    except TypeError as exc:  # a final type asked for by mistake, with a field no Task object fills
        raise ResponseDecodeError(f"cannot build a {kind.kind} result: {exc}") from redact_cause(exc)


def _has_buttons(buttons: object) -> bool:
    return isinstance(buttons, list) and any(
        isinstance(b, dict) and isinstance(b.get("customId"), str) and b["customId"] for b in buttons
    )


def _image_urls(value: object) -> list[str] | None:
    """TA's `imageUrls` (`[{url, thumbnail}]`): the four images of a grid, when it has them."""
    if not isinstance(value, list):
        return None
    urls = [item["url"] for item in value if isinstance(item, dict) and isinstance(item.get("url"), str)]
    return urls or None


def _numbered(text: str) -> list[str]:
    """The prompts of the bot's numbered text ("1️⃣ ...\\n\\n2️⃣ ..."), whatever comes before the first
    (shorten's "Important tokens"); unnumbered text is split at blank lines."""
    numbered = _KEYCAP_START.split(text)
    parts = numbered[1:] if len(numbered) > 1 else re.split(r"\n\s*\n", text)
    return [_KEYCAP.sub("", part).strip() for part in parts if _KEYCAP.sub("", part).strip()]


def _progress(value: object) -> float | None:
    """`"46%"` as 46.0; anything that is not a percentage (`""`, null, "Waiting to start") as None."""
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        if not re.fullmatch(r"\d{1,3}(?:\.\d+)?", text):
            return None
        number = float(text)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, int) and not -1000 <= value <= 1000:
            return None
        number = float(value)
    else:
        return None
    return min(max(number, 0.0), 100.0) if math.isfinite(number) else None


def _epoch(value: object) -> float | None:
    """Epoch milliseconds as seconds; null, 0 (NA) and what is not a time as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not 0 < value < _MAX_EPOCH_MS:
        return None
    return float(value) / 1000.0


def _task_id(value: object) -> str | None:
    """A task id as a string (some resellers send a number); a one-id array too."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**30:
        return str(value)
    return None


def _code(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,9}", value.strip()):
        return int(value)
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _refusal(code: int, reply: dict[str, Any], body: bytes, request: str | None) -> APIStatusError:
    """The error a submit's refusal amounts to (it made no task, but for code 9's internal failure)."""
    description = (_text(reply.get("description")) or _text(reply.get("message")) or "").strip()
    said = f"code {code}: {description}" if description else f"code {code}"
    common: dict[str, Any] = {"code": str(code), "body": body, "request": request}
    if code == 23 or (code == 9 and _QUEUE_FULL.search(description)):
        return RateLimitError(f"the proxy's queue is full ({said}); nothing was queued", status=429, **common)
    if code == 24:
        properties = reply.get("properties")
        word = _text(properties.get("bannedWord")) if isinstance(properties, dict) else None
        banned = f"; banned word: {word!r}" if word else ""
        return ModerationError(f"the prompt was refused as banned ({said}){banned}", status=403, **common)
    if code == 3:
        if _PARENT_GONE.search(description):
            return NotFoundError(f"the parent task is gone ({said})", status=404, **common)
        return RateLimitError(f"no proxy account is free ({said}); nothing was queued", status=429, **common)
    if code == 9:
        return ServerError(
            f"the proxy failed the submit ({said}); it may hold the task", status=500, **common
        )
    return BadRequestError(f"the proxy refused the submit ({said})", status=400, **common)


def _relay_failed(data: object) -> bool:
    """Whether an error body is NA's `do_request_failed`: its relay got no answer from the proxy
    (unreachable, or silent past 60 s), which may have made the task all the same. In NA's own shape
    (`{"description": "do_request_failed ", "type": "upstream_error", "code": 5}`) or OpenAI's
    (`{"code": "do_request_failed"}`, `{"error": {"code": "do_request_failed"}}`)."""
    if not isinstance(data, dict):
        return False
    fields = [data.get("code"), data.get("description"), data.get("message")]
    error = data.get("error")
    if isinstance(error, dict):
        fields += [error.get("code"), error.get("message")]
    return any(isinstance(value, str) and _RELAY_FAILED in value for value in fields)


def _load(body: bytes | memoryview, what: str, request: str | None = None) -> Any:
    try:
        return _any_decoder.decode(body)
    except _UNDECODABLE as exc:
        raise ResponseDecodeError(
            f"undecodable {what}: {_reason(exc)}", body=bytes(body), request=request
        ) from redact_cause(exc)


def _load_or_none(body: bytes) -> Any:
    try:
        return _any_decoder.decode(body)
    except _UNDECODABLE:
        return None


def _task_list(body: bytes) -> list[dict[str, Any]]:
    data = _load(body, "task list")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ResponseDecodeError("a task list that is not a JSON array of objects", body=bytes(body))
    return data


def _encode_or_none(value: dict[str, Any] | None) -> bytes | None:
    if value is None:
        return None
    try:
        return _encoder.encode(value)
    except (msgspec.EncodeError, RecursionError, OverflowError):
        return None


def _error_fields(data: object) -> tuple[str | None, str | None]:
    """(message, code) of a JSON error body: a submit reply or NA's `{description, code}`, TA's
    `{message, code}`, or an OpenAI-style `{"error": {"message", "code"}}`."""
    if not isinstance(data, dict):
        return None, None
    code_value = _code(data.get("code"))
    code = str(code_value) if code_value is not None else _text(data.get("code"))
    for key in ("description", "message"):
        text = _text(data.get(key))
        if text:
            return text.strip(), code
    error = data.get("error")
    if isinstance(error, dict):
        return _text(error.get("message")), code or _text(error.get("code"))
    return _text(error), code


def _plain_text(body: bytes) -> str | None:
    """A short plain-text body (TA's `Authorization header missing.`), else None."""
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or len(text) > 300 or not text.isprintable() or text[0] in "{[":
        return None
    return text


def _describe_status(status: int, headers: Mapping[str, str], body: bytes) -> str:
    hint = " (check the API key: the proxy reads it from mj-api-secret)" if status == 401 else ""
    if not body:
        return f"HTTP {status} with an empty body{hint}"
    kind = headers.get("content-type", "").split(";")[0].strip() or "no content type"
    return f"HTTP {status} with no error message ({kind}, {len(body)} bytes){hint}"


def _reason(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


#: The midjourney-proxy provider every client shares (the key in `mj-api-secret`).
PROXY: Final = ProxyProvider(modal_step=True)
#: The same protocol with the key as `Authorization: Bearer <key>`, for gateways that want that.
PROXY_BEARER: Final = ProxyProvider(name="midjourney-proxy-bearer", bearer=True, modal_step=True)
