"""Pure layer: the task record the tasks endpoint returns, and its state."""

from typing import Any, Generic, Literal, TypeVar

import msgspec

__all__ = ["TaskBatch", "TaskRecord", "TaskState"]

R = TypeVar("R")

#: pending: queued, no `response` yet · running: a partial `response` · succeeded · failed.
TaskState = Literal["pending", "running", "succeeded", "failed"]


class TaskRecord(msgspec.Struct, Generic[R], kw_only=True, frozen=True, gc=False):
    """One task as the tasks endpoint reports it.

    `response` is absent while the task is queued, a partial body (progress below 100) while it runs,
    and the final result, or a failure body, when it is done.
    """

    id: str | None = None
    type: str | None = None
    response: R | None = None
    request: dict[str, Any] | None = None
    mode: str | None = None
    state: str | None = None
    trace_id: str | None = None
    image_id: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    duration: float | None = None


class TaskBatch(msgspec.Struct, Generic[R], kw_only=True, frozen=True, gc=False):
    """The answer to `retrieve_batch`: the records found, and the provider's count."""

    items: list[TaskRecord[R]] = []
    count: int | None = None
