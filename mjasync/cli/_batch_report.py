"""Entry layer: what `mjasync batch` reports when a run stops: the summary table and `index.html`.

The summary table counts this run: units that ended ok, failed (by reason: the error's class, with
the provider's status and code), skipped (ended in an earlier run, or an upscale not sent because its
grid failed), not ended (a rerun resumes them), the retries the client made, the refusals it met (429s,
and midjourney-proxy's full queue) and the time taken. `RefusalCounter` counts those refusals: it wraps
the run's in-flight limiter, which the engine tells of every one.

`index.html`, beside `results.jsonl`, is a contact sheet of every unit that has a line there (this run's
and earlier runs'): each saved image (linked relatively, `images/...`) with its prompt, action and task id
under it, or the error a unit ended with. Everything taken from the input or the provider is escaped.
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

from .._limiter import Limiter, LimiterStatistics
from .._models.errors import ErrorInfo
from ._batch_view import format_duration
from ._journal import ResultLine

__all__ = [
    "INDEX_NAME",
    "SKIPPED_TYPE",
    "RefusalCounter",
    "RunCounts",
    "print_summary",
    "reason",
    "summary_rows",
    "write_contact_sheet",
]

INDEX_NAME: Final = "index.html"
#: The error type of an upscale not sent because its grid failed: skipped, not failed.
SKIPPED_TYPE: Final = "Skipped"


def reason(info: ErrorInfo) -> str:
    """How the summary names a failure: its class, and the provider's status and code when it gave them."""
    said = " ".join(str(part) for part in (info.status, info.code) if part is not None)
    return f"{info.type} ({said})" if said else info.type


@dataclass
class RunCounts:
    """What this run did with each unit it handled (units ended in earlier runs are not in it)."""

    ok: int = 0
    #: Failures by `reason`.
    failed: Counter[str] = field(default_factory=Counter)
    #: Upscales not sent because their grid failed.
    skipped: int = 0
    #: Units that stopped without ending, by the error's class.
    not_ended: Counter[str] = field(default_factory=Counter)
    #: Retries the client made for the units that ended (`Outcome.retries_taken`).
    retries: int = 0


class RefusalCounter:
    """A `Limiter` that counts the refusals (429s, a full queue) the engine reports, then passes every
    call on to the limiter it wraps, so the run's limits behave exactly as without it."""

    def __init__(self, inner: Limiter) -> None:
        self._inner = inner
        #: Refusals so far: submits and lookups answered 429 (or a full queue), retried or not.
        self.refusals = 0

    def slot(self, borrower: object) -> AbstractAsyncContextManager[None]:
        """The wrapped limiter's."""
        return self._inner.slot(borrower)

    async def acquire(self, borrower: object) -> None:
        """The wrapped limiter's."""
        await self._inner.acquire(borrower)

    def release(self, borrower: object) -> None:
        """The wrapped limiter's."""
        self._inner.release(borrower)

    def sending(self) -> AbstractContextManager[None]:
        """The wrapped limiter's."""
        return self._inner.sending()

    def clear_to_submit(self) -> bool:
        """The wrapped limiter's."""
        return self._inner.clear_to_submit()

    async def before_request(self) -> None:
        """The wrapped limiter's."""
        await self._inner.before_request()

    async def before_submit(self) -> None:
        """The wrapped limiter's."""
        await self._inner.before_submit()

    async def refused(self, retry_after: float, *, submit: bool = True) -> None:
        """Count the refusal, then wait as the wrapped limiter says."""
        self.refusals += 1
        await self._inner.refused(retry_after, submit=submit)

    def refused_for_good(self, retry_after: float) -> None:
        """Count the refusal (one that will not be retried), and pass it on."""
        self.refusals += 1
        self._inner.refused_for_good(retry_after)

    def succeeded(self) -> None:
        """The wrapped limiter's."""
        self._inner.succeeded()

    def statistics(self) -> LimiterStatistics:
        """The wrapped limiter's."""
        return self._inner.statistics()


def summary_rows(counts: RunCounts, *, earlier: int, refusals: int, elapsed: float) -> list[tuple[str, str]]:
    """The summary table's rows, (label, value); a failure or not-ended reason is indented under its total.

    `earlier`: units that had ended before this run (skipped by it).
    """
    # As the live pace does, the upscales skipped because their grid failed are not counted as work.
    handled = counts.ok + sum(counts.failed.values())
    rate = f"  ({handled * 60.0 / elapsed:.1f} jobs/min)" if handled and elapsed > 0 else ""
    rows = [("ok", str(counts.ok)), ("failed", str(sum(counts.failed.values())))]
    rows += [(f"  {why}", str(n)) for why, n in sorted(counts.failed.items(), key=lambda kv: (-kv[1], kv[0]))]
    rows += [
        ("skipped: ended in an earlier run", str(earlier)),
        ("skipped: its grid failed", str(counts.skipped)),
        ("not ended (a rerun resumes them)", str(sum(counts.not_ended.values()))),
    ]
    rows += [
        (f"  {why}", str(n)) for why, n in sorted(counts.not_ended.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    rows += [
        ("retries", str(counts.retries)),
        ("refusals (429, queue full)", str(refusals)),
        ("time", f"{format_duration(elapsed)}{rate}"),
    ]
    return rows


def print_summary(rows: Sequence[tuple[str, str]], *, title: str, fancy: bool | None = None) -> None:
    """Print the summary table on stdout: drawn by rich on a terminal (when installed), else as text."""
    if fancy is None:
        fancy = sys.stdout.isatty() and _rich_available()
    if fancy:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", show_header=False, min_width=40)
        table.add_column("what")
        table.add_column("count", justify="right")
        for label, value in rows:
            table.add_row(label, value)
        Console().print(table, markup=False, highlight=False)
        return
    width = max(len(label) for label, _ in rows)
    values = max(len(value) for _, value in rows)
    lines = [title] + [f"  {label:<{width}}  {value:>{values}}" for label, value in rows]
    print("\n".join(lines), flush=True)


# -- the contact sheet --------------------------------------------------------------------------------

_STYLE: Final = """\
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
h1 { font-size: 1.2rem; font-weight: 600; }
.sheet { display: grid; grid-template-columns: repeat(auto-fill, minmax(16rem, 1fr)); gap: 1rem; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; }
figure img { display: block; width: 100%; height: auto; background: #eee; }
figcaption { padding: .5rem .7rem; font-size: .85rem; }
.prompt { margin: 0 0 .3rem; overflow-wrap: anywhere; }
.meta { margin: 0; color: #666; font-size: .78rem; overflow-wrap: anywhere; }
.error { margin: 0; padding: 2rem .7rem; color: #a00; background: #fff4f4; overflow-wrap: anywhere; }
.more a { margin-right: .4rem; }
"""


def write_contact_sheet(
    out: Path,
    lines: Iterable[ResultLine],
    *,
    order: Mapping[str, int],
    title: str,
    clock: Callable[[], float] = time.time,
) -> Path:
    """Write `out/index.html`: a card per unit of `lines`, in the input's order; return its path.

    `order` maps a job key to its number in the input (keys no longer in it go last, by line). The file
    is written whole and then renamed into place, so a reader never sees half of it.
    """
    actions = {"imagine": 0}
    cards = sorted(
        lines,
        key=lambda ln: (
            order.get(ln.job or ln.key, len(order) + 1),
            ln.line,
            ln.job or ln.key,
            actions.get(ln.action, 1),
            ln.action,
        ),
    )
    images = sum(1 for line in cards if line.images)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(clock()))
    body = "\n".join(_card(line, order) for line in cards)
    page = (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">{len(cards)} results, {images} with images; written {stamp} by mjasync batch. '
        "Every result is in results.jsonl beside this file.</p>\n"
        f'<main class="sheet">\n{body}\n</main>\n</body>\n</html>\n'
    )
    path = out / INDEX_NAME
    part = out / (INDEX_NAME + ".part")
    part.write_text(page, encoding="utf-8")
    os.replace(part, path)
    return path


def _card(line: ResultLine, order: Mapping[str, int]) -> str:
    """One unit's `<figure>`: its first image (or its error), then its prompt, action and task id."""
    prompt = html.escape(line.prompt or "(no prompt)")
    number = order.get(line.job or line.key)
    meta = [f"#{number}" if number else html.escape(line.job or line.key), html.escape(line.action or "")]
    if line.task_id:
        meta.append(f"task <code>{html.escape(line.task_id)}</code>")
    if line.ok and line.images:
        first = _href(line.images[0])
        picture = f'<a href="{first}"><img src="{first}" alt="{prompt}" loading="lazy"></a>'
        if len(line.images) > 1:
            links = " ".join(f'<a href="{_href(name)}">{i}</a>' for i, name in enumerate(line.images[1:], 1))
            meta.append(f'<span class="more">{links}</span>')
    elif line.ok:
        why = line.images_error or "no image saved (--no-images)"
        picture = f'<p class="error">{html.escape(why)}</p>'
    else:
        info = line.error
        why = f"{reason(info)}: {info.message}" if info is not None else "failed"
        picture = f'<p class="error">{html.escape(why)}</p>'
    return (
        f"<figure>{picture}<figcaption>"
        f'<p class="prompt">{prompt}</p><p class="meta">{" · ".join(part for part in meta if part)}</p>'
        "</figcaption></figure>"
    )


def _href(relative: str) -> str:
    """A link to a file under --out, relative to index.html (escaped for an attribute)."""
    return html.escape(quote(relative, safe="/"), quote=True)


def _rich_available() -> bool:
    try:
        import rich.table  # noqa: F401
    except ImportError:
        return False
    return True
