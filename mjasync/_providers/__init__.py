"""Mapping layer: one module per provider, each turning neutral requests into its wire format and back.

The client talks only to the `Provider` protocol below, so a provider difference lives in its module,
never in an `if provider == ...` elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from .._exceptions import APIStatusError, InvalidRequestError, JobFailedError
from .._models.requests import DescribeRequest, JobRequest, SeedRequest, ShortenRequest, TranslateRequest
from .._models.results import ImagineResult, Result
from .._models.task import TaskBatch, TaskRecord, TaskState
from .._types import WaitVia
from .acedata import AceDataProvider

__all__ = ["AceDataProvider", "Provider", "get_provider"]

R = TypeVar("R", bound=Result)


class Provider(Protocol):
    """What the client needs from a provider: requests out, typed results and errors in."""

    @property
    def name(self) -> str: ...
    @property
    def default_base_url(self) -> str: ...

    def auth_headers(self, api_key: str) -> dict[str, str]: ...
    def credential_headers(self) -> frozenset[str]: ...
    def job_request(self, request: JobRequest, *, via: WaitVia) -> tuple[str, bytes, dict[str, str]]: ...
    def call_request(
        self, request: DescribeRequest | ShortenRequest | TranslateRequest | SeedRequest
    ) -> tuple[str, bytes, type[Result]]: ...
    def task_request(
        self, task_id: str | None = None, *, trace_id: str | None = None
    ) -> tuple[str, bytes]: ...
    def task_batch_request(
        self, task_ids: list[str] | None = None, *, trace_ids: list[str] | None = None
    ) -> tuple[str, bytes]: ...
    def recent_tasks_request(
        self, request: JobRequest, *, since: float, offset: int = 0
    ) -> tuple[str, bytes, int] | None: ...
    def same_request(self, record: TaskRecord[Any], request: JobRequest) -> bool: ...
    def decode_result(self, kind: type[R], body: bytes, *, request: str | None = None) -> R: ...
    def decode_update(self, kind: type[R], line: bytes, line_number: int) -> R: ...
    def decode_receipt(self, body: bytes, *, request: str | None = None) -> str: ...
    def decode_task(self, body: bytes, kind: type[R] | None = None) -> TaskRecord[Any]: ...
    def decode_task_batch(self, body: bytes, kind: type[R] | None = None) -> TaskBatch[Any]: ...
    def task_bodies(self, body: bytes, *, batch: bool) -> dict[str, bytes]: ...
    def task_state(self, record: TaskRecord[Any]) -> TaskState: ...
    def allowed_actions(self, result: ImagineResult) -> frozenset[str]: ...
    def status_error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, request: str | None = None
    ) -> APIStatusError: ...
    def job_failed(self, result: Result, *, request: str | None = None) -> JobFailedError: ...


_PROVIDERS: dict[str, type[Provider]] = {"acedata": AceDataProvider}


def get_provider(name: str) -> Provider:
    """The provider called `name`."""
    try:
        return _PROVIDERS[name]()
    except KeyError:
        known = ", ".join(sorted(_PROVIDERS))
        raise InvalidRequestError(f"unknown provider {name!r}; known: {known}") from None
