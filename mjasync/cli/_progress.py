"""Entry layer: progress bars, with rich when it is installed and plain lines when it is not."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

__all__ = ["ProgressView"]


class _Bar:
    def __init__(self, label: str, progress: Any, task_id: Any) -> None:
        self._label = label
        self._progress = progress
        self._task_id = task_id
        self._last = -1.0

    def update(self, percent: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task_id, completed=percent)
        elif percent != self._last:
            print(f"  {self._label:<14} {percent:5.1f}%", file=sys.stderr, flush=True)
        self._last = percent


class ProgressView:
    """One line per task: a rich progress bar if rich is installed, else a line per progress change."""

    def __init__(self) -> None:
        self._progress: Any = None

    def __enter__(self) -> ProgressView:
        try:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
        except ImportError:
            return self
        self._progress = Progress(TextColumn("{task.description:<14}"), BarColumn(), TaskProgressColumn())
        self._progress.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)

    @contextmanager
    def task(self, label: str) -> Iterator[_Bar]:
        """A bar for one job, from 0 to 100."""
        task_id = self._progress.add_task(label, total=100) if self._progress is not None else None
        yield _Bar(label, self._progress, task_id)
