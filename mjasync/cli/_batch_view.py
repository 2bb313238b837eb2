"""Entry layer: `mjasync batch`'s display: an overall bar with the pace (jobs/min, ETA) and a row per
in-flight job labelled by its number and prompt, with rich on a terminal; else a plain line per ended job.

The pace counts only what ended in this run, over the time since this run started: jobs a resumed run
found already ended, and upscales skipped because their grid failed, are not work done at infinite
speed. It shows once the run is `PACE_AFTER` seconds old (before that, a quick failure would read as
thousands of jobs a minute). The clock is injectable so the pace can be tested without waiting.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

from ._batch_input import Unit

__all__ = ["LABEL_CHARS", "PACE_AFTER", "BatchView", "format_duration", "shorten"]

#: In-flight jobs shown as their own progress rows (the overall bar counts the rest).
_MAX_ROWS: Final = 10
#: Characters of a row's label (number, upscale tag and prompt): the column every row lines up in.
LABEL_CHARS: Final = 42
#: Seconds into a run before its pace (jobs/min, ETA) is shown.
PACE_AFTER: Final = 1.0
#: Characters of a prompt in a plain (no rich, or not a terminal) line.
_PLAIN_PROMPT_CHARS: Final = 50


def shorten(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis when longer."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)].rstrip() + "…"


def format_duration(seconds: float) -> str:
    """`seconds` as `m:ss`, or `h:mm:ss` from an hour up."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class BatchView:
    """What a batch shows while it runs: rich bars on a terminal (when rich is installed), else lines.

    `total` counts units (grids and upscales); `done`, `ok`, `failed` and `skipped` are where the
    journal stood when the run started (`skipped`: upscales not sent because their grid failed).
    `width` is the digits of a job's number (`number_width`).
    """

    def __init__(
        self,
        *,
        total: int,
        done: int,
        ok: int,
        failed: int,
        skipped: int = 0,
        width: int = 3,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done, self.ok, self.failed, self.skipped = total, done, ok, failed, skipped
        self.width = width
        self.live = _rich_available() and sys.stderr.isatty() if live is None else live
        self._clock = clock
        self._started = clock()
        #: Units that had ended before this run: the pace leaves them out.
        self._done_before = done
        self._skipped_before = skipped
        self._progress: Any = None
        self._overall: Any = None
        #: key → [rich task id or None, task id at the provider or None, visible]
        self._rows: dict[str, list[Any]] = {}

    # -- the pace -----------------------------------------------------------------------------------

    def jobs_per_minute(self) -> float | None:
        """Units ended per minute in this run so far; None before the first one ends, or too early to tell."""
        ended = self.done - self._done_before - (self.skipped - self._skipped_before)
        elapsed = self._clock() - self._started
        if ended <= 0 or elapsed < PACE_AFTER:
            return None
        return ended * 60.0 / elapsed

    def eta(self) -> float | None:
        """Seconds until every unit has ended at this run's pace; None before the first one ends."""
        rate = self.jobs_per_minute()
        if rate is None:
            return None
        return max(0, self.total - self.done) * 60.0 / rate

    def pace(self) -> str:
        """`12.5 jobs/min  ETA 3:12`, or `ETA --:--` while nothing has ended in this run yet."""
        rate, eta = self.jobs_per_minute(), self.eta()
        if rate is None or eta is None:
            return "-- jobs/min  ETA --:--"
        return f"{rate:.1f} jobs/min  ETA {format_duration(eta)}"

    def label(self, unit: Unit, chars: int = LABEL_CHARS) -> str:
        """A unit as its row shows it: the job's number, `U<n>` for an upscale, and the prompt, shortened."""
        number = f"{unit.job.number:0{self.width}d}"
        tag = f" U{unit.upscale}" if unit.upscale else ""
        head = f"{number}{tag} "
        return head + shorten(unit.job.prompt, max(1, chars - len(head)))

    # -- the display --------------------------------------------------------------------------------

    def __enter__(self) -> BatchView:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn(f"{{task.description:<{LABEL_CHARS + 2}}}"),
                BarColumn(bar_width=20),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                refresh_per_second=4,
            )
            self._progress.__enter__()
            self._overall = self._progress.add_task(
                "all jobs", total=self.total, completed=self.done, status=""
            )
            self._refresh_overall()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._refresh_overall()  # the last frame shows the final pace
            self._progress.__exit__(exc_type, exc, tb)
            self._progress = None

    def note(self, text: str) -> None:
        """A line above the bars (or on stderr)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def tick(self) -> None:
        """Redraw the pace (the ETA moves with the clock between endings)."""
        self._refresh_overall()

    def started(self, unit: Unit, status: str) -> None:
        """A unit was handed to the run."""
        if self._progress is None:
            return
        visible = sum(1 for row in self._rows.values() if row[2]) < _MAX_ROWS
        row = self._progress.add_task(f"  {self.label(unit)}", total=100, status=status, visible=visible)
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

    def ended(self, unit: Unit, *, ok: bool, detail: str, skipped: bool = False) -> None:
        """The unit's line is written (`skipped`: an upscale not sent, its grid having failed)."""
        self.done += 1
        if ok:
            self.ok += 1
        elif skipped:
            self.skipped += 1
        else:
            self.failed += 1
        self._drop_row(unit.key)
        word = "ok     " if ok else "skipped" if skipped else "FAILED "
        where = f"  [{unit.label}]" if not ok else ""
        text = f"[{self.done}/{self.total}] {word} {self.label(unit, _PLAIN_PROMPT_CHARS)}{where}  {detail}"
        if self._progress is None:
            print(f"{text}  ({self.pace()})", file=sys.stderr, flush=True)
        else:
            if not ok:
                self.note(text)
            self._refresh_overall()

    def left(self, unit: Unit, detail: str) -> None:
        """The unit stopped without ending (a rerun picks it up)."""
        self._drop_row(unit.key)
        self.note(f"[not ended] {self.label(unit, _PLAIN_PROMPT_CHARS)}  [{unit.label}]  {detail}")

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
        # The overall row's counts go in the label column, its pace in the status column: the rows'
        # labels and percentages are as wide, so the bars keep their width on an 80-120 column screen.
        skipped = f"  skipped {self.skipped}" if self.skipped else ""
        counts = f"{self.done}/{self.total}  ok {self.ok}  failed {self.failed}{skipped}"
        hidden = sum(1 for row in self._rows.values() if not row[2])
        more = f"  +{hidden} more" if hidden else ""
        self._progress.update(
            self._overall,
            description=shorten(counts, LABEL_CHARS + 2),
            completed=self.done,
            status=self.pace() + more,
        )


def _rich_available() -> bool:
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True
