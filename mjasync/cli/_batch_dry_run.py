"""Entry layer: `mjasync batch --dry-run`: what a run would pay for, counted before anything is sent.

It reads the input (checked as a real run checks it) and, when `--out` already holds a run, its journal
and results.jsonl, read only: nothing is created, locked or written, no key is needed and no connection
is opened. It counts the paid submits a run would make now: each grid (imagine) not ended yet and each
upscale after it, by speed mode; units an earlier run ended, or that it left accepted (a rerun waits on
them by task id), cost nothing more, and a unit sent with no task id written down is looked up first
and sent only if the provider has no such task.

The quota is said in the provider's own unit only where its price list is known: GoAPI's "MJ quota"
(its pricing page, in force since 2023-11-01: imagine 3 in relax (5 at peak hours), 9 in fast, 20 in
turbo; a quadrant upscale 3 in any mode). AceData Cloud's prices and midjourney-proxy's (your own
Midjourney account's GPU time) are not known here: for them the counts are the answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec

from ._batch_input import InputJob, iter_units
from ._journal import JOURNAL_NAME, RESULTS_NAME, JournalRecord, read_ndjson, read_results, replay

__all__ = ["DryRun", "count_run", "describe"]

#: A speed flag in the prompt itself (`--fast`), which GoAPI honours when no mode is sent.
_PROMPT_MODE: Final = re.compile(r"(?<!\S)--(relax|fast|turbo)(?!\S)")
#: GoAPI's MJ quota per task: imagine by mode, and a quadrant upscale (any mode).
_GOAPI_IMAGINE: Final = {"relax": 3, "fast": 9, "turbo": 20}
_GOAPI_IMAGINE_RELAX_PEAK: Final = 5
_GOAPI_UPSCALE: Final = 3
_UNKNOWN_PRICE: Final = {
    "acedata": "AceData Cloud bills each task by its own price list, which mjasync does not know",
    "midjourney-proxy": (
        "a midjourney-proxy runs tasks on your own Midjourney account: each one uses that account's "
        "GPU time, at no price mjasync knows"
    ),
}


@dataclass
class DryRun:
    """What a run of the input would do now, unit by unit."""

    jobs: int = 0
    units: int = 0
    #: Grids to submit, by speed mode ("" when neither the job, --mode nor the prompt sets one).
    grids: Counter[str] = field(default_factory=Counter)
    #: Upscales to submit once their grid has succeeded.
    upscales: int = 0
    #: Units sent earlier with no task id written down: looked up first, sent only if not found.
    lookups: int = 0
    #: Units an earlier run left accepted: waited on by task id, never sent again.
    resumed: int = 0
    #: Units an earlier run ended (ok or failed): skipped.
    ended: int = 0
    #: Upscales whose grid failed in an earlier run: never sent.
    not_sent: int = 0

    @property
    def submits(self) -> int:
        """Paid submits at most: grids and upscales to send, and lookups that may find nothing."""
        return sum(self.grids.values()) + self.upscales + self.lookups


def _mode(job: InputJob, mode: str | None) -> str:
    if job.mode or mode:
        return str(job.mode or mode)
    flag = _PROMPT_MODE.findall(job.prompt)
    return flag[-1] if flag else ""


def count_run(jobs: Sequence[InputJob], *, mode: str | None, out: Path | None) -> DryRun:
    """Count what a run of `jobs` would send, given the journal already in `out` (read only).

    Raises `JournalError` for a journal or results file a run would refuse too.
    """
    states = {}
    if out is not None and out.is_dir():
        results, _ = read_results(out / RESULTS_NAME)
        records, _ = read_ndjson(out / JOURNAL_NAME, msgspec.json.Decoder(JournalRecord))
        states = replay(records, results)
    plan = DryRun(jobs=len(jobs))
    for unit in iter_units(jobs):
        plan.units += 1
        state = states.get(unit.key)
        if state is not None and state.finished:
            plan.ended += 1
            continue
        if unit.upscale:
            grid = states.get(unit.job.key)
            if grid is not None and grid.finished and not grid.ok:
                plan.not_sent += 1
                continue
        if state is not None and state.task_id is not None:
            plan.resumed += 1
        elif state is not None and state.submitting_at is not None:
            plan.lookups += 1
        elif unit.upscale:
            plan.upscales += 1
        else:
            plan.grids[_mode(unit.job, mode)] += 1
    return plan


def describe(
    plan: DryRun, *, source: Path, provider: str, out: Path | None, emulator: bool = False
) -> list[str]:
    """The lines `--dry-run` prints (`emulator`: the run would use the embedded emulator, which is free)."""
    grids = sum(plan.grids.values())
    lines = [
        "mjasync batch --dry-run: nothing was sent, and nothing was written.",
        f"  input: {source}: {plan.jobs} jobs, {plan.units} units (grids and upscales)",
        f"  provider: {provider}" + (" (spoken by the embedded emulator)" if emulator else ""),
        f"  paid submits: {plan.submits} ({grids} grids, {plan.upscales} upscales"
        + (f", up to {plan.lookups} sent earlier with no task id, looked up first" if plan.lookups else "")
        + ")",
    ]
    if grids:
        ordered = sorted(plan.grids.items(), key=lambda item: (not item[0], item[0]))
        modes = ", ".join(f"{mode or 'mode not set'} {n}" for mode, n in ordered)
        lines.append(f"    grids by mode: {modes}")
    if plan.upscales:
        lines.append("    upscales are sent only after their grid succeeds")
    if out is not None and (plan.ended or plan.resumed or plan.not_sent):
        lines.append(
            f"  already in {out}: {plan.ended} ended (skipped), {plan.resumed} accepted (waited on, "
            f"not sent again), {plan.not_sent} upscales of failed grids (never sent)"
        )
    quota = "none: the embedded emulator is free" if emulator else _quota(plan, provider)
    lines.append(f"  quota: {quota}")
    return lines


def _quota(plan: DryRun, provider: str) -> str:
    if provider != "goapi":
        # A midjourney-proxy variant (another way to send the key) is billed as the proxy is.
        family = "midjourney-proxy" if provider.startswith("midjourney-proxy") else provider
        return f"{plan.submits} tasks; {_UNKNOWN_PRICE.get(family, 'its prices are not known to mjasync')}"
    # GoAPI runs a job with no mode in the prompt's mode, else in relax.
    by_mode = Counter({mode or "relax": 0 for mode in plan.grids})
    for mode, n in plan.grids.items():
        by_mode[mode or "relax"] += n
    parts = [f"{n} × {_GOAPI_IMAGINE[mode]} (imagine, {mode})" for mode, n in sorted(by_mode.items()) if n]
    if plan.upscales:
        parts.append(f"{plan.upscales} × {_GOAPI_UPSCALE} (upscale)")
    total = sum(_GOAPI_IMAGINE[mode] * n for mode, n in by_mode.items()) + _GOAPI_UPSCALE * plan.upscales
    text = f"{' + '.join(parts) or '0'} = {total} GoAPI MJ quota, by GoAPI's pricing page (2023-11-01)"
    relax = by_mode.get("relax", 0)
    if relax:
        peak = total + relax * (_GOAPI_IMAGINE_RELAX_PEAK - _GOAPI_IMAGINE["relax"])
        text += f"; {peak} if the relax grids run at peak hours"
    if plan.lookups:
        text += f"; plus up to {plan.lookups} submits looked up first"
    return text
