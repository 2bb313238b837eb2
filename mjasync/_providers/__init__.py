"""Mapping layer: one module per provider, each turning neutral requests into its wire format and back.

The client talks only to the `Provider` protocol below, so a provider difference lives in its module,
never in an `if provider == ...` elsewhere. Each provider is one module-level object, listed in
`PROVIDERS`; adding one means a module here, an entry there and in `ProviderName`, and its emulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, TypeVar

from .._config import ENV_API_KEY
from .._exceptions import APIStatusError, InvalidRequestError, JobFailedError
from .._models.requests import AnyRequest, JobRequest
from .._models.results import ImagineUpdate, Result
from .._models.task import TaskBatch, TaskRecord, TaskState
from .._types import BlendDimension, WaitVia
from ._callback import CallbackTarget
from ._wire import CallRequest, PageRequest, WireRequest
from .acedata import ACEDATA, AceDataProvider
from .goapi import GOAPI, GoapiProvider
from .proxy import PROXY, PROXY_BEARER, ProxyProvider

__all__ = [
    "CALLBACK_SECRET_HEADERS",
    "PROVIDERS",
    "AceDataProvider",
    "CallRequest",
    "CallbackTarget",
    "GoapiProvider",
    "PageRequest",
    "Provider",
    "ProxyProvider",
    "ProviderName",
    "api_key_env",
    "WireRequest",
    "get_provider",
]

R = TypeVar("R", bound=Result)


class Provider(Protocol):
    """What the client needs from a provider: requests out, typed results and errors in."""

    # Hashable (by identity is enough), so per-provider decoders can be cached.
    def __hash__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def default_base_url(self) -> str: ...
    #: Whether a job can stream its progress (ndjson); if not, a "stream" follows it by polling.
    @property
    def streams(self) -> bool: ...
    #: Whether a submit can hold the connection until the result; if not, "sync" polls.
    @property
    def long_waits(self) -> bool: ...
    #: The header the provider's callbacks carry our secret back in (None: it sends none).
    @property
    def callback_secret_header(self) -> str | None: ...
    #: The provider's own environment variables for the API key, read after `MJASYNC_API_KEY`; never
    #: another provider's, so one vendor's key is never sent to another's host.
    @property
    def api_key_env(self) -> tuple[str, ...]: ...

    def auth_headers(self, api_key: str) -> dict[str, str]: ...
    def credential_headers(self) -> frozenset[str]: ...
    def check(self, request: AnyRequest) -> None: ...
    #: The `--ar` a blend of this shape carries in its prompt (None: the shape goes as a field only).
    def blend_aspect_ratio(self, dimension: BlendDimension) -> str | None: ...
    def follow_up_id(self, result: ImagineUpdate) -> str | None: ...
    #: The images a submit of `request` sends as bytes, in order (none: `()`); the client fetches
    #: each once, at most `MAX_IMAGE_BYTES`, before the first send, and passes them as `images=`.
    def image_urls(self, request: AnyRequest) -> tuple[str, ...]: ...
    #: `nonce`: the job's own random token, made once per job and the same in each of its sends; a
    #: provider that can, sends it along (the proxy, in `state`) so `same_request` can tell the job's
    #: task from an identical sibling's. Others ignore it.
    def job_request(
        self,
        request: JobRequest,
        *,
        via: WaitVia,
        callback: CallbackTarget | None = None,
        images: Sequence[bytes] | None = None,
        nonce: str | None = None,
    ) -> WireRequest: ...
    def call_request(
        self, request: AnyRequest, *, images: Sequence[bytes] | None = None, nonce: str | None = None
    ) -> CallRequest: ...
    #: The second submit a job sends, once, for the task its first submit made (the proxy's MODAL
    #: step); None when the request needs none. Its answer is a receipt naming the same task.
    def follow_up_step(self, request: AnyRequest, task_id: str) -> WireRequest | None: ...
    #: Whether the task still waits for its `follow_up_step`: how a step whose answer was lost is
    #: settled (no longer waiting: it went through).
    def awaits_follow_up_step(self, record: TaskRecord[Any]) -> bool: ...
    def task_request(self, task_id: str | None = None, *, trace_id: str | None = None) -> WireRequest: ...
    def task_batch_request(
        self, task_ids: list[str] | None = None, *, trace_ids: list[str] | None = None
    ) -> WireRequest: ...
    def recent_tasks_request(
        self, request: AnyRequest, *, since: float, offset: int = 0
    ) -> PageRequest | None: ...
    #: Whether a listed task was made by a submit of `request`: with the `nonce` the submit was
    #: built with, by that very job; with none (a job rebuilt after a crash), by any job of `request`.
    def same_request(
        self, record: TaskRecord[Any], request: AnyRequest, *, nonce: str | None = None
    ) -> bool: ...
    def decode_result(self, kind: type[R], body: bytes, *, request: str | None = None) -> R: ...
    def decode_update(self, kind: type[R], line: bytes, line_number: int) -> R: ...
    def decode_updates(self, kind: type[R], run: bytes | memoryview) -> list[R] | None: ...
    def decode_callback(self, kind: type[R], body: bytes) -> R: ...
    def decode_receipt(self, body: bytes, *, request: str | None = None) -> str: ...
    def decode_task(self, body: bytes, kind: type[R] | None = None) -> TaskRecord[Any]: ...
    def decode_task_batch(self, body: bytes, kind: type[R] | None = None) -> TaskBatch[Any]: ...
    def task_bodies(self, body: bytes, *, batch: bool) -> dict[str, bytes]: ...
    def task_state(self, record: TaskRecord[Any]) -> TaskState: ...
    def allowed_actions(self, result: ImagineUpdate) -> frozenset[str]: ...
    def status_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request: str | None = None
    ) -> APIStatusError: ...
    def job_failed(self, result: Result, *, request: str | None = None) -> JobFailedError: ...


#: The name `Client(provider=...)` takes; a test keeps it equal to the keys of `PROVIDERS`.
ProviderName = Literal["acedata", "goapi", "midjourney-proxy", "midjourney-proxy-bearer"]

#: Every provider by name: the client's `provider=` and the CLI's `--provider` choices.
PROVIDERS: Final[Mapping[str, Provider]] = MappingProxyType(
    {p.name: p for p in (ACEDATA, GOAPI, PROXY, PROXY_BEARER)}
)

#: Every header some provider carries our callback secret back in (lower case).
CALLBACK_SECRET_HEADERS: Final = tuple(
    sorted({p.callback_secret_header for p in PROVIDERS.values() if p.callback_secret_header})
)


def get_provider(name: str) -> Provider:
    """The provider called `name`."""
    try:
        return PROVIDERS[name]
    except KeyError:
        known = ", ".join(sorted(PROVIDERS))
        raise InvalidRequestError(f"unknown provider {name!r}; known: {known}") from None


def api_key_env(provider: Provider) -> tuple[str, ...]:
    """The environment variables an API key for `provider` is read from, first found wins."""
    return (ENV_API_KEY, *provider.api_key_env)
