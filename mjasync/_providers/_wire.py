"""Mapping layer: a request as a provider wants it on the wire, the one shape every `Provider` method returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from .._models.results import Result

__all__ = ["CallRequest", "PageRequest", "WireRequest"]

_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One request: the path under the base URL, the JSON body, headers beyond the client's own, and
    the method: POST, or GET for a provider's read that takes one (then the body is not sent)."""

    path: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class CallRequest(WireRequest):
    """A short call, with the result type its answer decodes to; `as_task`: the provider answers with
    a task id, and the result is read from the task (GoAPI's describe and seed)."""

    result_type: type[Result] = Result
    as_task: bool = False


@dataclass(frozen=True, slots=True)
class PageRequest(WireRequest):
    """One page of a listing of tasks, newest first; the next page starts `page_size` further on."""

    page_size: int = 1
