"""Emulator layer: midjourney-proxy Task objects, their timeline on the clock, their buttons and images.

A task is planned when it is submitted (a MODAL task: when its modal is submitted), as steps on the
emulator's clock. It starts when a slot of its key's concurrency limit is free (``s``; ``s = t0``
without a limit) and ``q = speed x queue_fraction``:

    NOT_START      SUBMITTED "0%"   IN_PROGRESS "15%" ... "93%" (previews)   SUCCESS "100%" | FAILURE ""
    t0 ........... s + q/2 ........ s + q ... evenly spread ...              s + speed      | s + q

A MODAL task shows ``MODAL`` (progress null) instead of ``NOT_START`` and keeps it until its modal has
been submitted and a slot picks it up, as trueai does. `ProxyTask.render(i)` is the Task object during
step *i* and `snapshot(now)` the one current at *now*; a notifyHook POST carries the render of the step
it announces, so fetch, the lists and the callbacks always agree.

The Task object has the fields of midjourney-proxy-api.md §5.1 plus ``buttons`` (§5.4; ``[]`` until the
task succeeds) and, for a follow-up, trueai's ``parentId`` (§10.7). ``failReason`` is null until the end,
``""`` on success (as trueai's success example) and the reason on failure. ``properties`` always hold
``discordInstanceId``, ``botType`` and ``nonce`` (and ``notifyHook`` when one was given, as NZ and TA
expose it); ``finalPrompt``, ``progressMessageId`` and ``messageHash`` appear once the bot shows the job
(IN_PROGRESS), ``messageId`` on success (§5.6).
"""

from __future__ import annotations

import math
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _images as images
from ._store import ImageRecord, Store

__all__ = [
    "ACTIVE_STATUSES",
    "GRID_PROGRESS",
    "INSTANCE_ID",
    "NOTIFIED_STATUSES",
    "QUICK_PROGRESS",
    "Button",
    "Op",
    "Outcome",
    "ProxyTask",
    "Step",
    "describe_buttons",
    "grid_buttons",
    "launch",
    "new_task_id",
    "numbered",
    "shorten_buttons",
    "snowflake",
    "upscaled_buttons",
    "version_of",
]

JSON = dict[str, Any]

#: The account ("Discord instance") every task runs on; one fake channel id (§10.1's).
INSTANCE_ID = "1118138338562560102"
#: Progress texts of a job that paints a grid: the steps Discord shows (§5.1).
GRID_PROGRESS = ("15%", "31%", "46%", "62%", "78%", "93%")
#: An upscale shows one progress step and no preview.
QUICK_PROGRESS = ("50%",)
#: Statuses a notifyHook is POSTed for (§7: never on creation, never for MODAL).
NOTIFIED_STATUSES = frozenset({"SUBMITTED", "IN_PROGRESS", "SUCCESS", "FAILURE"})
#: Statuses of a task that is queued or running (what ``/mj/task/queue`` lists).
ACTIVE_STATUSES = frozenset({"NOT_START", "SUBMITTED", "IN_PROGRESS"})
_TERMINAL = frozenset({"SUCCESS", "FAILURE"})
_KEYCAPS = ("1\ufe0f\u20e3", "2\ufe0f\u20e3", "3\ufe0f\u20e3", "4\ufe0f\u20e3", "5\ufe0f\u20e3")
_VERSION = re.compile(r"(?<!\S)--(?:v|version|niji)\s+(\d+(?:\.\d+)?)")


def new_task_id(store: Store) -> str:
    """A fresh task id as the proxies make them: epoch milliseconds and three random digits (§1)."""
    while True:
        task_id = f"{int(store.clock() * 1000):013d}{secrets.randbelow(1000):03d}"
        if task_id not in store.proxy_tasks:
            return task_id


def numbered(options: Sequence[str]) -> str:
    """The bot's numbered list of prompts: ``1️⃣ first\\n\\n2️⃣ second...`` (§10.5)."""
    return "\n\n".join(f"{_KEYCAPS[n]} {text}" for n, text in enumerate(options))


# --- buttons ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """What pressing a button makes (or what a ``/submit/change`` asks for).

    ``kind`` is one of: ``upscale`` (*index*), ``variation`` (*index*), ``reroll``, ``vary`` (*arg*
    subtle or strong), ``inpaint``, ``zoom`` (*factor*), ``custom_zoom``, ``pan`` (*arg* a direction),
    ``upscale_hd`` (*factor*), ``pick`` (*index*: imagine the describe/shorten option), ``redescribe``.
    """

    kind: str
    #: The Task ``action`` of the task it creates.
    action: str
    index: int = 0
    arg: str = ""
    factor: float = 0.0
    #: Always needs the modal step (Vary Region, Custom Zoom, picking a describe/shorten option).
    modal: bool = False
    #: Needs the modal step when the submit asks for remix (``enableRemix``).
    remixable: bool = False


@dataclass(frozen=True)
class Button:
    """One ``buttons[]`` entry (§5.4, §5.5) and what pressing it does."""

    custom_id: str
    label: str
    emoji: str
    op: Op

    def render(self) -> JSON:
        """The button as the Task shows it: type 2 is a Discord button, style 2 its grey one."""
        return {"customId": self.custom_id, "emoji": self.emoji, "label": self.label, "type": 2, "style": 2}


def grid_buttons(job_hash: str) -> list[Button]:
    """U1-U4, re-roll, V1-V4 of a grid, in §10.3's order."""
    buttons = [
        Button(f"MJ::JOB::upsample::{i}::{job_hash}", f"U{i}", "", Op("upscale", "UPSCALE", index=i))
        for i in range(1, 5)
    ]
    buttons.append(
        Button(f"MJ::JOB::reroll::0::{job_hash}::SOLO", "", "🔄", Op("reroll", "REROLL", remixable=True))
    )
    buttons += [
        Button(
            f"MJ::JOB::variation::{i}::{job_hash}",
            f"V{i}",
            "",
            Op("variation", "VARIATION", i, remixable=True),
        )
        for i in range(1, 5)
    ]
    return buttons


def _upscale_names(version: str) -> list[tuple[str, str, float]]:
    """The two upscale buttons of an upscaled image of Midjourney *version* (§5.5): (name, label, factor)."""
    if version == "v5":
        return [("upsample_v5_2x", "Upscale (2x)", 2.0), ("upsample_v5_4x", "Upscale (4x)", 4.0)]
    return [
        (f"upsample_{version}_2x_subtle", "Upscale (Subtle)", 2.0),
        (f"upsample_{version}_2x_creative", "Upscale (Creative)", 2.0),
    ]


def version_of(prompt: str) -> str:
    """Which upscale buttons a job's images get: ``v5``, ``v6``, ``v6r1`` or ``v7`` (the default)."""
    match = _VERSION.search(prompt)
    number = float(match[1]) if match else 7.0
    if number < 6:
        return "v5"
    if number < 6.1:
        return "v6"
    return "v6r1" if number < 7 else "v7"


def upscaled_buttons(job_hash: str, version: str, *, enlarged: bool = False) -> list[Button]:
    """The buttons of an upscaled image (§10.3's v6.1 list); an image already enlarged 2x/4x has no upscales."""
    buttons = []
    if not enlarged:
        buttons += [
            Button(
                f"MJ::JOB::{name}::1::{job_hash}::SOLO",
                label,
                "upscale_1",
                Op("upscale_hd", "UPSCALE", factor=f),
            )
            for name, label, f in _upscale_names(version)
        ]
    buttons += [
        Button(f"MJ::JOB::low_variation::1::{job_hash}::SOLO", "Vary (Subtle)", "🪄", Op("vary", "VARIATION", arg="subtle", remixable=True)),
        Button(f"MJ::JOB::high_variation::1::{job_hash}::SOLO", "Vary (Strong)", "🪄", Op("vary", "VARIATION", arg="strong", remixable=True)),
        Button(f"MJ::Inpaint::1::{job_hash}::SOLO", "Vary (Region)", "🖌️", Op("inpaint", "VARIATION", modal=True)),
        Button(f"MJ::Outpaint::50::1::{job_hash}::SOLO", "Zoom Out 2x", "🔍", Op("zoom", "ZOOM", factor=2.0)),
        Button(f"MJ::Outpaint::75::1::{job_hash}::SOLO", "Zoom Out 1.5x", "🔍", Op("zoom", "ZOOM", factor=1.5)),
        Button(f"MJ::CustomZoom::{job_hash}", "Custom Zoom", "🔍", Op("custom_zoom", "ZOOM", modal=True)),
    ]  # fmt: skip
    arrows = {"left": "⬅️", "right": "➡️", "up": "⬆️", "down": "⬇️"}
    buttons += [
        Button(f"MJ::JOB::pan_{d}::1::{job_hash}::SOLO", "", arrow, Op("pan", "PAN", arg=d, remixable=True))
        for d, arrow in arrows.items()
    ]
    return buttons


def describe_buttons(count: int) -> list[Button]:
    """1️⃣-4️⃣ (imagine that prompt, through the modal) and retry, on a describe result (§5.5)."""
    buttons = [
        Button(f"MJ::Job::PicReader::{n}", "", _KEYCAPS[n - 1], Op("pick", "IMAGINE", index=n, modal=True))
        for n in range(1, count + 1)
    ]
    buttons.append(Button("MJ::Picread::Retry", "", "🔄", Op("redescribe", "DESCRIBE")))
    return buttons


def shorten_buttons(count: int) -> list[Button]:
    """1️⃣-5️⃣ on a shorten result: imagine that shorter prompt, through the modal (PL, §5.5)."""
    return [
        Button(
            f"MJ::Job::PromptAnalyzer::{n}", "", _KEYCAPS[n - 1], Op("pick", "IMAGINE", index=n, modal=True)
        )
        for n in range(1, count + 1)
    ]


# --- tasks ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One state of a task: from `at` on it has this status, progress text and image URL."""

    at: float
    status: str
    progress: str | None = None
    image_url: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a job makes: a picture (grid or single), a text (describe, shorten), or a failure.

    ``buttons`` names the result's buttons: ``grid``, ``upscaled``, ``enlarged``, ``describe``,
    ``shorten`` or ``none``.
    """

    spec: images.Spec | None = None
    long_side: int = 0
    buttons: str = "none"
    #: Describe/shorten: the options the result lists (its text is `numbered(options)`).
    options: tuple[str, ...] = ()
    fail_reason: str | None = None


@dataclass
class ProxyTask:
    """A midjourney-proxy job: what was asked, its planned steps and, once it succeeds, its result."""

    id: str
    action: str
    #: The credential its concurrency slots count against (never shown).
    key: str
    created: float
    description: str
    prompt: str | None
    prompt_en: str | None
    state: str | None
    #: The submitted `prompt` field ("" without one), which `tasks_per_prompt` counts.
    billing_prompt: str
    #: Properties shown at every step (discordInstanceId, botType, nonce, notifyHook).
    properties: JSON
    steps: list[Step]
    #: The prompt as the bot echoes it (``finalPrompt``), shown from IN_PROGRESS on.
    final_prompt: str | None = None
    parent_id: str | None = None
    notify_hook: str | None = None
    #: Which upscale buttons its images get (`version_of`).
    version: str = "v7"
    #: The result picture, what follow-ups start from.
    image: ImageRecord | None = None
    #: The describe/shorten options (PicReader/PromptAnalyzer pick them by number).
    options: tuple[str, ...] = ()
    #: The picture a describe looked at (a retry describes it again).
    source: str = ""
    buttons: list[Button] = field(default_factory=list)
    fail_reason: str | None = None
    #: MODAL: what the modal submit will run, and the task whose picture it starts from.
    pending: Op | None = None
    pending_parent: ProxyTask | None = None
    #: When it holds a slot of its key's concurrency limit: [slot_start, slot_end).
    slot_start: float = math.inf
    slot_end: float = math.inf
    job_hash: str = field(default_factory=lambda: str(uuid.uuid4()))
    message_id: str = field(default_factory=lambda: snowflake())
    progress_message_id: str = field(default_factory=lambda: snowflake())

    @property
    def finished_at(self) -> float:
        """When it ends (SUCCESS or FAILURE); infinity while a MODAL task waits for its modal."""
        last = self.steps[-1]
        return last.at if last.status in _TERMINAL else math.inf

    def index_at(self, now: float) -> int:
        """The index of the step current at *now* (the first one before anything happened)."""
        current = 0
        for index, step in enumerate(self.steps):
            if step.at > now:
                break
            current = index
        return current

    def status_at(self, now: float) -> str:
        """The status at *now*."""
        return self.steps[self.index_at(now)].status

    def snapshot(self, now: float) -> JSON:
        """The Task object fetch shows at *now*."""
        return self.render(self.index_at(now))

    def ops(self) -> dict[str, Op]:
        """What each of its buttons does, by customId."""
        return {button.custom_id: button.op for button in self.buttons}

    def render(self, index: int) -> JSON:
        """The Task object (§5) during step *index*."""
        step = self.steps[index]
        started = next((s.at for s in self.steps[: index + 1] if s.status == "SUBMITTED"), None)
        properties = dict(self.properties)
        prompt, prompt_en = self.prompt, self.prompt_en
        fail_reason: str | None = None
        if step.status == "MODAL":
            properties["finalPrompt"] = self.final_prompt
        if step.status == "IN_PROGRESS":
            properties.update(
                finalPrompt=self.final_prompt,
                progressMessageId=self.progress_message_id,
                messageHash=self.job_hash,
            )
        elif step.status == "SUCCESS":
            fail_reason = ""
            if self.options:
                # Describe and shorten: the bot's text is the result (for describe, the prompt too).
                text = numbered(self.options)
                properties["finalPrompt"] = text
                if self.action == "DESCRIBE":
                    prompt = prompt_en = text
            else:
                properties["finalPrompt"] = self.final_prompt
            properties["messageId"] = self.message_id
            if self.image is not None and self.action not in ("DESCRIBE", "SHORTEN"):
                properties["messageHash"] = self.job_hash
        elif step.status == "FAILURE":
            fail_reason = self.fail_reason
        body: JSON = {
            "id": self.id,
            "action": self.action,
            "status": step.status,
            "prompt": prompt,
            "promptEn": prompt_en,
            "description": self.description,
            "state": self.state,
            "submitTime": _ms(self.created),
            "startTime": None if started is None else _ms(started),
            "finishTime": _ms(step.at) if step.status in _TERMINAL else None,
            "imageUrl": step.image_url,
            "progress": step.progress,
            "failReason": fail_reason,
            "properties": properties,
            "buttons": [b.render() for b in self.buttons] if step.status == "SUCCESS" else [],
        }
        if self.parent_id is not None:
            body["parentId"] = self.parent_id
        return body


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def snowflake() -> str:
    """A Discord-like 19-digit id."""
    return str(10**18 + secrets.randbelow(9 * 10**18))


# --- planning -------------------------------------------------------------------------------------


def launch(store: Store, task: ProxyTask, outcome: Outcome, start: float) -> int:
    """Plan *task*'s run from *start* (when its slot is free): its images, steps, buttons and slot.

    The steps are appended to those it has (NOT_START or MODAL). Returns the index of its first new
    step, from which its notifyHook POSTs are due.
    """
    speed = store.settings.speed
    queued = speed * store.settings.queue_fraction
    first = len(task.steps)
    task.steps.append(Step(start + queued / 2, "SUBMITTED", "0%"))
    if outcome.fail_reason is not None:
        task.fail_reason = outcome.fail_reason
        task.steps.append(Step(start + queued, "FAILURE", ""))
        task.slot_start, task.slot_end = start, start + queued
        return first
    progress: list[tuple[str, str | None]] = []
    final_url: str | None = None
    if outcome.spec is not None:
        grid = outcome.spec.is_grid and outcome.buttons == "grid"
        if grid:
            # Midjourney shows ever sharper previews while it paints a grid.
            scale = store.settings.image_sizes.progress_scale
            for text in GRID_PROGRESS:
                blurry = outcome.spec.blurred(1 - int(text[:-1]) / 100)
                preview = _add_image(store, blurry, max(2, round(outcome.long_side * scale)), task.id)
                progress.append((text, _url(store, preview)))
        elif outcome.buttons != "describe":
            progress = [(text, None) for text in QUICK_PROGRESS]
        task.image = _add_image(store, outcome.spec, outcome.long_side, task.id)
        final_url = _url(store, task.image)
    task.options = outcome.options
    task.buttons = _buttons(task, outcome)
    events = [("IN_PROGRESS", text, url) for text, url in progress] + [("SUCCESS", "100%", final_url)]
    begin, end = start + queued, start + speed
    step = (end - begin) / (len(events) - 1) if len(events) > 1 else 0.0
    for k, (status, text, url) in enumerate(events):
        at = end if k == len(events) - 1 else begin + step * k
        task.steps.append(Step(at, status, text, url))
    task.slot_start, task.slot_end = start, end
    return first


def _buttons(task: ProxyTask, outcome: Outcome) -> list[Button]:
    kind = outcome.buttons
    if kind == "grid":
        return grid_buttons(task.job_hash)
    if kind in ("upscaled", "enlarged"):
        return upscaled_buttons(task.job_hash, task.version, enlarged=kind == "enlarged")
    if kind == "describe":
        return describe_buttons(len(outcome.options))
    if kind == "shorten":
        return shorten_buttons(len(outcome.options))
    return []


def _add_image(store: Store, spec: images.Spec, long_side: int, task_id: str) -> ImageRecord:
    raw = images.dims(spec.aspect, long_side)
    # No AceData actions: a proxy picture cannot be continued through AceData's image_id.
    return store.add_image(ImageRecord(store.new_numeric_id(), spec, raw, raw, (), task_id))


def _url(store: Store, image: ImageRecord) -> str:
    return f"{store.base_url}/images/{image.image_id}.png"
