"""Emulator layer: GoAPI v2 task records, their timeline on the clock, their images and their webhooks.

A task is planned when it is submitted, as phases on the emulator's clock (q = speed x queue_fraction):

    pending    staged       processing, task_progress 20 40 60 80     finished (or failed)
    t0 ------- t0 + q/2 --- t0 + q ... evenly spread ...              t0 + speed

`GoapiTask.render(i)` is the task object of phase *i* and `snapshot(now)` that of the phase current at
*now*; a webhook carries the render of the phase it announces, so fetch, multi_fetch and webhooks agree.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import _images as images
from ._store import Closing, ImageRecord, Store

__all__ = [
    "GRID_ACTIONS",
    "PROGRESS_STEPS",
    "QUICK_STEPS",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_RETRY_DELAY",
    "GoapiTask",
    "Phase",
    "describe_prompts",
    "frame",
    "image_result",
    "plan",
    "schedule_webhooks",
    "upscaled_actions",
    "with_aspect",
]

JSON = dict[str, Any]

#: The actions of a 2x2 grid, in the order of goapi-api.md §2.3's example.
GRID_ACTIONS = (
    "reroll", "upscale1", "upscale2", "upscale3", "upscale4",
    "variation1", "variation2", "variation3", "variation4",
)  # fmt: skip
#: task_progress of the processing phases of a job that paints a grid; finished is 100.
PROGRESS_STEPS = (20, 40, 60, 80)
#: Jobs without preview images (upscale, describe, seed) show one processing phase.
QUICK_STEPS = (50,)
#: Every webhook is tried this many times in all; only a 2xx answer counts as delivered.
WEBHOOK_ATTEMPTS = 3
#: Clock seconds between the start of one attempt and the next.
WEBHOOK_RETRY_DELAY = 5.0

_QUEUED = ("pending", "staged")
_TERMINAL = ("finished", "failed")


@dataclass(frozen=True)
class Phase:
    """One state of a task: from `at` on it has this status, progress and intermediate images."""

    at: float
    status: str
    progress: int = 0
    previews: tuple[str, ...] = ()


@dataclass
class GoapiTask:
    """A GoAPI job: what was asked, its planned phases and, once finished, its result."""

    id: str
    task_type: str
    mode: str
    #: The submit body as received, minus `webhook_secret` (fetch needs no key, so it must not leak).
    request: JSON
    #: The resolved parameters (`meta.task_param`).
    params: JSON
    origin_task_id: str
    #: The prompt the job ran with; follow-ups without a prompt reuse it.
    prompt: str
    #: The submitted `prompt` field ("" without one), which `tasks_per_prompt` counts.
    billing_prompt: str
    phases: list[Phase]
    #: task_result fields of the finished task (image URLs, actions, seed, quota_used...).
    result: JSON
    error: str | None = None
    image: ImageRecord | None = None
    actions: tuple[str, ...] = ()

    @property
    def finished_at(self) -> float:
        """When it ends (finished or failed): its last phase."""
        return self.phases[-1].at

    def index_at(self, now: float) -> int:
        """Return the index of the phase current at *now* (the first one before it starts)."""
        current = 0
        for index, phase in enumerate(self.phases):
            if phase.at > now:
                break
            current = index
        return current

    def status_at(self, now: float) -> str:
        """Return the status at *now*."""
        return self.phases[self.index_at(now)].status

    def snapshot(self, now: float) -> JSON:
        """Return the task object fetch shows at *now*."""
        return self.render(self.index_at(now))

    def render(self, index: int) -> JSON:
        """Return the task object (goapi-api.md §2.3) as it is during phase *index*."""
        phase = self.phases[index]
        start = next(i for i, p in enumerate(self.phases) if p.status not in _QUEUED)
        started_at = int(self.phases[start].at) if index >= start else 0
        ended_at = int(phase.at) if phase.status in _TERMINAL else 0
        result: JSON = {
            "discord_image_url": "",
            # While processing, the newest preview stands in for the result.
            "image_url": phase.previews[-1] if phase.previews else "",
            "image_urls": [],
            "permanent_url": "",
            "task_progress": phase.progress,
            "intermediate_image_urls": list(phase.previews),
            "image_id": "",
            "seed": "",
            "result_message_id": "",
            "quota_used": 0,
            "credit": 0,
            "message": "",
            "error_messages": [],
            "need_retry": False,
            "actions": [],
        }
        if phase.status == "finished":
            result.update(self.result)
        elif phase.status == "failed":
            result["error_messages"] = [self.error or "task failed"]
        return {
            "task_id": self.id,
            "status": phase.status,
            # The doc's example: process_time == ended_at - started_at.
            "process_time": ended_at - started_at if ended_at else 0,
            "retry_count": 0,
            "meta": {
                "created_at": int(self.phases[0].at),
                "started_at": started_at,
                "ended_at": ended_at,
                "process_mode": self.mode,
                "task_request": self.request,
                "task_param": self.params,
                "task_type": self.task_type,
                "origin_task_id": self.origin_task_id,
            },
            "task_result": result,
        }


def plan(store: Store, steps: Sequence[tuple[int, tuple[str, ...]]], *, failed: bool) -> list[Phase]:
    """Lay out a job's phases from now: pending, staged, then *steps* (progress, previews) and the end.

    A failed job ends when it would have started processing, like a rejected prompt.
    """
    if failed:
        bodies: list[JSON] = [{"status": "failed", "progress": 0, "previews": ()}]
    else:
        bodies = [{"status": "processing", "progress": p, "previews": urls} for p, urls in steps]
        bodies.append({"status": "finished", "progress": 100, "previews": steps[-1][1] if steps else ()})
    created, events = store.plan(bodies)
    started = events[0][0]
    phases = [Phase(created, "pending"), Phase((created + started) / 2, "staged")]
    phases += [Phase(at, body["status"], body["progress"], body["previews"]) for at, body in events]
    return phases


# --- images ---------------------------------------------------------------------------------------


def _add_image(store: Store, spec: images.Spec, long_side: int, task_id: str) -> ImageRecord:
    raw = images.dims(spec.aspect, long_side)
    # No AceData actions: a GoAPI picture cannot be continued through AceData's image_id.
    return store.add_image(ImageRecord(store.new_numeric_id(), spec, raw, raw, (), task_id))


def image_result(
    store: Store,
    task_id: str,
    spec: images.Spec,
    long_side: int,
    actions: tuple[str, ...],
    *,
    previews: bool,
) -> tuple[ImageRecord, list[tuple[int, tuple[str, ...]]], JSON]:
    """Create a job's images: the result, and blurry previews when *previews* (grids only).

    Returns the result image, the processing steps ``(task_progress, previews so far)`` and the
    finished task_result fields.
    """
    base = store.base_url
    steps: list[tuple[int, tuple[str, ...]]] = []
    if previews:
        scale = store.settings.image_sizes.progress_scale
        urls: list[str] = []
        for progress in PROGRESS_STEPS:
            blurry = spec.blurred(1 - progress / 100)
            preview = _add_image(store, blurry, max(2, round(long_side * scale)), task_id)
            urls.append(f"{base}/images/{preview.image_id}.png")
            steps.append((progress, tuple(urls)))
    else:
        steps = [(progress, ()) for progress in QUICK_STEPS]
    image = _add_image(store, spec, long_side, task_id)
    url = f"{base}/images/{image.image_id}.png"
    result: JSON = {
        # The emulator has no Discord: the bot's URL is the same CDN picture.
        "discord_image_url": url,
        "image_url": url,
        # "Four image urls split from the origin image": a grid's quadrants; none for a single image.
        "image_urls": [f"{base}/images/{image.image_id}/0_{i}.png" for i in range(4)] if spec.is_grid else [],
        "image_id": store.new_uuid(),
        "result_message_id": store.new_numeric_id(19),
        "task_progress": 100,
        "actions": list(actions),
    }
    return image, steps, result


def upscaled_actions(aspect: float) -> tuple[str, ...]:
    """Return the actions of an upscaled image; "Make Square" (`outpaint_1x`) only when it is not square."""
    square = () if abs(aspect - 1.0) < 1e-6 else ("outpaint_1x",)
    return (
        "high_variation", "low_variation", "inpaint", "upscale_2x", "upscale_4x",
        "outpaint_1.5x", "outpaint_2x", "outpaint_custom", *square,
        "pan_up", "pan_down", "pan_left", "pan_right",
    )  # fmt: skip


def with_aspect(spec: images.Spec, aspect: float) -> images.Spec:
    """Return *spec* with every panel reshaped to *aspect*."""
    return images.Spec(tuple(replace(panel, aspect=aspect) for panel in spec.panels), spec.blur)


def frame(scene: images.Scene, zoom: float, aspect: float, salt: object) -> images.Spec:
    """Return a grid of canvases of *aspect*, each with *scene* centred and shrunk by *zoom* (outpaint)."""
    fit = min(aspect / scene.aspect, 1.0)  # scale that makes the old picture fit the new canvas
    width, height = scene.aspect * fit / zoom / aspect, fit / zoom
    box = ((1 - width) / 2, (1 - height) / 2, (1 + width) / 2, (1 + height) / 2)
    return images.Spec(
        tuple(
            images.Scene(
                images.digest(scene, salt, "outpaint", i), scene.hue, aspect, inner=scene, inner_box=box
            )
            for i in range(4)
        )
    )


_SUBJECTS = ("a paper boat", "a quiet harbour", "a copper robot", "a field of tulips", "a mountain cabin")
_STYLES = ("gouache illustration", "35mm film photo", "low poly render", "ink wash painting", "pixel art")
_LIGHT = ("soft morning light", "neon glow", "overcast sky", "candlelight", "golden hour")
_RATIOS = ("1:1", "3:2", "2:3", "16:9", "4:5")


def describe_prompts(image_url: str) -> list[str]:
    """Return four deterministic prompt candidates for an image, each ending with its ``--ar``."""
    rng = random.Random(images.digest("goapi-describe", image_url))
    ratio = rng.choice(_RATIOS)
    return [
        f"{rng.choice(_SUBJECTS)}, {rng.choice(_STYLES)}, {rng.choice(_LIGHT)} --ar {ratio}" for _ in range(4)
    ]


# --- webhooks -------------------------------------------------------------------------------------


def schedule_webhooks(store: Store, task: GoapiTask, url: str, secret: str, *, progress: bool) -> None:
    """Start delivering *task*'s webhooks: its end, and with *progress* every processing phase too."""
    if store.start_soon is None:
        return
    wanted = [
        index
        for index, phase in enumerate(task.phases)
        if phase.status in _TERMINAL or (progress and phase.status == "processing")
    ]
    store.start_soon(functools.partial(_deliver, store, task, url, secret, wanted))


async def _deliver(store: Store, task: GoapiTask, url: str, secret: str, wanted: list[int]) -> None:
    """POST each wanted phase's task object when it comes due, retrying unacknowledged ones; in order."""
    headers = {"x-webhook-secret": secret} if secret else {}
    for index in wanted:
        body = task.render(index)
        due = task.phases[index].at
        try:
            await store.wait_until(due)
        except Closing:
            return
        if store.take_drop():
            continue
        for _ in range(WEBHOOK_ATTEMPTS):
            try:
                await store.wait_until(due)
            except Closing:
                return
            # Timed from the attempt's start, so a test may advance the clock once it sees the POST.
            due = store.clock() + WEBHOOK_RETRY_DELAY
            record = await store.post_callback(url, body, headers=headers)
            if record is None:
                return  # the emulator is stopping
            if record.status is not None and 200 <= record.status < 300:
                break
        else:
            store.count("webhooks_dropped")
