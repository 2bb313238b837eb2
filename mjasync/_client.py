"""Client layer: `Client`, the one object users hold — lifecycle, validation, and the high-level calls."""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar, get_args

import aiohttp
import anyio
import msgspec

from ._attempts import SendRecord, call_with_retries, find_submitted, submit_for_task_id
from ._batch import Outcomes, run_many
from ._callbacks import CallbackRouter
from ._config import (
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    ENV_BASE_URL,
    Limits,
    PollPolicy,
    RetryPolicy,
    Timeouts,
)
from ._exceptions import ActionNotAvailableError, InvalidRequestError, ResponseDecodeError
from ._job import Core, Job, TaskHandle
from ._limiter import JobLimiter
from ._models.params import (
    MAX_PROMPT_CHARS,
    PromptParams,
    build_prompt,
    check_max_prompt_chars,
    check_prompt_length,
    encode_mask,
    validate_api_key,
    validate_headers,
    validate_http_url,
    validate_origin_url,
)
from ._models.requests import (
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    SeedRequest,
    ShortenRequest,
    TranslateRequest,
    VideosRequest,
)
from ._models.results import (
    DescribeResult,
    EditsResult,
    ImagineResult,
    Result,
    SeedResult,
    ShortenResult,
    TranslateResult,
    VideoResult,
)
from ._models.task import TaskBatch, TaskRecord
from ._poller import TaskPoller
from ._providers import Provider, ProviderName, WireRequest, api_key_env, get_provider
from ._transport import SessionPool, Transport, WireResponse
from ._transport._send import raise_connection_error
from ._types import BlendDimension, Mode, PanDirection, VideoMode, VideoResolution, WaitVia

__all__ = ["DEFAULT_MAX_DOWNLOAD_BYTES", "Client"]

R = TypeVar("R", bound=Result)

_MODES: Final = ("fast", "relax", "turbo")
_VIDEO_MODES: Final = ("fast", "turbo")
_RESOLUTIONS: Final = ("480p", "720p")
_QUALITIES: Final = (".25", ".5", "1", "2", "4")
_WAIT_VIAS: Final = ("stream", "poll", "sync", "callback")
_DIMENSIONS: Final = get_args(BlendDimension)
_VERSION_RE: Final = re.compile(r"\d+(\.\d+)?")
_ACTION_RE: Final = re.compile(r"[a-z0-9_]+")
_USER_AGENT: Final = "mjasync/0.1 (+aiohttp)"
#: Result files bigger than this are refused unless the caller raises the limit.
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 64 * 1024 * 1024
_ImageTarget = ImagineResult | str


class Client:
    """An asyncio client for a hosted Midjourney API.

    ```python
    async with mjasync.Client(api_key="...", base_url="...") as mj:
        grid = await mj.imagine("Lamborghini speeds inside a volcano")
        upscaled = await mj.upscale(grid, 2)
    ```

    The key comes from `api_key`, else `MJASYNC_API_KEY`, else the provider's own variable (AceData's
    `ACEDATACLOUD_API_TOKEN`; GoAPI has none, and never reads AceData's), and must be
    visible ASCII (no whitespace, line breaks or control characters: it goes into a header as given).
    The base URL comes from `base_url`, else `MJASYNC_BASE_URL`, else the provider's, and must be an
    origin, `scheme://host[:port]` (a trailing "/" is fine): mjasync adds the API paths itself, so a
    path prefix, a query, a fragment or credentials (`user:password@`) are refused rather than
    supported. `provider` is "acedata" (the default) or "goapi"; the calls are the same, and what one
    lacks raises `UnsupportedFeatureError`. A prompt longer than `max_prompt_chars` (default
    `MAX_PROMPT_CHARS`, 6000; image URLs and `--flags` count) is refused before anything is sent.
    The aiohttp session is made inside the running loop on first use and closed by `aclose()` (or
    `async with`), unless you passed your own `http_session`, which you then close yourself.

    With `webhooks=` (a `WebhookReceiver`), jobs ask the provider to call back and are awaited that
    way by default (`wait_via="callback"`), polling only when a callback is late.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        provider: ProviderName = "acedata",
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
        http_session: aiohttp.ClientSession | None = None,
        webhooks: CallbackRouter | None = None,
        wait_via: WaitVia | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ) -> None:
        self._configure(
            api_key=api_key,
            base_url=base_url,
            provider=provider,
            timeouts=timeouts,
            limits=limits,
            poll=poll,
            retry=retry,
            default_headers=default_headers,
            http_session=http_session,
            webhooks=webhooks,
            wait_via=wait_via,
            max_line_bytes=max_line_bytes,
            max_response_bytes=max_response_bytes,
            max_prompt_chars=max_prompt_chars,
            pool=None,
            limiter=None,
        )

    def _configure(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        provider: ProviderName,
        timeouts: Timeouts | None,
        limits: Limits | None,
        poll: PollPolicy | None,
        retry: RetryPolicy | None,
        default_headers: Mapping[str, str] | None,
        http_session: aiohttp.ClientSession | None,
        webhooks: CallbackRouter | None,
        wait_via: WaitVia | None,
        max_line_bytes: int,
        max_response_bytes: int,
        max_prompt_chars: int,
        pool: SessionPool | None,
        limiter: JobLimiter | None,
    ) -> None:
        self._provider: Provider = get_provider(provider)
        key_names = api_key_env(self._provider)
        key_source, key = _first_given(
            ("api_key", api_key), *((name, os.environ.get(name)) for name in key_names)
        )
        if not key:
            raise InvalidRequestError(f"no API key: pass api_key=... or set {' or '.join(key_names)}")
        validate_api_key(key, key_source)
        url_source, url = _first_given(
            ("base_url", base_url),
            (ENV_BASE_URL, os.environ.get(ENV_BASE_URL)),
            ("the provider's base URL", self._provider.default_base_url),
        )
        self._base_url = validate_origin_url(url, url_source)
        if wait_via is None:
            wait_via = "callback" if webhooks is not None else "stream"
        if wait_via not in _WAIT_VIAS:
            raise InvalidRequestError(f"wait_via must be one of {_WAIT_VIAS}, not {wait_via!r}")
        if wait_via == "callback" and webhooks is None:
            raise InvalidRequestError("wait_via='callback' needs webhooks=WebhookReceiver(...)")
        for name, value in (("max_line_bytes", max_line_bytes), ("max_response_bytes", max_response_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise InvalidRequestError(f"{name} must be an int of at least 1024, got {value!r}")
        headers = validate_headers(default_headers)
        credentials = self._provider.credential_headers()
        if any(name.lower() in credentials for name in headers):
            raise InvalidRequestError("pass the API key as api_key=, not in default_headers")
        self._options: dict[str, Any] = {
            "provider": provider,
            "timeouts": timeouts or Timeouts(),
            "limits": limits or Limits(),
            "poll": poll or PollPolicy(),
            "retry": retry or RetryPolicy(),
            "default_headers": headers,
            "webhooks": webhooks,
            "wait_via": wait_via,
            "max_line_bytes": max_line_bytes,
            "max_response_bytes": max_response_bytes,
            "max_prompt_chars": check_max_prompt_chars(max_prompt_chars),
        }
        self._api_key = key
        self._owns_pool = pool is None
        self._pool = pool or SessionPool(
            limits=self._options["limits"], user_agent=_USER_AGENT, session=http_session
        )
        transport = Transport(
            self._pool,
            base_url=self._base_url,
            headers={**headers, **self._provider.auth_headers(key)},
            secrets=(key,),
            timeouts=self._options["timeouts"],
            max_response_bytes=max_response_bytes,
            error_for_status=self._provider.status_error,
        )
        poll_policy: PollPolicy = self._options["poll"]
        job_limits: Limits = self._options["limits"]
        self._core = Core(
            provider=self._provider,
            transport=transport,
            poller=TaskPoller(
                self._fetch_records, window=poll_policy.batch_window, max_batch=poll_policy.max_batch
            ),
            poll=poll_policy,
            retry=self._options["retry"],
            limiter=limiter
            or JobLimiter(job_limits.max_in_flight, submits_per_second=job_limits.submits_per_second),
            max_line_bytes=max_line_bytes,
            wait_via=wait_via,
            callbacks=webhooks,
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"<mjasync.Client provider={self._provider.name!r} base_url={self._base_url!r}>"

    async def __aenter__(self) -> Client:
        self._pool.session()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if this client made it). Derived clients leave it open."""
        if self._owns_pool:
            await self._pool.aclose()

    @property
    def base_url(self) -> str:
        """The provider origin requests go to."""
        return self._base_url

    @property
    def provider(self) -> str:
        """The provider's name."""
        return self._provider.name

    @property
    def poller(self) -> TaskPoller:
        """The shared task poller (its `fetches` count shows how many lookups were made)."""
        return self._core.poller

    @property
    def limiter(self) -> JobLimiter:
        """The in-flight limiter (`limiter.statistics()` shows jobs in flight, waiting, cooldowns)."""
        return self._core.limiter

    def with_options(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeouts: Timeouts | None = None,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        default_headers: Mapping[str, str] | None = None,
        wait_via: WaitVia | None = None,
        max_line_bytes: int | None = None,
        max_response_bytes: int | None = None,
        max_prompt_chars: int | None = None,
    ) -> Client:
        """A client with some options changed that shares this one's connection pool (only this one closes it).

        With the same key and base URL it also shares the in-flight limit and the 429 cooldown: the
        provider sees one account either way.
        """
        options = dict(self._options)
        changes = {
            "timeouts": timeouts,
            "poll": poll,
            "retry": retry,
            "default_headers": default_headers,
            "wait_via": wait_via,
            "max_line_bytes": max_line_bytes,
            "max_response_bytes": max_response_bytes,
            "max_prompt_chars": max_prompt_chars,
        }
        options.update({k: v for k, v in changes.items() if v is not None})
        same_account = (api_key or self._api_key) == self._api_key and (
            base_url or self._base_url
        ) == self._base_url
        derived = Client.__new__(Client)
        derived._configure(
            api_key=api_key or self._api_key,
            base_url=base_url or self._base_url,
            http_session=None,
            pool=self._pool,
            limiter=self._core.limiter if same_account else None,
            **options,
        )
        return derived

    # -- imagine and its follow-up actions ------------------------------------------------------------

    def imagine(
        self,
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
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Job[ImagineResult]:
        """Generate a 2×2 grid from a prompt; with `image_urls` (1–5), an image prompt.

        `version` is sent as the body field (for billing) and as `--v` in the prompt (which picks the
        model); `hd` likewise as `--hd`; `aspect_ratio` ("16:9") as `--ar`, and as a field where the
        provider has one. `skip_prompt_check` is GoAPI's. Nothing is sent until the job is awaited,
        streamed or submitted.
        """
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
                raise InvalidRequestError(
                    f"version={version!r} conflicts with params.version={params.version!r}"
                )
            params = msgspec.structs.replace(params or PromptParams(), version=version)
        elif params is not None and params.version is not None:
            version = params.version
        text = build_prompt(prompt, image_urls=image_urls, params=params)
        if hd and "--hd" not in text.split():
            text += " --hd"
        self._check_prompt(
            text, "prompt" if text == prompt.strip() else "prompt with its image URLs and --flags"
        )
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
            **self._image_job_options(mode, translation, split_images, timeout, callback_url),
        )
        return Job(self._core, ImagineResult, request)

    def blend(
        self,
        image_urls: Sequence[str],
        prompt: str = "",
        *,
        dimension: BlendDimension | None = None,
        params: PromptParams | None = None,
        mode: Mode | None = None,
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Job[ImagineResult]:
        """Blend 2–5 images (their URLs go before the optional text, as AceData expects).

        `dimension` (square, portrait or landscape) shapes the result; GoAPI takes no text or
        parameters with a blend.
        """
        if isinstance(image_urls, str) or not 2 <= len(image_urls) <= 5:
            raise InvalidRequestError("a blend needs between 2 and 5 image URLs (a list, not one string)")
        dimension = _check_choice("dimension", dimension, _DIMENSIONS)  # type: ignore[assignment]
        aspect_ratio = self._provider.blend_aspect_ratio(dimension) if dimension else None
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
        job = self.imagine(
            prompt,
            image_urls=image_urls,
            params=params,
            aspect_ratio=aspect_ratio,
            mode=mode,
            timeout=timeout,
            callback_url=callback_url,
        )
        job.close()  # only its request is wanted: the blend is the job that gets sent
        request = msgspec.structs.replace(
            job.request, blend_urls=list(image_urls), dimension=dimension, aspect_ratio=None
        )
        return Job(self._core, ImagineResult, request)

    def act(
        self,
        target: _ImageTarget,
        action: str,
        *,
        prompt: str | None = None,
        mask: Any = None,
        mode: Mode | None = None,
        translation: bool | None = None,
        split_images: bool | None = None,
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Job[ImagineResult]:
        """Apply a follow-up `action` (any string the result lists) to a finished result or an `image_id`.

        Given a result, an action it does not offer is refused here, before anything is sent.
        """
        if not isinstance(action, str) or not _ACTION_RE.fullmatch(action) or action == "generate":
            raise InvalidRequestError(
                f"action must be a follow-up action name such as 'upscale1', not {action!r}"
            )
        image_id = self._image_id_for(target, action)
        if action == "variation_region" and mask is None:
            raise InvalidRequestError("variation_region needs a mask (white marks the area to repaint)")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise InvalidRequestError("prompt, when given, must be non-empty text")
        request = ImagineRequest(
            action=action,
            image_id=image_id,
            prompt=self._check_prompt(prompt.strip()) if prompt else None,
            mask=encode_mask(mask) if mask is not None else None,
            **self._image_job_options(mode, translation, split_images, timeout, callback_url),
        )
        return Job(self._core, ImagineResult, request)

    def upscale(self, target: _ImageTarget, index: int, **options: Any) -> Job[ImagineResult]:
        """Upscale image `index` (1–4, left to right, top to bottom) of a grid."""
        return self.act(target, f"upscale{_grid_index(index)}", **options)

    def variation(self, target: _ImageTarget, index: int, **options: Any) -> Job[ImagineResult]:
        """Four variations of image `index` (1–4) of a grid."""
        return self.act(target, f"variation{_grid_index(index)}", **options)

    def reroll(self, target: _ImageTarget, **options: Any) -> Job[ImagineResult]:
        """Run a grid's prompt again."""
        return self.act(target, "reroll", **options)

    def upscale_2x(self, target: _ImageTarget, **options: Any) -> Job[ImagineResult]:
        """Upscale an upscaled image 2× more."""
        return self.act(target, "upscale_2x", **options)

    def upscale_4x(self, target: _ImageTarget, **options: Any) -> Job[ImagineResult]:
        """Upscale an upscaled image 4× more."""
        return self.act(target, "upscale_4x", **options)

    def variation_subtle(self, target: _ImageTarget, **options: Any) -> Job[ImagineResult]:
        """Subtle variations of an upscaled image."""
        return self.act(target, "variation_subtle", **options)

    def variation_strong(self, target: _ImageTarget, **options: Any) -> Job[ImagineResult]:
        """Strong variations of an upscaled image."""
        return self.act(target, "variation_strong", **options)

    def zoom_out(self, target: _ImageTarget, factor: float | str = 2, **options: Any) -> Job[ImagineResult]:
        """Zoom an upscaled image out by 2 or 1.5, filling the new border."""
        names: dict[float | str, str] = {
            2: "zoom_out_2x",
            "2": "zoom_out_2x",
            1.5: "zoom_out_1_5x",
            "1.5": "zoom_out_1_5x",
        }
        if isinstance(factor, bool) or factor not in names:
            raise InvalidRequestError(f"zoom_out factor must be 2 or 1.5, not {factor!r}")
        return self.act(target, names[factor], **options)

    def pan(self, target: _ImageTarget, direction: PanDirection, **options: Any) -> Job[ImagineResult]:
        """Extend an upscaled image to the left, right, up or down."""
        if direction not in ("left", "right", "up", "down"):
            raise InvalidRequestError(f"pan direction must be left, right, up or down, not {direction!r}")
        return self.act(target, f"pan_{direction}", **options)

    def variation_region(
        self, target: _ImageTarget, mask: Any, prompt: str | None = None, **options: Any
    ) -> Job[ImagineResult]:
        """Repaint the white area of `mask` (bytes, a path, or a PIL image) on an upscaled image."""
        if mask is None:
            raise InvalidRequestError("variation_region needs a mask (white marks the area to repaint)")
        return self.act(target, "variation_region", mask=mask, prompt=prompt, **options)

    # -- edits and videos -------------------------------------------------------------------------------

    def edits(
        self,
        image_url: str,
        prompt: str,
        *,
        mask: Any = None,
        mode: Mode | None = None,
        split_images: bool | None = None,
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Job[EditsResult]:
        """Edit the image at `image_url` as `prompt` says, optionally only inside `mask`."""
        validate_http_url(image_url, "image_url")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("edits needs a non-empty prompt")
        options = self._image_job_options(mode, None, split_images, timeout, callback_url)
        options.pop("translation")
        request = EditsRequest(
            action="generate",
            image_url=image_url,
            prompt=self._check_prompt(prompt.strip()),
            mask=encode_mask(mask) if mask is not None else None,
            **options,
        )
        return Job(self._core, EditsResult, request)

    def videos(
        self,
        image_url: str,
        prompt: str | None = None,
        *,
        end_image_url: str | None = None,
        mode: VideoMode | None = None,
        resolution: VideoResolution | None = None,
        loop: bool | None = None,
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Job[VideoResult]:
        """Animate the image at `image_url` (the first frame) into four short videos."""
        validate_http_url(image_url, "image_url")
        if end_image_url is not None:
            validate_http_url(end_image_url, "end_image_url")
        request = VideosRequest(
            action="generate",
            image_url=image_url,
            end_image_url=end_image_url,
            prompt=self._optional_prompt(prompt),
            **self._video_options(mode, resolution, loop, timeout, callback_url),
        )
        return Job(self._core, VideoResult, request)

    def extend_video(
        self,
        target: VideoResult | str,
        *,
        index: int = 0,
        prompt: str | None = None,
        mode: VideoMode | None = None,
        resolution: VideoResolution | None = None,
        loop: bool | None = None,
        timeout: float | None = None,
        callback_url: str | None = None,
    ) -> Job[VideoResult]:
        """Extend video `index` (0–3) of an earlier videos result (or a `video_id`)."""
        video_id = target.video_id if isinstance(target, VideoResult) else target
        if not isinstance(video_id, str) or not video_id:
            raise InvalidRequestError("extend_video needs a finished videos result or a video_id")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= 3:
            raise InvalidRequestError(f"video index must be 0 to 3, not {index!r}")
        request = VideosRequest(
            action="extend",
            video_id=video_id,
            video_index=index,
            prompt=self._optional_prompt(prompt),
            **self._video_options(mode, resolution, loop, timeout, callback_url),
        )
        return Job(self._core, VideoResult, request)

    # -- short calls ------------------------------------------------------------------------------------

    async def describe(self, image_url: str) -> DescribeResult:
        """Four prompts that describe the image at `image_url`."""
        validate_http_url(image_url, "image_url")
        return await self._call(DescribeRequest(image_url=image_url), DescribeResult)

    async def shorten(self, prompt: str) -> ShortenResult:
        """Up to five shorter versions of `prompt`."""
        text = self._check_prompt(_required_text("prompt", prompt))
        return await self._call(ShortenRequest(prompt=text), ShortenResult)

    async def translate(self, content: str) -> TranslateResult:
        """`content` (e.g. a Chinese prompt) in English."""
        text = self._check_prompt(_required_text("content", content), "content")
        return await self._call(TranslateRequest(content=text), TranslateResult)

    async def seed(self, target: _ImageTarget) -> SeedResult:
        """The seed of a generated image (a result, or the id `follow_up_id` gives for one)."""
        image_id = self._provider.follow_up_id(target) if isinstance(target, ImagineResult) else target
        return await self._call(SeedRequest(image_id=_required_text("image_id", image_id)), SeedResult)

    def follow_up_id(self, result: ImagineResult) -> str | None:
        """The id a follow-up names `result` by, at this provider (AceData: `image_id`; GoAPI: `task_id`)."""
        return self._provider.follow_up_id(result)

    # -- many jobs at once -------------------------------------------------------------------------------

    def run_many(
        self,
        jobs: Iterable[Job[R] | TaskHandle[R]] | AsyncIterable[Job[R] | TaskHandle[R]],
        *,
        concurrency: int | None = None,
        via: WaitVia = "poll",
        fail_fast: bool = False,
        on_accepted: Callable[[int, str], None] | None = None,
    ) -> AbstractAsyncContextManager[Outcomes[R]]:
        """Run many jobs at once and yield each outcome as it completes.

        ```python
        async with mj.run_many(mj.imagine(p) for p in prompts) as outcomes:
            async for outcome in outcomes:
                ...
        ```

        `jobs` (sync or async iterable) is consumed lazily; `concurrency` defaults to the client's
        `Limits.max_in_flight`. `via="poll"` (default) submits asynchronously and shares batched task
        lookups, holding no connection per waiting job. A job's failure is its outcome; with
        `fail_fast`, the first one cancels the rest and is raised. Items may also be `TaskHandle`s of
        jobs submitted earlier: they are waited on, not sent again. `on_accepted(index, task_id)`
        is called the moment each job's task id is known (to journal it). After the block,
        `outcomes.unfinished` lists the task ids of jobs whose outcome you had not received, and
        `outcomes.unconfirmed` the jobs sent whose task id was not known yet.
        """
        limit = concurrency if concurrency is not None else self._options["limits"].max_in_flight
        return run_many(jobs, concurrency=limit, via=via, fail_fast=fail_fast, on_accepted=on_accepted)

    async def find_task(self, job: Job[Any], *, since: float) -> str | None:
        """The task id of an earlier submit of the same request, made since `since` (unix time).

        For picking up after a crash between a submit and writing down its task id: the provider's
        recent tasks are searched for one with this request. None when there is none; raises
        `AmbiguousSubmitError` when several match or the provider cannot list tasks. `since` is
        typically `job.sent_at` of a job you cancelled, or `UnconfirmedSubmit.sent_at` from
        `Outcomes.unconfirmed`.
        """
        return await find_submitted(self._core, job.request, since)

    # -- tasks ------------------------------------------------------------------------------------------

    def task(self, task_id: str, kind: type[R] = ImagineResult) -> TaskHandle[R]:  # type: ignore[assignment]
        """A handle for a job submitted earlier (e.g. by another process), to wait on it.

        The id counts as held by this client from now on, so looking up a lost submit never adopts it.
        """
        handle = TaskHandle(self._core, kind, _required_text("task_id", task_id))
        self._core.known_tasks.add(handle.task_id)
        return handle

    async def retrieve_task(
        self, task_id: str | None = None, *, trace_id: str | None = None
    ) -> TaskRecord[Any]:
        """The record of one task, by its `task_id` or the `trace_id` of its submit."""
        if (task_id is None) == (trace_id is None):
            raise InvalidRequestError("pass exactly one of task_id and trace_id")
        response = await self._post_idempotent(self._provider.task_request(task_id, trace_id=trace_id))
        return self._provider.decode_task(response.body)

    async def retrieve_tasks(
        self, task_ids: Sequence[str] = (), *, trace_ids: Sequence[str] = ()
    ) -> TaskBatch[Any]:
        """The records of many tasks in one request (`retrieve_batch`), and the provider's `count`."""
        if isinstance(task_ids, str) or isinstance(trace_ids, str):
            raise InvalidRequestError("task_ids and trace_ids are lists of ids, not one string")
        if not task_ids and not trace_ids:
            raise InvalidRequestError("pass at least one task id or trace id")
        wire = self._provider.task_batch_request(list(task_ids) or None, trace_ids=list(trace_ids) or None)
        response = await self._post_idempotent(wire)
        return self._provider.decode_task_batch(response.body)

    async def _fetch_records(self, task_ids: list[str]) -> dict[str, bytes]:
        batch = len(task_ids) > 1
        wire = (
            self._provider.task_batch_request(task_ids) if batch else self._provider.task_request(task_ids[0])
        )
        response = await self._post_idempotent(wire)
        return self._provider.task_bodies(response.body, batch=batch)

    async def _post_idempotent(self, wire: WireRequest) -> WireResponse:
        transport = self._core.transport
        return await call_with_retries(
            self._core, lambda: transport.post(wire.path, wire.body, headers=wire.headers or None)
        )

    # -- downloads --------------------------------------------------------------------------------------

    async def download(self, url: str, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> bytes:
        """The file at `url` (an image or video URL from a result), at most `max_bytes` long."""
        chunks: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            chunks.append(chunk)

        await self._download(url, max_bytes, keep)
        return b"".join(chunks)

    async def download_to(
        self, url: str, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    ) -> Path:
        """Stream the file at `url` into `path` chunk by chunk (memory stays flat); return the path.

        Missing folders are made. The file appears under its name only once complete: it is written to
        `path.part` first.
        """
        target = Path(path)
        partial = anyio.Path(target.with_name(target.name + ".part"))
        await partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            async with await anyio.open_file(partial, "wb") as sink:

                async def write(chunk: bytes) -> None:
                    await sink.write(chunk)

                await self._download(url, max_bytes, write)
            await partial.replace(target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await partial.unlink(missing_ok=True)
            raise
        return target

    async def save_images(
        self, result: ImagineResult | EditsResult, directory: str | os.PathLike[str], *, raw: bool = False
    ) -> list[Path]:
        """Save a result's images into `directory`: each of `sub_image_urls` when present, else the image."""
        single = result.raw_image_url if raw and result.raw_image_url else result.image_url
        urls = list(result.sub_image_urls or [single or ""])
        if not all(urls):
            raise InvalidRequestError("this result has no image URL to save (is it final?)")
        folder = Path(directory)
        await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
        stem = result.image_id or result.task_id or "image"
        names = [f"{stem}.png"] if len(urls) == 1 else [f"{stem}_{i}.png" for i in range(1, len(urls) + 1)]
        paths = [folder / name for name in names]
        async with anyio.create_task_group() as group:
            for url, path in zip(urls, paths, strict=True):
                group.start_soon(self._save_one, url, path)
        return paths

    async def _save_one(self, url: str, path: Path) -> None:
        await self.download_to(url, path)

    async def _download(self, url: str, max_bytes: int, sink: Callable[[bytes], Awaitable[None]]) -> None:
        validate_http_url(url, "url")
        transport = self._core.transport
        request = "GET " + url.split("?", 1)[0]
        response = await transport.open_download(url, timeout=transport.client_timeout())
        try:
            declared = response.content_length
            if declared is not None and declared > max_bytes:
                raise ResponseDecodeError(
                    f"{request} is {declared} bytes, over max_bytes={max_bytes}", request=request
                )
            size = 0
            try:
                async for chunk in response.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResponseDecodeError(f"{request} is over max_bytes={max_bytes}", request=request)
                    await sink(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise_connection_error(exc, request, sent=True)
        finally:
            response.release()

    # -- helpers ----------------------------------------------------------------------------------------

    def _check_prompt(self, text: str, what: str = "prompt") -> str:
        return check_prompt_length(text, self._options["max_prompt_chars"], what=what)

    def _optional_prompt(self, prompt: str | None) -> str | None:
        return None if prompt is None else self._check_prompt(_required_text("prompt", prompt))

    async def _call(self, request: Any, kind: type[R]) -> R:
        self._provider.check(request)
        call = self._provider.call_request(request)
        if call.as_task:
            return await self._call_as_task(request, kind, call)
        response = await self._post_idempotent(call)
        result = self._provider.decode_result(kind, response.body, request=f"POST {call.path}")
        if result.failed:
            raise self._provider.job_failed(result, request=f"POST {call.path}")
        return result

    async def _call_as_task(self, request: Any, kind: type[R], call: WireRequest) -> R:
        """A short call the provider runs as a task (GoAPI's describe and seed): submit once, then wait."""
        core = self._core
        # The wait's deadline counts from the submit, as a job's does.
        record = SendRecord(core.poll.deadline)
        async with core.limiter.slot(request):
            task_id, retries = await submit_for_task_id(
                core, call.path, call.body, call.headers or None, request, record=record
            )
            handle = TaskHandle(
                core,
                kind,
                task_id,
                first_poll_delay=core.poll.initial_interval,
                retries_taken=retries,
                record=record,
            )
            return await handle.wait()

    def _image_id_for(self, target: _ImageTarget, action: str) -> str:
        if isinstance(target, ImagineResult):
            follow_up_id = self._provider.follow_up_id(target)
            if target.failed or not follow_up_id or not target.actions:
                raise InvalidRequestError(
                    "actions apply to a finished result; this one is a progress update or a failure"
                )
            allowed = self._provider.allowed_actions(target)
            if action not in allowed:
                raise ActionNotAvailableError(action, sorted(allowed))
            return follow_up_id
        if isinstance(target, str) and target.strip():
            return target.strip()
        raise InvalidRequestError(
            f"expected an ImagineResult or an image_id string, got {type(target).__name__}"
        )

    def _image_job_options(
        self,
        mode: str | None,
        translation: bool | None,
        split_images: bool | None,
        timeout: float | None,
        callback_url: str | None,
    ) -> dict[str, Any]:
        return {
            "mode": _check_choice("mode", mode, _MODES),
            "translation": _check_bool("translation", translation),
            "split_images": _check_bool("split_images", split_images),
            "timeout": _check_timeout(timeout),
            "callback_url": validate_http_url(callback_url, "callback_url")
            if callback_url is not None
            else None,
        }

    def _video_options(
        self,
        mode: str | None,
        resolution: str | None,
        loop: bool | None,
        timeout: float | None,
        callback_url: str | None,
    ) -> dict[str, Any]:
        return {
            "mode": _check_choice("mode", mode, _VIDEO_MODES),
            "resolution": _check_choice("resolution", resolution, _RESOLUTIONS),
            "loop": _check_bool("loop", loop),
            "timeout": _check_timeout(timeout),
            "callback_url": validate_http_url(callback_url, "callback_url")
            if callback_url is not None
            else None,
        }


def _check_choice(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        raise InvalidRequestError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_bool(name: str, value: bool | None) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be True, False or None; got {value!r}")
    return value


def _check_timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidRequestError(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _grid_index(index: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 4:
        raise InvalidRequestError(f"grid image index must be 1 to 4, not {index!r}")
    return index


def _required_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequestError(f"{name} must be non-empty text, got {value!r}")
    return value.strip()


def _first_given(*candidates: tuple[str, str | None]) -> tuple[str, str | None]:
    """The first (source, value) with a non-empty value, else the last one: where an option came from."""
    return next((candidate for candidate in candidates if candidate[1]), candidates[-1])
