"""Emulator layer: AceData Cloud's ``/midjourney/*`` endpoints, with bodies shaped like the recorded seeds.

Every long job (imagine, edits, videos) is planned at submit time as timed events, then answered in
one of three ways: at once with ``{"task_id"}`` (``async`` or ``callback_url``), as an ndjson stream
(``accept: application/x-ndjson``), or synchronously when the final event comes due.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import random
import re
import uuid
from typing import Any, cast

from aiohttp import web

from . import _images as images
from ._app import (
    HTTP_URL,
    Handler,
    ProviderSpec,
    bad_request,
    bearer_authorized,
    choice,
    error_response,
    flag,
    json_body,
    number,
    opt_str,
    req_str,
    str_list,
    url_field,
)
from ._faults import stream_faults, task_created
from ._store import STORE_KEY, APIError, Closing, ImageRecord, Store, TaskRecord, VideoRecord

__all__ = ["ENLARGED_ACTIONS", "GRID_ACTIONS", "PROGRESS_STEPS", "UPSCALED_ACTIONS", "provider", "routes"]

JSON = dict[str, Any]

GRID_ACTIONS: tuple[str, ...] = (
    "upscale1", "upscale2", "upscale3", "upscale4", "reroll",
    "variation1", "variation2", "variation3", "variation4",
)  # fmt: skip
UPSCALED_ACTIONS: tuple[str, ...] = (
    "upscale_2x", "upscale_4x", "variation_subtle", "variation_strong", "zoom_out_2x", "zoom_out_1_5x",
    "pan_left", "pan_right", "pan_up", "pan_down",
)  # fmt: skip
#: After `upscale_2x`/`upscale_4x`: the upscaled list without the upscales.
ENLARGED_ACTIONS = tuple(a for a in UPSCALED_ACTIONS if not a.startswith("upscale_"))
#: Progress of the intermediate stream lines; the final line is 100.
PROGRESS_STEPS = (5, 20, 35, 55, 75)

_IMAGE_MODES = ("fast", "relax", "turbo")
_VIDEO_MODES = ("fast", "turbo")
_DEFAULT_TIMEOUT = 480.0
_MAX_PROMPT_IMAGES = 5
_MODERATION = "Sorry! Our AI moderators feel your prompt might be against our community standards."
_NDJSON = "application/x-ndjson"
_ASPECT = re.compile(r"--(?:ar|aspect)\s+(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)")
# A single-dash token is not a Midjourney parameter; the seed's failure callback shows this exact message.
_BAD_ARGUMENT = re.compile(r"(?<!\S)(-[A-Za-z]\w*)(?:\s+([^\s-]\S*))?")
_FAILURE_STATUS = {"bad_request": 400, "forbidden": 403, "timeout": 504}


def provider() -> ProviderSpec:
    """AceData Cloud: Bearer token, JSON POSTs under ``/midjourney/``, `{success, error, trace_id}` errors."""
    return ProviderSpec(
        name="acedata",
        prefix="/midjourney/",
        routes=routes(),
        authorized=bearer_authorized,
        error_response=error_response,
    )


def routes() -> list[tuple[str, Handler]]:
    """Return the AceData routes as ``(path, handler)`` pairs for `make_app`."""
    return [
        ("/midjourney/imagine", imagine),
        ("/midjourney/edits", edits),
        ("/midjourney/videos", videos),
        ("/midjourney/describe", describe),
        ("/midjourney/shorten", shorten),
        ("/midjourney/translate", translate),
        ("/midjourney/seed", seed),
        ("/midjourney/tasks", tasks),
    ]


# --- AceData-specific fields -----------------------------------------------------------------------------


def _mask(body: JSON) -> images.Box | None:
    """Decode and check ``mask`` (base64 of an image, optionally a data URL); None when absent."""
    value = opt_str(body, "mask")
    if value is None:
        return None
    encoded = re.sub(r"\s+", "", value.split(",", 1)[1] if value.startswith("data:") else value)
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("`mask` must be the base64 encoding of an image.") from None
    try:
        box = images.mask_box(data)
    except ValueError:
        raise bad_request("`mask` is not a valid image.") from None
    if box is None:
        raise bad_request("`mask` has no white area to repaint.")
    return box


def _moderate(store: Store, text: str | None) -> None:
    for word in store.settings.banned_words:
        if text and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE):
            raise APIError(403, "forbidden", _MODERATION)


def _check_image_prompt(prompt: str) -> None:
    urls = 0
    for word in prompt.split():
        if not HTTP_URL.match(word):
            break
        urls += 1
    if urls > _MAX_PROMPT_IMAGES:
        raise bad_request(f"A prompt may start with at most {_MAX_PROMPT_IMAGES} image URLs, got {urls}.")


def _aspect(prompt: str, default: float) -> float:
    match = _ASPECT.search(prompt)
    if match is None:
        return default
    width, height = float(match[1]), float(match[2])
    if width <= 0 or height <= 0:
        raise bad_request("Invalid value for --ar.")
    return width / height


def _check_delivery(body: JSON) -> None:
    """Validate how the job is to be answered before anything is created."""
    _timeout(body)
    url_field(body, "callback_url")
    flag(body, "async")


def _timeout(body: JSON) -> float:
    timeout = number(body, "timeout", _DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise bad_request("`timeout` must be a number > 0.")
    return timeout


def _application_id(request: web.Request) -> str:
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mjasync-emulator:{token}"))


# --- bodies -------------------------------------------------------------------------------------


def _new_image(
    store: Store, spec: images.Spec, long_side: int, actions: tuple[str, ...], task_id: str, thumb: float
) -> ImageRecord:
    raw = images.dims(spec.aspect, long_side)
    small = images.dims(spec.aspect, max(2, round(long_side * thumb)))
    return store.add_image(ImageRecord(store.new_numeric_id(), spec, raw, small, actions, task_id))


def _image_fields(store: Store, image: ImageRecord) -> JSON:
    url = f"{store.base_url}/images/{image.image_id}.png"
    (tw, th), (rw, rh) = image.thumb, image.raw
    return {
        "image_url": f"{url}?width={tw}&height={th}",
        "image_width": tw,
        "image_height": th,
        "image_id": image.image_id,
        "raw_image_url": url,
        "raw_image_width": rw,
        "raw_image_height": rh,
    }


def _image_bodies(
    store: Store,
    task_id: str,
    spec: images.Spec,
    long_side: int,
    actions: tuple[str, ...],
    *,
    split: bool,
    thumb: float,
    with_actions: bool,
) -> list[JSON]:
    """Return the progress bodies and the final body of an imagine or edits job."""
    sizes = store.settings.image_sizes
    bodies = []
    for progress in PROGRESS_STEPS:
        # Each line gets a new, smaller, blurrier image, like the service's intermediate grids.
        blurry = spec.blurred(1 - progress / 100)
        image = _new_image(store, blurry, round(long_side * sizes.progress_scale), (), task_id, thumb)
        line = {**_image_fields(store, image), "progress": progress}
        if with_actions:
            line["actions"] = []
        bodies.append({**line, "task_id": task_id, "success": True})
    image = _new_image(store, spec, long_side, actions, task_id, thumb)
    final = {**_image_fields(store, image), "progress": 100}
    if with_actions:
        final["actions"] = list(actions)
    if split and spec.is_grid:
        url = f"{store.base_url}/images/{image.image_id}"
        final = {"sub_image_urls": [f"{url}/0_{i}.png" for i in range(4)], **final}
    bodies.append({**final, "task_id": task_id, "success": True})
    return bodies


def _schedule(
    store: Store, request: web.Request, task_id: str, kind: str, body: JSON, mode: str, bodies: list[JSON]
) -> TaskRecord:
    """Plan the job's events on the clock and store its task."""
    prompt = body["prompt"] if isinstance(body.get("prompt"), str) else ""
    failure = _prompt_failure(prompt)
    if failure:
        # One event: the job fails when it would have started, like a worker rejecting the prompt.
        bodies = [
            {"success": False, "task_id": task_id, "error": {"code": "bad_request", "message": failure}}
        ]
    now, events = store.plan(bodies)
    task = TaskRecord(
        task_id, kind, _application_id(request), mode, body, store.new_uuid(), now, events, prompt
    )
    store.add_task(task, submit=True)
    return task


def _prompt_failure(prompt: str) -> str | None:
    bad = [part for match in _BAD_ARGUMENT.finditer(prompt) for part in match.groups() if part]
    return "Unrecognized argument(s): " + ", ".join(f"`{p}`" for p in bad) if bad else None


# --- the three ways to answer a job ---------------------------------------------------------------


async def _answer(request: web.Request, store: Store, task: TaskRecord, body: JSON) -> web.StreamResponse:
    callback_url = url_field(body, "callback_url")
    ndjson = _NDJSON in request.headers.get("Accept", "")
    if callback_url and store.start_soon is not None:
        # With ndjson the callback receives every progress line; otherwise only the final body.
        events = task.events if ndjson else task.events[-1:]
        store.start_soon(functools.partial(store.deliver, callback_url, events))
    # An injected `phase=after` fault answers here instead: the task exists, the client never hears of it.
    task_created(request, task.id, task.trace_id)
    if callback_url or flag(body, "async"):
        return web.json_response({"task_id": task.id})
    if ndjson:
        return await _stream(request, store, task)
    return await _wait(store, task, _timeout(body))


async def _stream(request: web.Request, store: Store, task: TaskRecord) -> web.StreamResponse:
    store.count("streams")
    faults = stream_faults(request, task.id, len(task.events))
    response = web.StreamResponse(headers={"Content-Type": _NDJSON})
    await faults.first_byte()
    await response.prepare(request)
    try:
        for sent, (when, body) in enumerate(task.events):
            if faults.cut(sent):
                return response  # the connection is closing: no final line, no end of the chunked body
            await store.wait_until(when)
            line = json.dumps(body, separators=(",", ":")).encode()
            await response.write(faults.line(sent, line) + b"\n")
    except Closing:
        pass  # shutting down: end the stream cleanly where it is
    except ConnectionResetError:
        return response  # the client left; the job itself carries on regardless
    await response.write_eof()
    return response


async def _wait(store: Store, task: TaskRecord, timeout: float) -> web.Response:
    deadline = store.clock() + timeout
    await store.wait_until(min(task.finished_at, deadline))
    if task.finished_at > deadline:
        store.count("sync_timeouts")
        # The job keeps running and stays retrievable through /midjourney/tasks, by id or trace id.
        return error_response(504, "timeout", "Timeout to generate the image.", trace_id=task.trace_id)
    final = task.final
    if final.get("success") is False:
        error = final["error"]
        status = _FAILURE_STATUS.get(error["code"], 500)
        return error_response(status, error["code"], error["message"], trace_id=task.trace_id)
    return web.json_response(final)


# --- long jobs ----------------------------------------------------------------------------------


async def imagine(request: web.Request) -> web.StreamResponse:
    """POST /midjourney/imagine: generate, and every follow-up action on an earlier image."""
    store = request.app[STORE_KEY]
    body = await json_body(request)
    action = opt_str(body, "action") or "generate"
    prompt = opt_str(body, "prompt") or ""
    mode = choice(body, "mode", _IMAGE_MODES, "fast")
    split = flag(body, "split_images")
    for key in ("translation", "hd", "style_reference", "moodboard"):
        flag(body, key)
    _check_delivery(body)
    _moderate(store, prompt)
    _check_image_prompt(prompt)
    sizes = store.settings.image_sizes
    if action == "generate":
        req_str(body, "prompt", " for action `generate`")
        spec = images.generate(prompt, images.clamp_aspect(_aspect(prompt, 1.0)))
        long_side, actions = sizes.grid, GRID_ACTIONS
    else:
        parent = store.image(req_str(body, "image_id", f" for action `{action}`"))
        spec, long_side, actions = _derive(store, parent, action, body, prompt)
    task_id = store.new_uuid()
    bodies = _image_bodies(
        store, task_id, spec, long_side, actions, split=split, thumb=sizes.thumbnail_scale, with_actions=True
    )
    task = _schedule(store, request, task_id, "imagine", body, mode, bodies)
    return await _answer(request, store, task, body)


_ENLARGE = {"upscale_2x": 2, "upscale_4x": 4}


def _derive(
    store: Store, parent: ImageRecord, action: str, body: JSON, prompt: str
) -> tuple[images.Spec, int, tuple[str, ...]]:
    """Return the recipe, raw size and actions of the image that *action* makes from *parent*."""
    sizes = store.settings.image_sizes
    box = None
    if action == "variation_region":
        # The guide uses it on upscaled images without listing it in their actions.
        if parent.spec.is_grid or not parent.actions:
            raise bad_request("Action `variation_region` needs the image_id of an upscaled image.")
        box = _mask(body)
        if box is None:
            raise bad_request("mask is required for action `variation_region`.")
    elif action not in parent.actions:
        available = ", ".join(parent.actions) or "none"
        raise bad_request(
            f"Action `{action}` is not available for image_id `{parent.image_id}` (available: {available})."
        )
    salt = (store.next_salt(parent.image_id, action), prompt)
    spec = images.follow_up(parent.spec, action, salt, box)
    if action in _ENLARGE:
        return spec, min(max(parent.raw) * _ENLARGE[action], sizes.max_side), ENLARGED_ACTIONS
    if spec.is_grid:
        return spec, sizes.grid, GRID_ACTIONS
    return spec, sizes.upscale, UPSCALED_ACTIONS


async def edits(request: web.Request) -> web.StreamResponse:
    """POST /midjourney/edits: repaint an uploaded image from a prompt (and an optional mask)."""
    store = request.app[STORE_KEY]
    body = await json_body(request)
    image_url = cast(str, url_field(body, "image_url", required=True))
    prompt = opt_str(body, "prompt") or ""
    choice(body, "action", ("generate",), "generate")
    mode = choice(body, "mode", _IMAGE_MODES, "fast")
    split = flag(body, "split_images")
    _check_delivery(body)
    _moderate(store, prompt)
    mask = _mask(body)
    spec = images.generate(f"{image_url} {prompt} {mask}", images.clamp_aspect(_aspect(prompt, 0.8)))
    task_id = store.new_uuid()
    # The edits seed shows thumbnail == raw size and no `actions`; the image still accepts grid actions.
    long_side = store.settings.image_sizes.grid
    bodies = _image_bodies(
        store, task_id, spec, long_side, GRID_ACTIONS, split=split, thumb=1, with_actions=False
    )
    task = _schedule(store, request, task_id, "edits", body, mode, bodies)
    return await _answer(request, store, task, body)


async def videos(request: web.Request) -> web.StreamResponse:
    """POST /midjourney/videos: animate an image (`generate`) or continue a video (`extend`)."""
    store = request.app[STORE_KEY]
    body = await json_body(request)
    action = choice(body, "action", ("generate", "extend"), "generate")
    mode = body.get("mode")
    if mode == "relax":
        raise bad_request("Videos do not support the `relax` mode; use `fast` or `turbo`.")
    mode = choice(body, "mode", _VIDEO_MODES, "fast")
    choice(body, "resolution", ("480p", "720p"), "720p")
    flag(body, "loop")
    url_field(body, "end_image_url")
    _check_delivery(body)
    prompt = opt_str(body, "prompt") or ""
    _moderate(store, prompt)
    task_id = store.new_uuid()
    if action == "generate":
        image_url = cast(str, url_field(body, "image_url", required=True))
        size = store.settings.image_sizes.video_cover
        cover = _new_image(store, images.cover(image_url), size, (), task_id, 1.0)
    else:
        source_id = req_str(body, "video_id", " for action `extend`")
        index = number(body, "video_index", 0, integer=True)
        source = store.videos.get(source_id)
        if source is None:
            raise bad_request(f"The video_id `{source_id}` is not found.")
        if index > source.count - 1:
            raise bad_request(f"`video_index` must be between 0 and {source.count - 1}.")
        cover = source.cover
    video = VideoRecord(store.new_numeric_id(16), cover, task_id)
    store.videos[video.video_id] = video
    fields = _image_fields(store, cover)
    picture = {key: fields[key] for key in ("image_url", "image_width", "image_height")}
    bodies: list[JSON] = [
        {**picture, "progress": progress, "task_id": task_id, "success": True} for progress in PROGRESS_STEPS
    ]
    urls = [f"{store.base_url}/videos/{video.video_id}/0_{i}.mp4" for i in range(video.count)]
    final = {**picture, "progress": 100, "video_id": video.video_id, "video_urls": urls}
    bodies.append({**final, "task_id": task_id, "success": True})
    task = _schedule(store, request, task_id, "videos", body, mode, bodies)
    return await _answer(request, store, task, body)


# --- quick calls --------------------------------------------------------------------------------


async def describe(request: web.Request) -> web.Response:
    """POST /midjourney/describe: four prompt candidates for an image (recorded as a `describe` task)."""
    store = request.app[STORE_KEY]
    body = await json_body(request)
    image_url = cast(str, url_field(body, "image_url", required=True))
    result = {"descriptions": describe_image(image_url)}
    mode = choice(body, "mode", _IMAGE_MODES, "fast")
    now = store.clock()
    app_id, trace_id = _application_id(request), store.new_uuid()
    task = TaskRecord(store.new_uuid(), "describe", app_id, mode, body, trace_id, now, [(now, result)])
    store.add_task(task, submit=False)
    return web.json_response(result)


async def shorten(request: web.Request) -> web.Response:
    """POST /midjourney/shorten: up to five shorter versions of a prompt."""
    return web.json_response({"prompts": shorten_prompt(req_str(await json_body(request), "prompt"))})


async def translate(request: web.Request) -> web.Response:
    """POST /midjourney/translate: a deterministic English rendering of the content."""
    return web.json_response({"content": translate_text(req_str(await json_body(request), "content"))})


async def seed(request: web.Request) -> web.Response:
    """POST /midjourney/seed: the (deterministic) seed behind a generated image."""
    store = request.app[STORE_KEY]
    image = store.image(req_str(await json_body(request), "image_id"))
    return web.json_response({"seed": str(images.digest("seed", image.spec) % 4_294_967_296)})


async def tasks(request: web.Request) -> web.Response:
    """POST /midjourney/tasks: `retrieve` one task record, or `retrieve_batch` several."""
    store = request.app[STORE_KEY]
    body = await json_body(request)
    action = choice(body, "action", ("retrieve", "retrieve_batch"), "retrieve")
    now = store.clock()
    if action == "retrieve":
        task_id, trace_id = opt_str(body, "id"), opt_str(body, "trace_id")
        if not task_id and not trace_id:
            raise bad_request("id or trace_id is required for action `retrieve`.")
        found = (
            store.find_tasks([task_id]) if task_id else store.find_tasks([cast(str, trace_id)], by_trace=True)
        )
        if not found:
            raise bad_request(f"The task `{task_id or trace_id}` is not found.")
        return web.json_response(found[0].snapshot(now))
    ids, trace_ids = str_list(body, "ids"), str_list(body, "trace_ids")
    if ids is not None or trace_ids is not None:
        # Explicit ids: every one that exists, in order, without paging.
        chosen = store.find_tasks(ids or []) + store.find_tasks(trace_ids or [], by_trace=True)
        unique = list({task.id: task for task in chosen}.values())
        return web.json_response({"items": [t.snapshot(now) for t in unique], "count": len(unique)})
    offset = int(number(body, "offset", 0, integer=True))
    limit = int(number(body, "limit", 12, integer=True))
    kind = opt_str(body, "type")
    low = number(body, "created_at_min", float("-inf"), minimum=float("-inf"))
    high = number(body, "created_at_max", float("inf"), minimum=float("-inf"))
    matching = [
        t
        for t in sorted(store.tasks.values(), key=lambda t: t.created_at, reverse=True)
        if (kind is None or t.type == kind) and low <= t.created_at <= high
    ]
    page = matching[offset : offset + limit]
    return web.json_response({"items": [t.snapshot(now) for t in page], "count": len(matching)})


# --- deterministic text for describe, shorten and translate ----------------------------------------

_SUBJECTS = ("a lone lighthouse", "a red fox", "a glass greenhouse", "an old sailing ship", "a neon street")
_STYLES = ("soft watercolor", "cinematic lighting", "isometric 3d render", "oil on canvas", "studio photo")
_MOODS = (
    "calm morning haze",
    "dramatic storm clouds",
    "warm golden hour",
    "pastel colors",
    "moody blue tones",
)
_RATIOS = ("1:1", "4:3", "3:2", "16:9", "2:3", "4:5")
_GLOSSARY = {
    "精致": "exquisite", "无暇": "flawless", "洁白": "pure white", "天使": "angel", "一只": "a",
    "猫": "cat", "狗": "dog", "坐在": "sitting on", "桌子": "table", "美丽": "beautiful", "日落": "sunset",
    "风景": "landscape", "画": "painting", "城市": "city", "夜晚": "night", "山": "mountain", "海": "sea",
    "女孩": "girl", "花": "flower", "森林": "forest", "汽车": "car", "火山": "volcano", "可爱": "cute",
    "的": "", "上": "", "在": "in",
}  # fmt: skip
_CJK_PUNCTUATION = re.compile(r"[，、；,;]")


def describe_image(image_url: str) -> list[str]:
    """Return four prompt candidates for an image, each ending with its ``--ar W:H``."""
    rng = random.Random(images.digest("describe", image_url))
    ratio = rng.choice(_RATIOS)
    return [
        f"{rng.choice(_SUBJECTS)}, {rng.choice(_STYLES)}, {rng.choice(_MOODS)} --ar {ratio}" for _ in range(4)
    ]


def shorten_prompt(prompt: str) -> list[str]:
    """Return up to five progressively shorter versions of *prompt*, keeping its ``--`` parameters."""
    text, _, params = prompt.partition(" --")
    params = f" --{params}" if params else ""
    words = text.replace(",", " ").split() or [text.strip()]
    shorter: list[str] = []
    for share in (1.0, 0.8, 0.6, 0.4, 0.2):
        candidate = " ".join(words[: max(1, round(len(words) * share))]) + params
        if candidate not in shorter:
            shorter.append(candidate)
    return shorter


def translate_text(content: str) -> str:
    """Return an English rendering: ASCII text unchanged, Chinese through a small glossary."""
    if content.isascii():
        return content.strip()
    clauses = []
    for clause in _CJK_PUNCTUATION.split(content.strip().rstrip("。.!！")):
        words = []
        for run in re.findall(r"[\x00-\x7f]+|[^\x00-\x7f]+", clause):
            i = 0
            while i < len(run) and not run.isascii():
                # Longest glossary match first; unknown characters are dropped.
                size = next((n for n in (2, 1) if run[i : i + n] in _GLOSSARY), 0)
                words.append(_GLOSSARY[run[i : i + size]] if size else "")
                i += size or 1
            if run.isascii():
                words.append(run.strip())
        clauses.append(" ".join(" ".join(words).split()) or "something")
    text = ", ".join(clauses)
    return text[:1].upper() + text[1:] + "."
