"""Mapping layer: what a provider whose job is one submit of URLs says to the job's two-step hooks."""

from __future__ import annotations

from typing import Any

from .._models.requests import AnyRequest
from .._models.task import TaskRecord
from ._wire import WireRequest

__all__ = ["OneSubmitJobs"]


class OneSubmitJobs:
    """For a provider (AceData, GoAPI) that fetches image URLs itself and makes a whole job from one
    submit: nothing to fetch first, no second step to send, no task waiting for one."""

    def image_urls(self, request: AnyRequest) -> tuple[str, ...]:
        """None: image URLs go as they are, for the provider to fetch."""
        del request
        return ()

    def follow_up_step(self, request: AnyRequest, task_id: str) -> WireRequest | None:
        """None: one submit makes the whole job."""
        del request, task_id
        return None

    def awaits_follow_up_step(self, record: TaskRecord[Any]) -> bool:
        """False: no task waits for a second submit."""
        del record
        return False
