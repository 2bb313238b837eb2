"""Entry layer: `mjasync batch`'s display, an overall bar and a row per in-flight job, or plain lines."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any, Final

from ._batch_input import Unit

__all__ = ["BatchView"]

#: In-flight jobs shown as their own progress rows (the overall bar counts the rest).
_MAX_ROWS: Final = 10


class BatchView:
    """An overall bar and a row per in-flight job with rich on a terminal; else a line per ended job."""

    def __init__(self, *, total: int, done: int, ok: int, failed: int, live: bool | None = None) -> None:
        self.total, self.done, self.ok, self.failed = total, done, ok, failed
        self.live = _rich_available() and sys.stderr.isatty() if live is None else live
        self._progress: Any = None
        self._overall: Any = None
        #: key → [rich task id or None, task id at the provider or None, visible]
        self._rows: dict[str, list[Any]] = {}

    def __enter__(self) -> BatchView:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<32.32}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                refresh_per_second=4,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task("batch", total=self.total, completed=self.done, status="")
            self._refresh_overall()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def note(self, text: str) -> None:
        """A line above the bars (or on stderr)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def started(self, unit: Unit, status: str) -> None:
        """A unit was handed to the run."""
        if self._progress is None:
            return
        visible = sum(1 for row in self._rows.values() if row[2]) < _MAX_ROWS
        row = self._progress.add_task(f"  {unit.label}", total=100, status=status, visible=visible)
        self._rows[unit.key] = [row, None, visible]
        self._refresh_overall()

    def accepted(self, unit: Unit, task_id: str) -> None:
        """The provider accepted the unit as `task_id`."""
        row = self._rows.get(unit.key)
        if row is not None and self._progress is not None:
            row[1] = task_id
            self._progress.update(row[0], status="queued")

    def progress(self, key: str, percent: float | None, state: str | None) -> None:
        """A progress reading for the unit `key`."""
        row = self._rows.get(key)
        if row is None or self._progress is None:
            return
        if percent is None:
            self._progress.update(row[0], status=state or "queued")
        else:
            self._progress.update(row[0], completed=percent, status=f"{percent:.0f}%")

    def shown_task_ids(self) -> dict[str, str]:
        """Task id → key for the rows on screen (what the progress lookups ask about)."""
        return {row[1]: key for key, row in self._rows.items() if row[2] and row[1]}

    def ended(self, unit: Unit, *, ok: bool, detail: str) -> None:
        """The unit's line is written."""
        self.done += 1
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        self._drop_row(unit.key)
        text = f"[{self.done}/{self.total}] {'ok    ' if ok else 'FAILED'} {unit.label}  {detail}"
        if self._progress is None:
            print(text, file=sys.stderr, flush=True)
        else:
            if not ok:
                self.note(text)
            self._refresh_overall()

    def left(self, unit: Unit, detail: str) -> None:
        """The unit stopped without ending (a rerun picks it up)."""
        self._drop_row(unit.key)
        self.note(f"[not ended] {unit.label}  {detail}")

    def _drop_row(self, key: str) -> None:
        row = self._rows.pop(key, None)
        if row is None or self._progress is None:
            return
        self._progress.remove_task(row[0])
        if row[2]:
            for other in self._rows.values():
                if not other[2]:
                    other[2] = True
                    self._progress.update(other[0], visible=True)
                    break

    def _refresh_overall(self) -> None:
        if self._progress is None:
            return
        hidden = sum(1 for row in self._rows.values() if not row[2])
        more = f"  (+{hidden} more in flight)" if hidden else ""
        status = f"{self.done}/{self.total}  ok {self.ok}  failed {self.failed}{more}"
        self._progress.update(self._overall, completed=self.done, status=status)


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True
