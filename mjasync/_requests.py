"""Mapping layer: the client's calls as pure request builders, checked before anything is sent.

Each builder takes the provider (for what it refuses, a blend's `--ar`, the id a follow-up names an
image by) and the caller's arguments, and returns the neutral request (`mjasync._models.requests`)
or raises `InvalidRequestError`. No client, no I/O: `Client` wraps what these return in a `Job` or
sends it as a short call. The `*Options` TypedDicts are the keyword arguments the client's methods
take, so a type checker sees each one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, TypeVar, get_args

import msgspec

from ._config import ENV_BASE_URL
from ._exceptions import ActionNotAvailableError, InvalidRequestError
from ._models.params import (
    MAX_PROMPT_CHARS,
    PromptParams,
    build_prompt,
    check_prompt_length,
    encode_mask,
    validate_api_key,
    validate_http_url,
    validate_origin_url,
)
from ._models.requests import (
    AnyRequest,
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    SeedRequest,
    ShortenRequest,
    TranslateRequest,
    VideosRequest,
)
from ._models.results import ImagineResult, VideoResult
from ._providers import Provider, WireRequest, api_key_env
from ._types import BlendDimension, Mode, PanDirection, VideoMode, VideoResolution

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "account",
    "BlendOptions",
    "EditsOptions",
    "ExtendVideoOptions",
    "FollowUpOptions",
    "GridIndex",
    "ImageJobOptions",
    "ImageTarget",
    "ImagineOptions",
    "VideoIndex",
    "VideosOptions",
    "ZoomFactor",
    "act",
    "blend",
    "describe",
    "edits",
    "extend_video",
    "first_given",
    "imagine",
    "pan",
    "required_text",
    "seed",
    "shorten",
    "task_batch_lookup",
    "task_lookup",
    "translate",
    "upscale",
    "variation",
    "variation_region",
    "videos",
    "zoom_out",
]

#: A grid image, 1–4, left to right, top to bottom.
GridIndex = Literal[1, 2, 3, 4]
#: One of the four videos of a videos result, 0–3.
VideoIndex = Literal[0, 1, 2, 3]
#: How far `zoom_out` zooms. A float 1.5 works too; a type checker only takes the string (no float Literal).
ZoomFactor = Literal[2, "2", "1.5"]
#: What a follow-up acts on: a finished result, or the id `Client.follow_up_id` gives for one.
ImageTarget = ImagineResult | str

_AnyRequest = TypeVar("_AnyRequest", bound=AnyRequest)

_MODES: Final = ("fast", "relax", "turbo")
_VIDEO_MODES: Final = ("fast", "turbo")
_RESOLUTIONS: Final = ("480p", "720p")
_QUALITIES: Final = (".25", ".5", "1", "2", "4")
_DIMENSIONS: Final = get_args(BlendDimension)
_PAN_DIRECTIONS: Final = get_args(PanDirection)
_ZOOM_ACTIONS: Final[dict[float | str, str]] = {
    2: "zoom_out_2x",
    "2": "zoom_out_2x",
    1.5: "zoom_out_1_5x",
    "1.5": "zoom_out_1_5x",
}
_VERSION_RE: Final = re.compile(r"\d+(\.\d+)?")
_ACTION_RE: Final = re.compile(r"[a-z0-9_]+")


class _JobOptions(TypedDict, total=False):
    """The options every long-running job takes."""

    #: Seconds AceData holds a synchronous long wait (`via="sync"`) before it answers 504, sent as the
    #: body's `timeout`. Not a client-side limit: those are `Timeouts` and `PollPolicy.deadline`.
    server_wait: float | None
    callback_url: str | None


class ImageJobOptions(_JobOptions, total=False):
    """The options of every image job: `Client.variation_region`'s keyword arguments."""

    mode: Mode | None
    translation: bool | None
    split_images: bool | None


class FollowUpOptions(ImageJobOptions, total=False):
    """The keyword arguments of `Client.act` and the follow-ups built on it (`upscale`, `pan`, ...)."""

    prompt: str | None
    mask: Any


class ImagineOptions(ImageJobOptions, total=False):
    """The keyword arguments of `Client.imagine`."""

    image_urls: Sequence[str]
    params: PromptParams | None
    version: str | None
    hd: bool | None
    quality: str | None
    moodboard: bool | None
    aspect_ratio: str | None
    skip_prompt_check: bool | None


class BlendOptions(_JobOptions, total=False):
    """The keyword arguments of `Client.blend`."""

    dimension: BlendDimension | None
    params: PromptParams | None
    mode: Mode | None


class EditsOptions(_JobOptions, total=False):
    """The keyword arguments of `Client.edits`."""

    mask: Any
    mode: Mode | None
    split_images: bool | None


class _VideoOptions(_JobOptions, total=False):
    mode: VideoMode | None
    resolution: VideoResolution | None
    loop: bool | None


class VideosOptions(_VideoOptions, total=False):
    """The keyword arguments of `Client.videos`."""

    end_image_url: str | None


class ExtendVideoOptions(_VideoOptions, total=False):
    """The keyword arguments of `Client.extend_video`."""

    index: VideoIndex
    prompt: str | None


# -- imagine and its follow-up actions ------------------------------------------------------------------


def imagine(
    provider: Provider,
    prompt: str,
    *,
    image_urls: Sequence[str] = (),
    params: PromptParams | None = None,
    mode: Mode | None = None,
    translation: bool | None = None,
    split_images: bool | None = None,
    version: str | None = None,
    hd: bool | None = None,
    quality: str | None = None,
    moodboard: bool | None = None,
    aspect_ratio: str | None = None,
    skip_prompt_check: bool | None = None,
    server_wait: float | None = None,
    callback_url: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> ImagineRequest:
    """A generate: the prompt with its image URLs and `--flags`, and the fields that say the same."""
    if aspect_ratio is not None:
        if params is not None and params.aspect_ratio not in (None, aspect_ratio):
            raise InvalidRequestError(
                f"aspect_ratio={aspect_ratio!r} conflicts with params.aspect_ratio={params.aspect_ratio!r}"
            )
        params = msgspec.structs.replace(params or PromptParams(), aspect_ratio=aspect_ratio)
    if version is not None:
        if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
            raise InvalidRequestError(f"version must look like '7' or '6.1', not {version!r}")
        if params is not None and params.version not in (None, version):
            raise InvalidRequestError(f"version={version!r} conflicts with params.version={params.version!r}")
        params = msgspec.structs.replace(params or PromptParams(), version=version)
    elif params is not None and params.version is not None:
        version = params.version
    text = build_prompt(prompt, image_urls=image_urls, params=params)
    if hd and "--hd" not in text.split():
        text += " --hd"
    what = "prompt" if text == prompt.strip() else "prompt with its image URLs and --flags"
    check_prompt_length(text, max_prompt_chars, what=what)
    sref = "--sref" in text.split() or bool(params and params.style_reference)
    request = ImagineRequest(
        action="generate",
        prompt=text,
        version=version,
        hd=_check_bool("hd", hd),
        quality=_check_choice("quality", quality, _QUALITIES),
        style_reference=True if sref else None,
        moodboard=_check_bool("moodboard", moodboard),
        aspect_ratio=params.aspect_ratio if params is not None else None,
        skip_prompt_check=_check_bool("skip_prompt_check", skip_prompt_check),
        translation=_check_bool("translation", translation),
        split_images=_check_bool("split_images", split_images),
        **_job_fields(mode, _MODES, server_wait, callback_url),
    )
    return _checked(provider, request)


def blend(
    provider: Provider,
    image_urls: Sequence[str],
    prompt: str = "",
    *,
    dimension: BlendDimension | None = None,
    params: PromptParams | None = None,
    mode: Mode | None = None,
    server_wait: float | None = None,
    callback_url: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> ImagineRequest:
    """A blend of 2–5 images: a generate whose prompt starts with them, and that names them as such."""
    if isinstance(image_urls, str) or not 2 <= len(image_urls) <= 5:
        raise InvalidRequestError("a blend needs between 2 and 5 image URLs (a list, not one string)")
    _check_choice("dimension", dimension, _DIMENSIONS)
    aspect_ratio = provider.blend_aspect_ratio(dimension) if dimension else None
    if (
        dimension
        and aspect_ratio is None
        and (
            (params is not None and params.aspect_ratio is not None)
            or (isinstance(prompt, str) and "--ar" in prompt.split())
        )
    ):
        # The provider takes the shape as a field only; an `--ar` beside it could only contradict it.
        raise InvalidRequestError("dimension= gives the blend's shape: drop the aspect ratio")
    generate = imagine(
        provider,
        prompt,
        image_urls=image_urls,
        params=params,
        aspect_ratio=aspect_ratio,
        mode=mode,
        server_wait=server_wait,
        callback_url=callback_url,
        max_prompt_chars=max_prompt_chars,
    )
    request = msgspec.structs.replace(
        generate, blend_urls=list(image_urls), dimension=dimension, aspect_ratio=None
    )
    return _checked(provider, request)


def act(
    provider: Provider,
    target: ImageTarget,
    action: str,
    *,
    prompt: str | None = None,
    mask: Any = None,
    mode: Mode | None = None,
    translation: bool | None = None,
    split_images: bool | None = None,
    server_wait: float | None = None,
    callback_url: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> ImagineRequest:
    """A follow-up `action` on a finished result (which must offer it) or an image id."""
    if not isinstance(action, str) or not _ACTION_RE.fullmatch(action) or action == "generate":
        raise InvalidRequestError(
            f"action must be a follow-up action name such as 'upscale1', not {action!r}"
        )
    image_id = _image_id_for(provider, target, action)
    if action == "variation_region" and mask is None:
        raise InvalidRequestError("variation_region needs a mask (white marks the area to repaint)")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise InvalidRequestError("prompt, when given, must be non-empty text")
    request = ImagineRequest(
        action=action,
        image_id=image_id,
        prompt=check_prompt_length(prompt.strip(), max_prompt_chars) if prompt else None,
        mask=encode_mask(mask) if mask is not None else None,
        translation=_check_bool("translation", translation),
        split_images=_check_bool("split_images", split_images),
        **_job_fields(mode, _MODES, server_wait, callback_url),
    )
    return _checked(provider, request)


def upscale(
    provider: Provider,
    target: ImageTarget,
    index: GridIndex,
    *,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    **options: Unpack[FollowUpOptions],
) -> ImagineRequest:
    """Upscale image `index` of a grid."""
    return act(provider, target, f"upscale{_grid_index(index)}", max_prompt_chars=max_prompt_chars, **options)


def variation(
    provider: Provider,
    target: ImageTarget,
    index: GridIndex,
    *,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    **options: Unpack[FollowUpOptions],
) -> ImagineRequest:
    """Four variations of image `index` of a grid."""
    return act(
        provider, target, f"variation{_grid_index(index)}", max_prompt_chars=max_prompt_chars, **options
    )


def zoom_out(
    provider: Provider,
    target: ImageTarget,
    factor: ZoomFactor = 2,
    *,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    **options: Unpack[FollowUpOptions],
) -> ImagineRequest:
    """An upscaled image zoomed out by 2 or 1.5 (as a number or a string)."""
    if isinstance(factor, bool) or factor not in _ZOOM_ACTIONS:
        raise InvalidRequestError(f"zoom_out factor must be 2 or 1.5, not {factor!r}")
    return act(provider, target, _ZOOM_ACTIONS[factor], max_prompt_chars=max_prompt_chars, **options)


def pan(
    provider: Provider,
    target: ImageTarget,
    direction: PanDirection,
    *,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    **options: Unpack[FollowUpOptions],
) -> ImagineRequest:
    """An upscaled image extended to the left, right, up or down."""
    if direction not in _PAN_DIRECTIONS:
        raise InvalidRequestError(f"pan direction must be left, right, up or down, not {direction!r}")
    return act(provider, target, f"pan_{direction}", max_prompt_chars=max_prompt_chars, **options)


def variation_region(
    provider: Provider,
    target: ImageTarget,
    mask: Any,
    prompt: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    **options: Unpack[ImageJobOptions],
) -> ImagineRequest:
    """The white area of `mask` repainted on an upscaled image."""
    if mask is None:
        raise InvalidRequestError("variation_region needs a mask (white marks the area to repaint)")
    return act(
        provider,
        target,
        "variation_region",
        mask=mask,
        prompt=prompt,
        max_prompt_chars=max_prompt_chars,
        **options,
    )


# -- edits and videos -------------------------------------------------------------------------------------


def edits(
    provider: Provider,
    image_url: str,
    prompt: str,
    *,
    mask: Any = None,
    mode: Mode | None = None,
    split_images: bool | None = None,
    server_wait: float | None = None,
    callback_url: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> EditsRequest:
    """The image at `image_url` edited as `prompt` says, inside `mask` if given."""
    validate_http_url(image_url, "image_url")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidRequestError("edits needs a non-empty prompt")
    request = EditsRequest(
        action="generate",
        image_url=image_url,
        prompt=check_prompt_length(prompt.strip(), max_prompt_chars),
        mask=encode_mask(mask) if mask is not None else None,
        split_images=_check_bool("split_images", split_images),
        **_job_fields(mode, _MODES, server_wait, callback_url),
    )
    return _checked(provider, request)


def videos(
    provider: Provider,
    image_url: str,
    prompt: str | None = None,
    *,
    end_image_url: str | None = None,
    mode: VideoMode | None = None,
    resolution: VideoResolution | None = None,
    loop: bool | None = None,
    server_wait: float | None = None,
    callback_url: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> VideosRequest:
    """Four short videos from the image at `image_url` (the first frame)."""
    validate_http_url(image_url, "image_url")
    if end_image_url is not None:
        validate_http_url(end_image_url, "end_image_url")
    request = VideosRequest(
        action="generate",
        image_url=image_url,
        end_image_url=end_image_url,
        prompt=_optional_prompt(prompt, max_prompt_chars),
        **_video_fields(mode, resolution, loop, server_wait, callback_url),
    )
    return _checked(provider, request)


def extend_video(
    provider: Provider,
    target: VideoResult | str,
    *,
    index: VideoIndex = 0,
    prompt: str | None = None,
    mode: VideoMode | None = None,
    resolution: VideoResolution | None = None,
    loop: bool | None = None,
    server_wait: float | None = None,
    callback_url: str | None = None,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
) -> VideosRequest:
    """Video `index` (0–3) of an earlier videos result (or a `video_id`), extended."""
    video_id = target.video_id if isinstance(target, VideoResult) else target
    if not isinstance(video_id, str) or not video_id:
        raise InvalidRequestError("extend_video needs a finished videos result or a video_id")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 3:
        raise InvalidRequestError(f"video index must be 0 to 3, not {index!r}")
    request = VideosRequest(
        action="extend",
        video_id=video_id,
        video_index=index,
        prompt=_optional_prompt(prompt, max_prompt_chars),
        **_video_fields(mode, resolution, loop, server_wait, callback_url),
    )
    return _checked(provider, request)


# -- short calls and task lookups -------------------------------------------------------------------------


def describe(provider: Provider, image_url: str) -> DescribeRequest:
    """Ask for four prompts that describe the image at `image_url`."""
    return _checked(provider, DescribeRequest(image_url=validate_http_url(image_url, "image_url")))


def shorten(provider: Provider, prompt: str, *, max_prompt_chars: int = MAX_PROMPT_CHARS) -> ShortenRequest:
    """Ask for shorter versions of `prompt`."""
    text = check_prompt_length(required_text("prompt", prompt), max_prompt_chars)
    return _checked(provider, ShortenRequest(prompt=text))


def translate(
    provider: Provider, content: str, *, max_prompt_chars: int = MAX_PROMPT_CHARS
) -> TranslateRequest:
    """Ask for `content` in English."""
    text = check_prompt_length(required_text("content", content), max_prompt_chars, what="content")
    return _checked(provider, TranslateRequest(content=text))


def seed(provider: Provider, target: ImageTarget) -> SeedRequest:
    """Ask for the seed of a generated image (a result, or the id `follow_up_id` gives for one)."""
    image_id = provider.follow_up_id(target) if isinstance(target, ImagineResult) else target
    return _checked(provider, SeedRequest(image_id=required_text("image_id", image_id)))


def task_lookup(provider: Provider, task_id: str | None, trace_id: str | None) -> WireRequest:
    """The lookup of one task, by its id or the `trace_id` of its submit (exactly one of them)."""
    if (task_id is None) == (trace_id is None):
        raise InvalidRequestError("pass exactly one of task_id and trace_id")
    return provider.task_request(task_id, trace_id=trace_id)


def task_batch_lookup(provider: Provider, task_ids: Sequence[str], trace_ids: Sequence[str]) -> WireRequest:
    """The lookup of many tasks in one request, by ids and trace ids (at least one)."""
    if isinstance(task_ids, str) or isinstance(trace_ids, str):
        raise InvalidRequestError("task_ids and trace_ids are lists of ids, not one string")
    if not task_ids and not trace_ids:
        raise InvalidRequestError("pass at least one task id or trace id")
    return provider.task_batch_request(list(task_ids) or None, trace_ids=list(trace_ids) or None)


# -- helpers ---------------------------------------------------------------------------------------------


def account(
    provider: Provider, api_key: str | None, base_url: str | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    """The API key and the origin a client uses, checked: each from its argument, else `environ`.

    The key comes from `api_key`, else `MJASYNC_API_KEY`, else the provider's own variables (never
    another provider's); the origin from `base_url`, else `MJASYNC_BASE_URL`, else the provider's.
    """
    key_names = api_key_env(provider)
    key_source, key = first_given(("api_key", api_key), *((name, environ.get(name)) for name in key_names))
    if not key:
        raise InvalidRequestError(f"no API key: pass api_key=... or set {' or '.join(key_names)}")
    url_source, url = first_given(
        ("base_url", base_url),
        (ENV_BASE_URL, environ.get(ENV_BASE_URL)),
        ("the provider's base URL", provider.default_base_url),
    )
    return validate_api_key(key, key_source), validate_origin_url(url, url_source)


def required_text(name: str, value: object) -> str:
    """`value` stripped, if it is text with something in it; else raise."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{name} must be non-empty text, got {value!r}")
    return value.strip()


def first_given(*candidates: tuple[str, str | None]) -> tuple[str, str | None]:
    """The first (source, value) with a non-empty value, else the last one: where an option came from."""
    return next((candidate for candidate in candidates if candidate[1]), candidates[-1])


def _checked(provider: Provider, request: _AnyRequest) -> _AnyRequest:
    """`request`, once the provider has said it can do it (else it raises `UnsupportedFeatureError`)."""
    provider.check(request)
    return request


def _image_id_for(provider: Provider, target: ImageTarget, action: str) -> str:
    if isinstance(target, ImagineResult):
        follow_up_id = provider.follow_up_id(target)
        if target.failed or not follow_up_id or not target.actions:
            raise InvalidRequestError(
                "actions apply to a finished result; this one is a progress update or a failure"
            )
        allowed = provider.allowed_actions(target)
        if action not in allowed:
            raise ActionNotAvailableError(action, sorted(allowed))
        return follow_up_id
    if isinstance(target, str) and target.strip():
        return target.strip()
    raise InvalidRequestError(f"expected an ImagineResult or an image_id string, got {type(target).__name__}")


def _job_fields(
    mode: str | None, modes: tuple[str, ...], server_wait: float | None, callback_url: str | None
) -> dict[str, Any]:
    """The fields every long-running job shares, checked."""
    return {
        "mode": _check_choice("mode", mode, modes),
        "timeout": _check_server_wait(server_wait),
        "callback_url": validate_http_url(callback_url, "callback_url") if callback_url is not None else None,
    }


def _video_fields(
    mode: str | None,
    resolution: str | None,
    loop: bool | None,
    server_wait: float | None,
    callback_url: str | None,
) -> dict[str, Any]:
    return {
        "resolution": _check_choice("resolution", resolution, _RESOLUTIONS),
        "loop": _check_bool("loop", loop),
        **_job_fields(mode, _VIDEO_MODES, server_wait, callback_url),
    }


def _optional_prompt(prompt: str | None, max_prompt_chars: int) -> str | None:
    return None if prompt is None else check_prompt_length(required_text("prompt", prompt), max_prompt_chars)


def _check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidRequestError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_bool(name: str, value: bool | None) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be True, False or None; got {value!r}")
    return value


def _check_server_wait(value: float | None) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequestError(f"server_wait must be a positive number of seconds, got {value!r}")
    return float(value)


def _grid_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 4:
        raise InvalidRequestError(f"grid image index must be 1 to 4, not {index!r}")
    return index
