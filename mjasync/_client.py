"""Client layer: `Client`, the one object users hold — its options, lifecycle, and the calls it offers.

The calls are thin: `mjasync._requests` builds and checks each request (pure, no client needed), the
client wraps it in a `Job` or sends it as a short call, and the transport does every download.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, overload

import anyio
import msgspec

from . import _requests as requests
from ._batch import Outcomes, run_many
from ._config import (
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    ClientSettings,
    Limits,
    PollPolicy,
    RetryPolicy,
    Timeouts,
)
from ._engine import ClientStatistics, build_engine
from ._inbox import CallbackRouter
from ._job import EditsJob, ImagineHandle, ImagineJob, Job, TaskHandle, VideoJob, short_call
from ._limiter import Limiter
from ._models.params import (
    MAX_PROMPT_CHARS,
    check_max_prompt_chars,
    validate_headers,
)
from ._models.requests import CallRequest, ImagineRequest, JobRequest
from ._models.results import (
    DescribeResult,
    EditsResult,
    EditsUpdate,
    ImagineResult,
    ImagineUpdate,
    Result,
    SeedResult,
    ShortenResult,
    TranslateResult,
    VideoResult,
    VideoUpdate,
)
from ._models.task import TaskBatch, TaskRecord
from ._providers import ProviderName
from ._requests import (
    BlendOptions,
    EditsOptions,
    ExtendVideoOptions,
    FollowUpOptions,
    GridIndex,
    ImageJobOptions,
    ImageTarget,
    ImagineOptions,
    VideosOptions,
    ZoomFactor,
)
from ._transport import HTTPSession, SessionPool, files
from ._types import PanDirection, WaitVia

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_MAX_DOWNLOAD_BYTES", "Client"]

R = TypeVar("R", bound=Result)
U = TypeVar("U", bound=Result)


class Client:
    """An asyncio client for a hosted Midjourney API.

    ```python
    async with mjasync.Client(api_key="...", base_url="...") as mj:
        grid = await mj.imagine("Lamborghini speeds inside a volcano")
        upscaled = await mj.upscale(grid, 2)
    ```

    The key comes from `api_key`, else `MJASYNC_API_KEY`, else the provider's own variable (AceData's
    `ACEDATACLOUD_API_TOKEN`, the proxy's `MJ_API_SECRET`; GoAPI has none; none reads another's), and must be
    visible ASCII (no whitespace, line breaks or control characters: it goes into a header as given).
    The base URL comes from `base_url`, else `MJASYNC_BASE_URL`, else the provider's, and must be an
    origin, `scheme://host[:port]` (a trailing "/" is fine): mjasync adds the API paths itself, so a
    path prefix, a query, a fragment or credentials (`user:password@`) are refused rather than
    supported. `provider` is "acedata" (the default), "goapi" or "midjourney-proxy" (the key in
    `mj-api-secret`; "midjourney-proxy-bearer" sends it as `Authorization: Bearer`, for gateways such
    as new-api); the calls are the same, and what one lacks raises `UnsupportedFeatureError`. A prompt longer than `max_prompt_chars` (default
    `MAX_PROMPT_CHARS`, 6000; image URLs and `--flags` count) is refused before anything is sent.
    The HTTP session is made inside the running loop on first use and closed by `aclose()` (or
    `async with`), unless you passed your own `http_session`, which you then close yourself.

    With `webhooks=` (a `WebhookReceiver`), jobs ask the provider to call back and are awaited that
    way by default (`wait_via="callback"`), polling only when a callback is late.

    `limits` caps this client's jobs in flight (`Limits.max_in_flight`); `limiter=` replaces that cap
    with one shared by every client that uses it, in any process or host
    (`mjasync.redis.SharedLimits`, for one account used from many workers).

    Every wait reads `clock` (seconds, `time.monotonic` by default) and sleeps with `sleep`: tests of
    time-dependent code pass a clock and a sleep they move themselves. Requests' own timeouts and
    cancel scopes still run on the event loop's time.
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
        http_session: HTTPSession | None = None,
        webhooks: CallbackRouter | None = None,
        limiter: Limiter | None = None,
        wait_via: WaitVia | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        settings = ClientSettings(
            provider=provider,
            timeouts=timeouts or Timeouts(),
            limits=limits or Limits(),
            poll=poll or PollPolicy(),
            retry=retry or RetryPolicy(),
            default_headers=validate_headers(default_headers),
            wait_via=("callback" if webhooks is not None else "stream") if wait_via is None else wait_via,
            max_line_bytes=max_line_bytes,
            max_response_bytes=max_response_bytes,
            max_prompt_chars=check_max_prompt_chars(max_prompt_chars),
        )
        pool = SessionPool(limits=settings.limits, session=http_session)
        self._configure(
            settings,
            api_key,
            base_url,
            webhooks,
            pool,
            owns_pool=True,
            limiter=limiter,
            clock=clock,
            sleep=sleep,
        )

    def _configure(
        self,
        settings: ClientSettings,
        api_key: str | None,
        base_url: str | None,
        webhooks: CallbackRouter | None,
        pool: SessionPool,
        *,
        owns_pool: bool,
        limiter: Limiter | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._engine, self._api_key, self._base_url = build_engine(
            settings,
            api_key,
            base_url,
            os.environ,
            pool=pool,
            callbacks=webhooks,
            limiter=limiter,
            clock=clock,
            sleep=sleep,
        )
        self._provider = self._engine.provider
        self._settings = settings
        self._webhooks = webhooks
        self._pool = pool
        self._owns_pool = owns_pool

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

    def statistics(self) -> ClientStatistics:
        """What this client has done so far: task lookups (each one shared by every job waiting then),
        the ids looked up in them, and the in-flight limiter's state."""
        return self._engine.statistics()

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
        headers = None if default_headers is None else validate_headers(default_headers)
        prompt_limit = None if max_prompt_chars is None else check_max_prompt_chars(max_prompt_chars)
        changes = {
            "timeouts": timeouts,
            "poll": poll,
            "retry": retry,
            "default_headers": headers,
            "wait_via": wait_via,
            "max_line_bytes": max_line_bytes,
            "max_response_bytes": max_response_bytes,
            "max_prompt_chars": prompt_limit,
        }
        settings = msgspec.structs.replace(
            self._settings, **{name: value for name, value in changes.items() if value is not None}
        )
        api_key, base_url = api_key or self._api_key, base_url or self._base_url
        same_account = api_key == self._api_key and base_url == self._base_url
        limiter = self._engine.limiter if same_account else None
        derived = Client.__new__(Client)
        engine = self._engine
        derived._configure(
            settings,
            api_key,
            base_url,
            self._webhooks,
            self._pool,
            owns_pool=False,
            limiter=limiter,
            clock=engine.clock,
            sleep=engine.sleep,
        )
        return derived

    # -- imagine and its follow-up actions ------------------------------------------------------------

    def imagine(self, prompt: str, **options: Unpack[ImagineOptions]) -> ImagineJob:
        """Generate a 2×2 grid from a prompt; with `image_urls` (1–5), an image prompt.

        `params` (`PromptParams`) renders into `--flags`. `version` is sent as the body field (for
        billing) and as `--v` in the prompt (which picks the model); `hd` likewise as `--hd`;
        `aspect_ratio` ("16:9") as `--ar`, and as a field where the provider has one.
        `skip_prompt_check` is GoAPI's. `server_wait` (every job takes it) is how long the provider
        holds a synchronous long wait (`via="sync"`) before answering 504: a server-side setting, not
        a client timeout (those are `Timeouts` and `PollPolicy.deadline`). Nothing is sent until the
        job is awaited, streamed or submitted.
        """
        return self._image(requests.imagine(self._provider, prompt, **self._limit, **options))

    def blend(
        self, image_urls: Sequence[str], prompt: str = "", **options: Unpack[BlendOptions]
    ) -> ImagineJob:
        """Blend 2–5 images (their URLs go before the optional text, as AceData expects).

        `dimension` (square, portrait or landscape) shapes the result; GoAPI takes no text or
        parameters with a blend.
        """
        return self._image(requests.blend(self._provider, image_urls, prompt, **self._limit, **options))

    def act(self, target: ImageTarget, action: str, **options: Unpack[FollowUpOptions]) -> ImagineJob:
        """Apply a follow-up `action` (any string the result lists) to a finished result or an `image_id`.

        Given a result, an action it does not offer is refused here, before anything is sent.
        """
        return self._image(requests.act(self._provider, target, action, **self._limit, **options))

    def upscale(
        self, target: ImageTarget, index: GridIndex, **options: Unpack[FollowUpOptions]
    ) -> ImagineJob:
        """Upscale image `index` (1–4, left to right, top to bottom) of a grid."""
        return self._image(requests.upscale(self._provider, target, index, **self._limit, **options))

    def variation(
        self, target: ImageTarget, index: GridIndex, **options: Unpack[FollowUpOptions]
    ) -> ImagineJob:
        """Four variations of image `index` (1–4) of a grid."""
        return self._image(requests.variation(self._provider, target, index, **self._limit, **options))

    def reroll(self, target: ImageTarget, **options: Unpack[FollowUpOptions]) -> ImagineJob:
        """Run a grid's prompt again."""
        return self._image(requests.act(self._provider, target, "reroll", **self._limit, **options))

    def upscale_2x(self, target: ImageTarget, **options: Unpack[FollowUpOptions]) -> ImagineJob:
        """Upscale an upscaled image 2× more."""
        return self._image(requests.act(self._provider, target, "upscale_2x", **self._limit, **options))

    def upscale_4x(self, target: ImageTarget, **options: Unpack[FollowUpOptions]) -> ImagineJob:
        """Upscale an upscaled image 4× more."""
        return self._image(requests.act(self._provider, target, "upscale_4x", **self._limit, **options))

    def variation_subtle(self, target: ImageTarget, **options: Unpack[FollowUpOptions]) -> ImagineJob:
        """Subtle variations of an upscaled image."""
        return self._image(requests.act(self._provider, target, "variation_subtle", **self._limit, **options))

    def variation_strong(self, target: ImageTarget, **options: Unpack[FollowUpOptions]) -> ImagineJob:
        """Strong variations of an upscaled image."""
        return self._image(requests.act(self._provider, target, "variation_strong", **self._limit, **options))

    def zoom_out(
        self, target: ImageTarget, factor: ZoomFactor = 2, **options: Unpack[FollowUpOptions]
    ) -> ImagineJob:
        """Zoom an upscaled image out by 2 or 1.5 (also "2", "1.5"), filling the new border."""
        return self._image(requests.zoom_out(self._provider, target, factor, **self._limit, **options))

    def pan(
        self, target: ImageTarget, direction: PanDirection, **options: Unpack[FollowUpOptions]
    ) -> ImagineJob:
        """Extend an upscaled image to the left, right, up or down."""
        return self._image(requests.pan(self._provider, target, direction, **self._limit, **options))

    def variation_region(
        self,
        target: ImageTarget,
        mask: Any,
        prompt: str | None = None,
        **options: Unpack[ImageJobOptions],
    ) -> ImagineJob:
        """Repaint the white area of `mask` (bytes, a path, or a PIL image) on an upscaled image."""
        return self._image(
            requests.variation_region(self._provider, target, mask, prompt, **self._limit, **options)
        )

    # -- edits and videos -------------------------------------------------------------------------------

    def edits(self, image_url: str, prompt: str, **options: Unpack[EditsOptions]) -> EditsJob:
        """Edit the image at `image_url` as `prompt` says, optionally only inside `mask`."""
        request = requests.edits(self._provider, image_url, prompt, **self._limit, **options)
        return self._job(EditsResult, EditsUpdate, request)

    def videos(self, image_url: str, prompt: str | None = None, **options: Unpack[VideosOptions]) -> VideoJob:
        """Animate the image at `image_url` (the first frame) into four short videos.

        `end_image_url` gives a last frame; `mode` is "fast" or "turbo", `resolution` "480p" or "720p".
        """
        request = requests.videos(self._provider, image_url, prompt, **self._limit, **options)
        return self._job(VideoResult, VideoUpdate, request)

    def extend_video(self, target: VideoResult | str, **options: Unpack[ExtendVideoOptions]) -> VideoJob:
        """Extend video `index` (0–3) of an earlier videos result (or a `video_id`)."""
        request = requests.extend_video(self._provider, target, **self._limit, **options)
        return self._job(VideoResult, VideoUpdate, request)

    # -- short calls ------------------------------------------------------------------------------------

    async def describe(self, image_url: str) -> DescribeResult:
        """Four prompts that describe the image at `image_url`."""
        return await self._call(requests.describe(self._provider, image_url), DescribeResult)

    async def shorten(self, prompt: str) -> ShortenResult:
        """Up to five shorter versions of `prompt`."""
        return await self._call(requests.shorten(self._provider, prompt, **self._limit), ShortenResult)

    async def translate(self, content: str) -> TranslateResult:
        """`content` (e.g. a Chinese prompt) in English."""
        return await self._call(requests.translate(self._provider, content, **self._limit), TranslateResult)

    async def seed(self, target: ImageTarget) -> SeedResult:
        """The seed of a generated image (a result, or the id `follow_up_id` gives for one)."""
        return await self._call(requests.seed(self._provider, target), SeedResult)

    def follow_up_id(self, result: ImagineUpdate) -> str | None:
        """The id a follow-up names `result` by, at this provider (AceData: `image_id`; GoAPI: `task_id`)."""
        return self._provider.follow_up_id(result)

    # -- many jobs at once -------------------------------------------------------------------------------

    def run_many(
        self,
        jobs: Iterable[Job[R, Any] | TaskHandle[R, Any]] | AsyncIterable[Job[R, Any] | TaskHandle[R, Any]],
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
        limit = concurrency if concurrency is not None else self._settings.limits.max_in_flight
        return run_many(jobs, concurrency=limit, via=via, fail_fast=fail_fast, on_accepted=on_accepted)

    async def find_task(self, job: Job[Any, Any], *, since: float) -> str | None:
        """The task id of an earlier submit of the same request, made since `since` (unix time).

        For picking up after a crash between a submit and writing down its task id: the provider's
        recent tasks are searched for one with this request (one made by this very job, if it was
        sent; a job rebuilt with the same request finds any job's). None when there is none; raises
        `AmbiguousSubmitError` when several match or the provider cannot list tasks. `since` is
        typically `job.sent_at` of a job you cancelled, or `UnconfirmedSubmit.sent_at` from
        `Outcomes.unconfirmed`.
        """
        # The job that was sent knows its nonce: only its own task matches, never an identical
        # sibling's. A fresh one built from the same request (after a crash) matches any of them.
        return await self._engine.find_submitted(job.request, since, nonce=job._sent_nonce())

    # -- tasks ------------------------------------------------------------------------------------------

    @overload
    def task(self, task_id: str) -> ImagineHandle: ...
    @overload
    def task(self, task_id: str, kind: type[EditsResult]) -> TaskHandle[EditsResult, EditsUpdate]: ...
    @overload
    def task(self, task_id: str, kind: type[VideoResult]) -> TaskHandle[VideoResult, VideoUpdate]: ...
    @overload
    def task(self, task_id: str, kind: type[R]) -> TaskHandle[R, Result]: ...
    def task(self, task_id: str, kind: type[Result] = ImagineResult) -> TaskHandle[Any, Any]:
        """A handle for a job submitted earlier (e.g. by another process), to wait on it.

        `kind` is the type of its result (an imagine's unless said). The id counts as held by this
        client from now on, so looking up a lost submit never adopts it.
        """
        handle = TaskHandle(self._engine, kind, kind.update_type, requests.required_text("task_id", task_id))
        self._engine.known_tasks.add(handle.task_id)
        return handle

    async def retrieve_task(
        self, task_id: str | None = None, *, trace_id: str | None = None
    ) -> TaskRecord[Any]:
        """The record of one task, by its `task_id` or the `trace_id` of its submit."""
        response = await self._engine.post(requests.task_lookup(self._provider, task_id, trace_id))
        return self._provider.decode_task(response.value.body)

    async def retrieve_tasks(
        self, task_ids: Sequence[str] = (), *, trace_ids: Sequence[str] = ()
    ) -> TaskBatch[Any]:
        """The records of many tasks in one request (`retrieve_batch`), and the provider's `count`."""
        wire = requests.task_batch_lookup(self._provider, task_ids, trace_ids)
        response = await self._engine.post(wire)
        return self._provider.decode_task_batch(response.value.body)

    # -- downloads --------------------------------------------------------------------------------------

    async def download(self, url: str, *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> bytes:
        """The file at `url` (an image or video URL from a result), at most `max_bytes` long."""
        return await files.download(self._engine.transport, url, max_bytes=max_bytes)

    async def download_to(
        self, url: str, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    ) -> Path:
        """Stream the file at `url` into `path` chunk by chunk (memory stays flat); return the path.

        Missing folders are made. The file appears under its name only once complete: it is written to
        `path.part` first.
        """
        return await files.download_to(self._engine.transport, url, path, max_bytes=max_bytes)

    async def save_images(
        self, result: ImagineResult | EditsResult, directory: str | os.PathLike[str], *, raw: bool = False
    ) -> list[Path]:
        """Save a result's images into `directory`: each of `sub_image_urls` when present, else the image."""
        transport, limit = self._engine.transport, DEFAULT_MAX_DOWNLOAD_BYTES
        return await files.save_images(transport, result, directory, raw=raw, max_bytes=limit)

    # -- helpers ----------------------------------------------------------------------------------------

    @property
    def _limit(self) -> _PromptLimit:
        """The client's prompt length limit, as the request builders take it."""
        return {"max_prompt_chars": self._settings.max_prompt_chars}

    def _job(self, kind: type[R], update_type: type[U], request: JobRequest) -> Job[R, U]:
        return Job(self._engine, kind, update_type, request)

    def _image(self, request: ImagineRequest) -> ImagineJob:
        return Job(self._engine, ImagineResult, ImagineUpdate, request)

    async def _call(self, request: CallRequest, kind: type[R]) -> R:
        return await short_call(self._engine, request, kind)


class _PromptLimit(TypedDict):
    max_prompt_chars: int
