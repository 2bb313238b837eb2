"""Emulator layer: GoAPI's Midjourney API v2 (``/mj/v2/*``), shaped after seed 003 and goapi-api.md §1-§3.

Every submit answers ``{"task_id", "status": "success", "message": ""}`` and the job then moves through
``pending -> staged -> processing -> finished | failed`` on the emulator's clock (see `_goapi_tasks`);
`fetch` and `multi_fetch` show the task object of goapi-api.md §2.3.

Choices where the docs are silent or loose:

- Errors: every GoAPI error, whatever its status, is ``{"task_id": "", "status": "failed", "message": M}``:
  the submit response's own keys, since clients check ``status == "success"`` and otherwise show
  ``message`` (§2.1, §2.6). 401 says "The API key is incorrect" (the seed's wording).
- Keys: ``X-API-KEY`` (any case) must name an accepted token on every submit. `fetch`/`multi_fetch` also
  work without a key, as many clients rely on (§1), but a key that is sent must be valid.
- Task-level failures (a banned word) answer the submit normally; the task then ends ``failed`` with
  ``task_result.error_messages``: "Banned Prompt: <word>" (GoAPI's open-source prompt checker), or
  Midjourney's moderator text when ``skip_prompt_check`` is true. Failed tasks use no quota.
- Unknown tasks, a parent that is not finished, an action the parent does not offer, a bad index,
  mask, ratio or direction: 400. A follow-up's errors start with "derive from origin task:", the
  prefix of the error seen in the wild (§2.1).
- The task object carries every field §2.3 lists, as the most complete plan shows them
  (`task_progress`, `intermediate_image_urls`, `discord_image_url`, `image_urls`). Not confirmed by
  any doc (§11) but listed there: ``retry_count`` (always 0), ``meta.task_type`` and
  ``meta.origin_task_id``. Times are epoch seconds, 0 until reached (Go's zero value);
  ``process_time = ended_at - started_at``. ``meta.task_request`` never echoes ``webhook_secret``.
  ``quota_used`` follows the pricing table (§5) once finished; reroll is priced like imagine.
- Actions: a grid offers §2.3's list. An upscaled image offers ``high_variation, low_variation,
  inpaint, upscale_2x, upscale_4x, outpaint_1.5x, outpaint_2x, outpaint_custom, [outpaint_1x when not
  square], pan_up, pan_down, pan_left, pan_right`` (names used by community GoAPI code; the seed
  ties vary, Make Square, zoom and pan to upscaled images). A 2x/4x upscale offers none.
- ``index``, ``zoom_ratio`` and ``aspect_ratio`` are strings, as documented. ``""`` counts as absent
  for optional strings (clients send ``"webhook_endpoint": ""``). Follow-ups without ``prompt`` or
  ``aspect_ratio`` keep the parent's. Outpaint needs ``zoom_ratio`` and pan ``direction``.
- Modes: ``process_mode`` relax/fast/turbo wins; "mixed" or none uses ``--relax/--fast/--turbo`` in the
  prompt, else relax. Upscale, variation, reroll, inpaint, outpaint, pan and seed inherit the parent's.
- Describe's four prompts are in ``task_result.message`` as the bot's numbered text and, as the unified
  API names it, ``task_result.description``. Seed takes ``task_id`` (``origin_task_id`` also works) and
  reports ``task_result.seed``. Blend's ``dimension`` is square, portrait (2:3) or landscape (3:2).
- Webhooks go to any http(s) URL (the docs demand port 443 or 80; tests need a local port). The task
  object is POSTed when the task finishes or fails and, with ``notify_progress``, at each processing
  phase, in order, with ``x-webhook-secret`` when a secret was given. An attempt that gets no 2xx (the
  doc asks for 200; any 2xx is taken) or no answer is retried: `WEBHOOK_ATTEMPTS` (3) attempts in all, `WEBHOOK_RETRY_DELAY` (5) clock seconds apart (the
  community's "every 5 seconds, up to 3 attempts", §3.1); then it is dropped and counted in
  ``counters["webhooks_dropped"]``. Every attempt is a `CallbackRecord` and counts in ``callbacks``.
- Every GoAPI submit is billed (describe and seed cost quota too): ``submits``, ``tasks`` and
  ``tasks_per_prompt`` (keyed by the submitted ``prompt``, "" without one) count it as AceData's do.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, cast

from aiohttp import web

from . import _images as images
from ._app import HTTP_URL, Handler, ProviderSpec, bad_request, flag, json_body, opt_str, req_str
from ._goapi_tasks import (
    GRID_ACTIONS,
    QUICK_STEPS,
    GoapiTask,
    describe_prompts,
    frame,
    image_result,
    plan,
    schedule_webhooks,
    upscaled_actions,
    with_aspect,
)
from ._store import STORE_KEY, APIError, ImageRecord, Store

__all__ = ["PREFIX", "authorized", "error_response", "provider", "routes"]

JSON = dict[str, Any]
PREFIX = "/mj/v2/"

_KEYLESS = (f"{PREFIX}fetch", f"{PREFIX}multi_fetch")
_MODES = ("relax", "fast", "turbo")
_IN_PROMPT_MODE = re.compile(r"(?<!\S)--(relax|fast|turbo)(?!\S)")
_ASPECT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
_PROMPT_ASPECT = re.compile(r"--(?:ar|aspect)\s+(\d+(?:\.\d+)?\s*:\s*\d+(?:\.\d+)?)")
_DIMENSIONS = {"square": 1.0, "portrait": 2 / 3, "landscape": 3 / 2}
_DIRECTIONS = ("up", "down", "left", "right")
_MODERATION = "Sorry! Our AI moderators feel your prompt might be against our community standards."
# Pricing (goapi-api.md §5): type 1 by mode, type 2 and 3 flat, upscale 2x/4x by mode.
_TYPE1_QUOTA = {"relax": 3, "fast": 9, "turbo": 20}
_ENLARGE_QUOTA = {2: {"relax": 9, "fast": 18, "turbo": 40}, 4: {"relax": 27, "fast": 54, "turbo": 120}}


def provider() -> ProviderSpec:
    """GoAPI v2: `X-API-KEY` header, JSON POSTs under ``/mj/v2/``, `{task_id, status, message}` errors."""
    return ProviderSpec(
        name="goapi",
        prefix=PREFIX,
        routes=routes(),
        authorized=authorized,
        error_response=error_response,
    )


def routes() -> list[tuple[str, Handler]]:
    """Return the GoAPI routes as ``(path, handler)`` pairs for `make_app`."""
    handlers: dict[str, Handler] = {
        "imagine": imagine,
        "reroll": reroll,
        "upscale": upscale,
        "variation": variation,
        "inpaint": inpaint,
        "outpaint": outpaint,
        "pan": pan,
        "describe": describe,
        "blend": blend,
        "seed": seed,
        "fetch": fetch,
        "multi_fetch": multi_fetch,
    }
    return [(PREFIX + name, handler) for name, handler in handlers.items()]


def authorized(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether `X-API-KEY` names an accepted key (fetch and multi_fetch may also go without one)."""
    key = request.headers.get("X-API-KEY", "").strip()
    if not key:
        return request.path in _KEYLESS
    # No configured tokens means "any key", handy for manual runs.
    return not tokens or key in tokens


def error_response(status: int, _code: str, message: str, *, trace_id: str | None = None) -> web.Response:
    """Return GoAPI's error body: the submit response's keys with status "failed" (no code, no trace id)."""
    del trace_id  # GoAPI's errors carry none
    if status == 401:
        message = "The API key is incorrect"
    return web.json_response({"task_id": "", "status": "failed", "message": message}, status=status)


# --- fields -----------------------------------------------------------------------------------------


def _text(body: JSON, key: str) -> str | None:
    """Return optional string *key*, None when absent or blank."""
    value = opt_str(body, key)
    return value if value and value.strip() else None


def _flag(body: JSON, key: str) -> bool:
    """Return a boolean the docs type as boolean or as string ("true"/"false")."""
    value = body.get(key)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", ""):
        return value.strip().lower() == "true"
    return flag(body, key)


def _ratio(text: str, key: str = "aspect_ratio") -> float:
    match = _ASPECT.match(text)
    if match is None or float(match[1]) <= 0 or float(match[2]) <= 0:
        raise bad_request(f"invalid {key} `{text}`: expected W:H, e.g. 4:3.")
    return images.clamp_aspect(float(match[1]) / float(match[2]))


def _aspect(body: JSON, default: float) -> float:
    value = _text(body, "aspect_ratio")
    return default if value is None else _ratio(value)


def _prompt_aspect(prompt: str) -> float:
    match = _PROMPT_ASPECT.search(prompt)
    return 1.0 if match is None else _ratio(match[1], "--ar")


def _mode(body: JSON, prompt: str) -> str:
    value = body.get("process_mode")
    if value in (None, "", "mixed"):
        in_prompt = _IN_PROMPT_MODE.search(prompt)
        return in_prompt[1] if in_prompt else "relax"
    if value not in _MODES:
        raise bad_request("invalid process_mode: must be one of relax, mixed, fast, turbo.")
    return cast(str, value)


def _webhook(body: JSON) -> tuple[str | None, str, bool]:
    """Return the webhook endpoint (None for none), its secret and `notify_progress`."""
    endpoint = _text(body, "webhook_endpoint")
    if endpoint is not None and not HTTP_URL.match(endpoint):
        raise bad_request("webhook_endpoint must be an http(s) URL.")
    return endpoint, opt_str(body, "webhook_secret") or "", _flag(body, "notify_progress")


def _index(body: JSON, allowed: tuple[str, ...]) -> str:
    value = body.get("index")
    if value is None or value == "":
        raise bad_request("index is required.")
    if value not in allowed:
        raise bad_request(f"invalid index `{value}`: valid values are {', '.join(allowed)} (as strings).")
    return cast(str, value)


def _mask(body: JSON) -> images.Box:
    """Decode ``mask`` (base64 of an image, optionally a data URL) to the box of its white area."""
    value = req_str(body, "mask")
    encoded = re.sub(r"\s+", "", value.split(",", 1)[1] if value.startswith("data:") else value)
    try:
        box = images.mask_box(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise bad_request("mask must be the base64 encoding of an image.") from None
    if box is None:
        raise bad_request("mask has no white area to repaint.")
    return box


def _banned(store: Store, text: str, skip_check: bool) -> str | None:
    """Return the moderation error for *text*, or None when it passes."""
    for word in store.settings.banned_words:
        if re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE):
            return _MODERATION if skip_check else f"Banned Prompt: {word}"
    return None


def _derive_error(message: str) -> APIError:
    return bad_request(f"derive from origin task: {message}")


def _parent(store: Store, body: JSON, *keys: str) -> GoapiTask:
    """Return the finished task named by the first of *keys* present in *body*."""
    key = next((k for k in keys if body.get(k) not in (None, "")), keys[0])
    task_id = req_str(body, key)
    parent = goapi_task(store, task_id)
    if parent is None:
        raise _derive_error(f"task `{task_id}` not found.")
    status = parent.status_at(store.clock())
    if status != "finished":
        raise _derive_error(f"task `{task_id}` is {status}, not finished.")
    return parent


def _offered(parent: GoapiTask, action: str) -> ImageRecord:
    """Check that *parent* offers *action* and return its image."""
    if action not in parent.actions or parent.image is None:
        available = ", ".join(parent.actions) or "none"
        raise _derive_error(
            f"action `{action}` is not available for task `{parent.id}` (available: {available})."
        )
    return parent.image


async def _submit_body(request: web.Request) -> JSON:
    """Read a submit body and check the fields every submit shares, before anything is created."""
    body = await json_body(request)
    _webhook(body)
    _flag(body, "skip_prompt_check")
    _text(body, "prompt")
    return cast(JSON, body)


# --- creating tasks ---------------------------------------------------------------------------------


def _create(
    store: Store,
    body: JSON,
    task_type: str,
    *,
    mode: str,
    prompt: str,
    params: JSON,
    quota: int,
    origin: str = "",
    spec: images.Spec | None = None,
    long_side: int = 0,
    actions: tuple[str, ...] = (),
    extra: JSON | None = None,
) -> web.Response:
    """Plan and store a task (its images too, unless it fails moderation) and answer the submit."""
    endpoint, secret, notify = _webhook(body)
    billing_prompt = _text(body, "prompt") or ""
    error = _banned(store, billing_prompt, _flag(body, "skip_prompt_check"))
    task_id = store.new_uuid()
    image: ImageRecord | None = None
    steps: list[tuple[int, tuple[str, ...]]] = [(QUICK_STEPS[0], ())]
    result: JSON = {"task_progress": 100, "actions": list(actions)}
    if error is None and spec is not None:
        # Midjourney shows previews while it paints a grid; an upscale just appears.
        image, steps, result = image_result(store, task_id, spec, long_side, actions, previews=spec.is_grid)
    result.update(extra or {}, quota_used=quota)
    request = {key: value for key, value in body.items() if key != "webhook_secret"}
    task = GoapiTask(
        task_id,
        task_type,
        mode,
        request,
        {"process_mode": mode, **params},
        origin,
        prompt,
        billing_prompt,
        plan(store, steps, failed=error is not None),
        result,
        error,
        image,
        actions,
    )
    store.add_goapi_task(task)
    if endpoint is not None:
        schedule_webhooks(store, task, endpoint, secret, progress=notify)
    return web.json_response({"task_id": task_id, "status": "success", "message": ""})


def _grid(store: Store) -> int:
    return store.settings.image_sizes.grid


def _salt(store: Store, image: ImageRecord, action: str, prompt: str) -> tuple[int, str]:
    return store.next_salt(image.image_id, action), prompt


async def imagine(request: web.Request) -> web.Response:
    """POST /mj/v2/imagine: a 2x2 grid from `prompt` (seed 003, Imagine)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    prompt = req_str(body, "prompt")
    aspect = _aspect(body, _prompt_aspect(prompt))
    mode = _mode(body, prompt)
    spec = images.generate(prompt, aspect)
    params = {"prompt": prompt, "aspect_ratio": _text(body, "aspect_ratio") or ""}
    return _create(
        store, body, "imagine", mode=mode, prompt=prompt, params=params, quota=_TYPE1_QUOTA[mode],
        spec=spec, long_side=_grid(store), actions=GRID_ACTIONS,
    )  # fmt: skip


async def reroll(request: web.Request) -> web.Response:
    """POST /mj/v2/reroll: a fresh grid for the parent's (or a new) prompt (seed 003, Reroll)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    parent = _parent(store, body, "origin_task_id")
    image = _offered(parent, "reroll")
    prompt = _text(body, "prompt") or parent.prompt
    aspect = _aspect(body, image.spec.aspect)
    spec = images.generate(prompt, aspect, _salt(store, image, "reroll", prompt))
    params = {"prompt": prompt, "aspect_ratio": _text(body, "aspect_ratio") or ""}
    return _create(
        store, body, "reroll", mode=parent.mode, prompt=prompt, params=params,
        quota=_TYPE1_QUOTA[parent.mode], origin=parent.id, spec=spec, long_side=_grid(store),
        actions=GRID_ACTIONS,
    )  # fmt: skip


async def upscale(request: web.Request) -> web.Response:
    """POST /mj/v2/upscale: one grid image (`index` 1-4) or a bigger upscaled one (2x/4x) (seed 003)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    index = _index(body, ("1", "2", "3", "4", "2x", "4x"))
    parent = _parent(store, body, "origin_task_id")
    sizes = store.settings.image_sizes
    if index.endswith("x"):
        factor = int(index[0])
        image = _offered(parent, f"upscale_{index}")
        spec, long_side = image.spec, min(max(image.raw) * factor, sizes.max_side)
        actions: tuple[str, ...] = ()
        quota = _ENLARGE_QUOTA[factor][parent.mode]
    else:
        image = _offered(parent, f"upscale{index}")
        spec, long_side = images.single(image.spec, int(index) - 1), sizes.upscale
        actions, quota = upscaled_actions(spec.aspect), 3
    params = {"index": index}
    return _create(
        store, body, "upscale", mode=parent.mode, prompt=parent.prompt, params=params, quota=quota,
        origin=parent.id, spec=spec, long_side=long_side, actions=actions,
    )  # fmt: skip


_VARY = {"high_variation": "variation_strong", "low_variation": "variation_subtle"}


async def variation(request: web.Request) -> web.Response:
    """POST /mj/v2/variation: V1-V4 of a grid, or high/low variation of an upscaled image (seed 003)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    index = _index(body, ("1", "2", "3", "4", "high_variation", "low_variation"))
    parent = _parent(store, body, "origin_task_id")
    action = index if index in _VARY else f"variation{index}"
    image = _offered(parent, action)
    prompt = _text(body, "prompt") or parent.prompt
    spec = images.follow_up(image.spec, _VARY.get(action, action), _salt(store, image, action, prompt))
    if _text(body, "aspect_ratio") is not None:
        spec = with_aspect(spec, _aspect(body, spec.aspect))
    params = {"index": index, "prompt": prompt, "aspect_ratio": _text(body, "aspect_ratio") or ""}
    return _create(
        store, body, "variation", mode=parent.mode, prompt=prompt, params=params,
        quota=_TYPE1_QUOTA[parent.mode], origin=parent.id, spec=spec, long_side=_grid(store),
        actions=GRID_ACTIONS,
    )  # fmt: skip


async def inpaint(request: web.Request) -> web.Response:
    """POST /mj/v2/inpaint: repaint the `mask`'s white area of an upscaled image (seed 003, Inpaint)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    parent = _parent(store, body, "origin_task_id")
    image = _offered(parent, "inpaint")
    box = _mask(body)
    prompt = _text(body, "prompt") or parent.prompt
    spec = images.region(image.spec.panels[0], box, _salt(store, image, "inpaint", prompt))
    params = {"prompt": prompt}
    return _create(
        store, body, "inpaint", mode=parent.mode, prompt=prompt, params=params,
        quota=_TYPE1_QUOTA[parent.mode], origin=parent.id, spec=spec, long_side=_grid(store),
        actions=GRID_ACTIONS,
    )  # fmt: skip


async def outpaint(request: web.Request) -> web.Response:
    """POST /mj/v2/outpaint: zoom out 1.5x/2x, make square (1) or a custom zoom in (1, 2] (seed 003)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    raw = body.get("zoom_ratio")
    if raw is None or raw == "":
        raise bad_request("zoom_ratio is required.")
    try:
        zoom = float(raw) if isinstance(raw, str) else float("nan")
    except ValueError:
        zoom = float("nan")
    if not 1 <= zoom <= 2:
        raise bad_request(f"invalid zoom_ratio `{raw}`: a string, 1 (make square) or a number in (1, 2].")
    parent = _parent(store, body, "origin_task_id")
    action = {1.0: "outpaint_1x", 1.5: "outpaint_1.5x", 2.0: "outpaint_2x"}.get(zoom, "outpaint_custom")
    image = _offered(parent, action)
    scene = image.spec.panels[0]
    aspect = 1.0 if action == "outpaint_1x" else _aspect(body, scene.aspect)
    prompt = _text(body, "prompt") or parent.prompt
    spec = frame(scene, zoom, aspect, _salt(store, image, action, prompt))
    params = {"zoom_ratio": raw, "prompt": prompt, "aspect_ratio": _text(body, "aspect_ratio") or ""}
    return _create(
        store, body, "outpaint", mode=parent.mode, prompt=prompt, params=params,
        quota=_TYPE1_QUOTA[parent.mode], origin=parent.id, spec=spec, long_side=_grid(store),
        actions=GRID_ACTIONS,
    )  # fmt: skip


async def pan(request: web.Request) -> web.Response:
    """POST /mj/v2/pan: extend an upscaled image's canvas up, down, left or right (seed 003, Pan)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    direction = body.get("direction")
    if direction not in _DIRECTIONS:
        raise bad_request("invalid direction: valid values are up, down, left, right.")
    parent = _parent(store, body, "origin_task_id")
    action = f"pan_{direction}"
    image = _offered(parent, action)
    prompt = _text(body, "prompt") or parent.prompt
    spec = images.follow_up(image.spec, action, _salt(store, image, action, prompt))
    params = {"direction": direction, "prompt": prompt}
    return _create(
        store, body, "pan", mode=parent.mode, prompt=prompt, params=params,
        quota=_TYPE1_QUOTA[parent.mode], origin=parent.id, spec=spec, long_side=_grid(store),
        actions=GRID_ACTIONS,
    )  # fmt: skip


async def describe(request: web.Request) -> web.Response:
    """POST /mj/v2/describe: four prompts for `image_url`, as a task (seed 003, Describe)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    image_url = req_str(body, "image_url")
    if not HTTP_URL.match(image_url):
        raise bad_request("image_url must be an http(s) URL.")
    mode = _mode(body, "")
    text = "\n\n".join(f"{n}\ufe0f\u20e3 {p}" for n, p in enumerate(describe_prompts(image_url), 1))
    return _create(
        store, body, "describe", mode=mode, prompt="", params={"image_url": image_url}, quota=3,
        extra={"message": text, "description": text},
    )  # fmt: skip


async def blend(request: web.Request) -> web.Response:
    """POST /mj/v2/blend: a grid blending 2-5 `image_urls` in a `dimension` (goapi-api.md §2.1)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    urls = body.get("image_urls")
    if not (isinstance(urls, list) and all(isinstance(u, str) and HTTP_URL.match(u) for u in urls)):
        raise bad_request("image_urls must be a list of http(s) URLs.")
    if not 2 <= len(urls) <= 5:
        raise bad_request(f"image_urls must hold 2 to 5 images, got {len(urls)}.")
    dimension = body.get("dimension") or "square"
    if dimension not in _DIMENSIONS:
        raise bad_request("invalid dimension: valid values are square, portrait, landscape.")
    mode = _mode(body, "")
    spec = images.generate(" ".join(urls), _DIMENSIONS[dimension], "blend")
    params = {"image_urls": urls, "dimension": dimension}
    return _create(
        store, body, "blend", mode=mode, prompt="", params=params, quota=_TYPE1_QUOTA[mode],
        spec=spec, long_side=_grid(store), actions=GRID_ACTIONS,
    )  # fmt: skip


async def seed(request: web.Request) -> web.Response:
    """POST /mj/v2/seed: a new task whose `task_result.seed` is the seed of `task_id`'s image (§2.1)."""
    store = request.app[STORE_KEY]
    body = await _submit_body(request)
    parent = _parent(store, body, "task_id", "origin_task_id")
    if parent.image is None:
        raise _derive_error(f"task `{parent.id}` has no image to take the seed of.")
    value = str(images.digest("seed", parent.image.spec) % 4_294_967_296)
    return _create(
        store, body, "seed", mode=parent.mode, prompt="", params={"task_id": parent.id}, quota=1,
        origin=parent.id, extra={"seed": value},
    )  # fmt: skip


# --- reading tasks ------------------------------------------------------------------------------


async def fetch(request: web.Request) -> web.Response:
    """POST /mj/v2/fetch: the task object of `task_id` (goapi-api.md §2.2, §2.3)."""
    store = request.app[STORE_KEY]
    task_id = req_str(await json_body(request), "task_id")
    task = goapi_task(store, task_id)
    if task is None:
        raise bad_request(f"task `{task_id}` not found.")
    return web.json_response(task.snapshot(store.clock()))


async def multi_fetch(request: web.Request) -> web.Response:
    """POST /mj/v2/multi_fetch: ``{"data": {id: task object or null}}`` for `task_ids` (§2.5)."""
    store = request.app[STORE_KEY]
    ids = (await json_body(request)).get("task_ids")
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
        raise bad_request("task_ids must be a non-empty list of strings.")
    now = store.clock()
    data = {i: (task.snapshot(now) if (task := goapi_task(store, i)) else None) for i in ids}
    return web.json_response({"data": data})


def goapi_task(store: Store, task_id: str) -> GoapiTask | None:
    """The GoAPI task `task_id`, if there is one (the store keeps them as `BilledTask`s)."""
    task = store.goapi_tasks.get(task_id)
    return task if isinstance(task, GoapiTask) else None
