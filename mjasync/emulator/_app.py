"""Emulator layer: the aiohttp application - routes, request log, auth, body limits and the image CDN."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio.to_thread
from aiohttp import web
from multidict import CIMultiDict

from ._images import placeholder_mp4, render_png
from ._store import STORE_KEY, APIError, Closing, RecordedRequest, Store, is_lookup

__all__ = [
    "HTTP_URL",
    "Handler",
    "ProviderSpec",
    "provider_for",
    "bad_request",
    "bearer_authorized",
    "choice",
    "error_for",
    "error_response",
    "flag",
    "json_body",
    "make_app",
    "number",
    "opt_str",
    "req_str",
    "str_list",
    "url_field",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = dict[str, Any]
#: An absolute http(s) URL (also how a prompt's leading image URLs are recognised).
HTTP_URL = re.compile(r"^https?://[^\s/]+\S*$", re.IGNORECASE)

_log = logging.getLogger("mjasync.emulator")
# Never recorded: tests may print or log what the emulator saw.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "mj-api-secret", "cookie"})
_MAX_RENDER_SIDE = 8192
_ERROR_CODES = {
    400: "bad_request",
    401: "invalid_token",
    403: "forbidden",
    404: "no_api",
    405: "method_not_allowed",
    413: "content_too_large",
}
_ERROR_MESSAGES = {
    404: "The API is not found.",
    405: "The method is not allowed for this API.",
    413: "The request body is too large.",
}


def error_response(status: int, code: str, message: str, *, trace_id: str | None = None) -> web.Response:
    """Return the provider's error body, with a fresh trace_id unless one is given."""
    body = {
        "success": False,
        "error": {"code": code, "message": message},
        "trace_id": trace_id or Store.new_uuid(),
    }
    return web.json_response(body, status=status)


@dataclass(frozen=True)
class ProviderSpec:
    """One provider the emulator speaks: where its API lives, how it checks keys, how its errors look."""

    name: str
    #: Every API path of this provider starts with it (or one of them), e.g. ``/midjourney/``.
    prefix: str | tuple[str, ...]
    #: POST routes.
    routes: Sequence[tuple[str, Handler]]
    #: Whether the request carries an accepted key for this provider.
    authorized: Callable[[web.Request, tuple[str, ...]], bool]
    #: The provider's error response for (status, code, message, *, trace_id=None).
    error_response: Callable[..., web.Response]
    #: GET routes (midjourney-proxy fetches and lists tasks with GET).
    get_routes: Sequence[tuple[str, Handler]] = ()


PROVIDERS_KEY = web.AppKey("mjasync.emulator.providers", tuple)


def provider_for(request: web.Request) -> ProviderSpec | None:
    """The provider whose API *request* is for, or None (CDN and emulator-only routes).

    The first whose prefix matches: GoAPI's ``/mj/v2/`` comes before midjourney-proxy's ``/mj/``.
    """
    for spec in request.app[PROVIDERS_KEY]:
        if request.path.startswith(spec.prefix):
            return cast(ProviderSpec, spec)
    return None


def error_for(
    request: web.Request, status: int, code: str, message: str, *, trace_id: str | None = None
) -> web.Response:
    """The error response in the shape of the provider *request* is for (AceData's shape otherwise).

    *trace_id* ties the error to a task the request did create (a fault after the task was made).
    """
    spec = provider_for(request)
    build = spec.error_response if spec else error_response
    return build(status, code, message, trace_id=trace_id)


def make_app(
    store: Store,
    providers: Sequence[ProviderSpec],
    *,
    middlewares: Sequence[Callable[..., Awaitable[web.StreamResponse]]] = (),
    extra_routes: Iterable[web.RouteDef] = (),
) -> web.Application:
    """Build the application serving each provider's API plus the image and video CDN.

    *middlewares* run inside the request log and auth (so every request they see is recorded and
    authorised); *extra_routes* are emulator-only routes outside any provider's prefix.
    """
    # client_max_size makes aiohttp stop reading a body as soon as it passes the bound.
    app = web.Application(client_max_size=store.settings.max_body_size, middlewares=[_api, *middlewares])
    app[STORE_KEY] = store
    app[PROVIDERS_KEY] = tuple(providers)
    for spec in providers:
        for path, handler in spec.routes:
            app.router.add_post(path, handler)
        for path, handler in spec.get_routes:
            app.router.add_get(path, handler)
    app.router.add_routes(list(extra_routes))
    app.router.add_get(r"/images/{image_id:\d+}.png", _get_image)
    app.router.add_get(r"/images/{image_id:\d+}/0_{index:[0-3]}.png", _get_image)
    app.router.add_get(r"/videos/{video_id:\d+}/0_{index:[0-3]}.mp4", _get_video)
    return app


@web.middleware
async def _api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log and count every API request (never its auth header); the CDN routes pass straight through."""
    spec = provider_for(request)
    if spec is None:
        return await handler(request)
    store = request.app[STORE_KEY]
    entry = RecordedRequest(
        method=request.method,
        path=request.path,
        accept=request.headers.get("Accept"),
        content_type=request.headers.get("Content-Type"),
        headers=CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS),
    )
    store.requests.append(entry)
    store.count("requests")
    if is_lookup(request.path):
        store.count("polls")
    response = await _guarded(request, handler, store, entry, spec)
    entry.status = response.status
    return response


async def _guarded(
    request: web.Request, handler: Handler, store: Store, entry: RecordedRequest, spec: ProviderSpec
) -> web.StreamResponse:
    """Admit the request and run *handler*, turning every failure into the provider's error body."""
    try:
        entry.json = await _admit(request, store, spec)
        return await handler(request)
    except APIError as exc:
        return spec.error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _ERROR_CODES.get(exc.status, "bad_request")
        return spec.error_response(exc.status, code, _ERROR_MESSAGES.get(exc.status, exc.reason))
    except Closing:
        return spec.error_response(503, "api_error", "The emulator is shutting down.")
    except Exception:
        _log.exception("emulator handler failed on %s", request.path)
        return spec.error_response(500, "api_error", "Internal server error.")


async def _admit(request: web.Request, store: Store, spec: ProviderSpec) -> JSON | None:
    """Check the body size and the key, then the JSON body; return the body if it is an object."""
    limit = store.settings.max_body_size
    if request.content_length is not None and request.content_length > limit:
        # Refuse on the declared length alone, without reading the body.
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    if not spec.authorized(request, store.settings.tokens):
        raise APIError(401, "invalid_token", "The specified token is invalid or wrong.")
    if request.method != "POST":
        return None
    body = await json_body(request, require_object=False)
    return body if isinstance(body, dict) else None


def bearer_authorized(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether `Authorization: Bearer <token>` names an accepted token."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    # No configured tokens means "any bearer token", handy for manual runs.
    return not tokens or token in tokens


# --- request fields, shared by the provider modules ---------------------------------------------


def bad_request(message: str) -> APIError:
    """Return the 400 `bad_request` error for *message*."""
    return APIError(400, "bad_request", message)


async def json_body(request: web.Request, *, require_object: bool = True) -> Any:
    """Return the parsed JSON body, which must be an object unless *require_object* is false."""
    # aiohttp caches the bytes, so the handler's call re-parses without reading the socket again.
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        raise bad_request("The json payload is not valid to request the API") from None
    if require_object and not isinstance(body, dict):
        raise bad_request("The json payload is not valid to request the API")
    return body


def opt_str(body: JSON, key: str) -> str | None:
    """Return string field *key*, or None when absent."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise bad_request(f"`{key}` must be a string.")
    return value


def req_str(body: JSON, key: str, why: str = "") -> str:
    """Return non-blank string field *key*, which is required (*why* explains when)."""
    value = opt_str(body, key)
    if value is None or not value.strip():
        raise bad_request(f"{key} is required{why}.")
    return value


def url_field(body: JSON, key: str, *, required: bool = False) -> str | None:
    """Return http(s) URL field *key*."""
    value = req_str(body, key) if required else opt_str(body, key)
    if value is not None and not HTTP_URL.match(value):
        raise bad_request(f"`{key}` must be an http(s) URL.")
    return value


def flag(body: JSON, key: str) -> bool:
    """Return boolean field *key* (False when absent)."""
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"`{key}` must be a boolean.")
    return bool(value)


def choice(body: JSON, key: str, allowed: Sequence[str], default: str) -> str:
    """Return field *key*, which must be one of *allowed*."""
    value = body.get(key)
    if value is None:
        return default
    if value not in allowed:
        raise bad_request(f"`{key}` must be one of: {', '.join(allowed)}.")
    return cast(str, value)


def number(body: JSON, key: str, default: float, *, minimum: float = 0.0, integer: bool = False) -> float:
    """Return numeric field *key* (>= *minimum*; an int when *integer*), or *default*."""
    value = body.get(key)
    if value is None:
        return default
    valid = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not valid or not value >= minimum:
        raise bad_request(f"`{key}` must be {'an integer' if integer else 'a number'} >= {minimum:g}.")
    return float(value)


def str_list(body: JSON, key: str) -> list[str] | None:
    """Return list-of-strings field *key*, or None when absent."""
    value = body.get(key)
    if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise bad_request(f"`{key}` must be a list of strings.")
    return value


# --- the CDN: images and videos, no auth -------------------------------------------------------


_SIZE = re.compile(r"^[1-9]\d{0,4}$")


async def _get_image(request: web.Request) -> web.Response:
    """Serve a PNG: raw size by default, or exactly ``?width=W&height=H``; ``/0_N.png`` is a quadrant."""
    store = request.app[STORE_KEY]
    image = store.images.get(request.match_info["image_id"])
    if image is None:
        raise web.HTTPNotFound(text="image not found")
    spec, (width, height) = image.spec, image.raw
    quadrant = -1
    if "index" in request.match_info:
        if not spec.is_grid:
            raise web.HTTPNotFound(text="this image is not a grid")
        quadrant = int(request.match_info["index"])
        spec, width, height = spec.quadrant(quadrant), width // 2, height // 2
    query_w, query_h = request.query.get("width"), request.query.get("height")
    if query_w is not None or query_h is not None:
        if not (query_w and query_h and _SIZE.match(query_w) and _SIZE.match(query_h)):
            raise web.HTTPBadRequest(text="width and height must be given together as positive integers")
        width, height = int(query_w), int(query_h)
        if max(width, height) > _MAX_RENDER_SIDE:
            raise web.HTTPBadRequest(text=f"width and height are limited to {_MAX_RENDER_SIDE}")
    store.count("image_gets")
    key = (image.image_id, quadrant, width, height)
    png = store.png_cache.get(key)
    if png is None:
        # Painting takes tens of milliseconds; keep the event loop free meanwhile.
        try:
            png = await anyio.to_thread.run_sync(render_png, spec, width, height)
        except ImportError:
            raise web.HTTPNotImplemented(
                text="install Pillow to render images: pip install 'mjasync[emulator]'"
            ) from None
        store.png_cache[key] = png
        while len(store.png_cache) > store.settings.png_cache_size:
            store.png_cache.popitem(last=False)
    else:
        store.png_cache.move_to_end(key)
    return web.Response(body=png, content_type="image/png", headers=_cdn_headers())


async def _get_video(request: web.Request) -> web.Response:
    """Serve a tiny MP4-looking placeholder for one of a video set's four clips."""
    store = request.app[STORE_KEY]
    video_id = request.match_info["video_id"]
    if video_id not in store.videos:
        raise web.HTTPNotFound(text="video not found")
    store.count("video_gets")
    body = placeholder_mp4(video_id, int(request.match_info["index"]))
    return web.Response(body=body, content_type="video/mp4", headers=_cdn_headers())


def _cdn_headers() -> dict[str, Any]:
    # The content never changes for a given URL, like a real CDN object.
    return {"Cache-Control": "public, max-age=86400, immutable"}
