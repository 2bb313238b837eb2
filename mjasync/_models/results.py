"""Pure layer: the result Structs every call returns, lenient to what providers actually send.

Decoders for these run with `strict=False`, so `"1024"` decodes as `1024`; unknown fields are ignored
and missing ones are None. Structs are frozen and never hold the API key.

Jobs that report progress have two types: an update (`ImagineUpdate`, `EditsUpdate`, `VideoUpdate`),
what the wire carries and a stream yields, every field optional; and a final result that subclasses it
and narrows what finality guarantees (`ImagineResult.image_url: str`). Providers decode updates;
`finalize` turns the final update into the final type, once per job. The short calls (describe,
shorten, translate, seed) have no progress: their result is its own update.
"""

from typing import Any, ClassVar, TypeVar

import msgspec

from .._exceptions import ResponseDecodeError

__all__ = [
    "DescribeResult",
    "EditsResult",
    "EditsUpdate",
    "ErrorDetail",
    "ImagineResult",
    "ImagineUpdate",
    "Result",
    "SeedResult",
    "ShortenResult",
    "SubmitReceipt",
    "TranslateResult",
    "VideoResult",
    "VideoUpdate",
    "finalize",
]


class ErrorDetail(msgspec.Struct, frozen=True, gc=False):
    """The provider's `error` object: a code such as `bad_request` and a message."""

    code: str | None = None
    message: str | None = None


class Result(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Fields every result and progress update can carry."""

    #: Which endpoint produced it (class-level, not decoded).
    kind: ClassVar[str] = "result"
    #: What the wire carries for this type: the update class a final result narrows, or the class
    #: itself when it has no separate updates (set for every subclass that does not name one).
    update_type: ClassVar[type["Result"]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "update_type" not in cls.__dict__:
            cls.update_type = cls

    task_id: str | None = None
    #: `True` on every progress line too: it never means "done" on its own.
    success: bool | None = None
    trace_id: str | None = None
    #: Set when the job failed: an `ErrorDetail`, or a bare string some gateways send.
    error: ErrorDetail | str | None = None
    #: How many retries it took mjasync to get this (never sent by a provider).
    retries_taken: int = 0
    #: Set by a provider that says outright whether the job is done (GoAPI's `status`); None where
    #: finality is read from the fields themselves (AceData).
    finished: bool | None = None
    #: The provider's own body when its shape differs from this one (GoAPI's task object, every field
    #: kept); None when the body is this result (AceData).
    raw: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        """Whether this body reports a failure (`success: false`, or an `error`)."""
        return self.success is False or self.error is not None

    @property
    def is_final(self) -> bool:
        """Whether this is the finished result, not a progress update (a bare `Result` cannot tell)."""
        return False


Result.update_type = Result


class _ImageFields(Result, kw_only=True, frozen=True, gc=False):
    image_id: str | None = None
    image_url: str | None = None
    image_width: int | None = None
    image_height: int | None = None
    raw_image_url: str | None = None
    raw_image_width: int | None = None
    raw_image_height: int | None = None
    #: 0 to 100.
    progress: float | None = None
    #: The four quadrants, only when `split_images` was set.
    sub_image_urls: list[str] | None = None


class ImagineUpdate(_ImageFields, kw_only=True, frozen=True, gc=False):
    """An imagine progress update, or the final one: a grid, or an upscaled image, with the follow-up `actions`."""

    kind: ClassVar[str] = "imagine"

    #: Follow-up actions the provider offers on this image; empty until the job is final.
    actions: list[str] = []

    @property
    def is_final(self) -> bool:
        """Final means progress 100 with a non-empty `actions` list (`image_id` changes on every update)."""
        if self.finished is not None:
            # The provider said so; its follow-ups name the task, so no image_id is needed.
            return self.finished and not self.failed
        # The field tests first: a progress line (most of a stream) fails them before the `failed` call.
        return (
            bool(self.actions)
            and (self.progress is None or self.progress >= 100)
            and self.image_id is not None
            and not self.failed
        )


class EditsUpdate(_ImageFields, kw_only=True, frozen=True, gc=False):
    """An edits progress update, or the final one."""

    kind: ClassVar[str] = "edits"

    @property
    def is_final(self) -> bool:
        """Final means progress 100 with an image URL."""
        if self.finished is not None:
            return self.finished and not self.failed
        return self.progress is not None and self.progress >= 100 and bool(self.image_url) and not self.failed


class VideoUpdate(Result, kw_only=True, frozen=True, gc=False):
    """A videos progress update, or the final one: four video URLs from one first frame."""

    kind: ClassVar[str] = "videos"

    video_id: str | None = None
    video_urls: list[str] | None = None
    image_url: str | None = None
    image_width: int | None = None
    image_height: int | None = None
    progress: float | None = None

    @property
    def is_final(self) -> bool:
        """Final means the video URLs are there."""
        return bool(self.video_urls) and not self.failed


# The final types narrow with `msgspec.field()`: a required field, as bare `image_url: str` is, which
# pyright also accepts as the override of a field that has a default (bare, it reports "missing a
# default value"). Only what `is_final` and both providers' finals guarantee is narrowed: not
# `image_id` (GoAPI's finished tasks may lack one), sizes (GoAPI sends none) or `progress` (an AceData
# final may omit it).


class ImagineResult(ImagineUpdate, kw_only=True, frozen=True, gc=False):
    """A finished imagine: the image's URL is always there."""

    update_type: ClassVar[type[Result]] = ImagineUpdate

    image_url: str = msgspec.field()


class EditsResult(EditsUpdate, kw_only=True, frozen=True, gc=False):
    """A finished edits job: the image's URL is always there."""

    update_type: ClassVar[type[Result]] = EditsUpdate

    image_url: str = msgspec.field()


class VideoResult(VideoUpdate, kw_only=True, frozen=True, gc=False):
    """A finished videos job: the video URLs are always there."""

    update_type: ClassVar[type[Result]] = VideoUpdate

    video_urls: list[str] = msgspec.field()


class DescribeResult(Result, kw_only=True, frozen=True, gc=False):
    """Four prompts that describe an image."""

    kind: ClassVar[str] = "describe"

    descriptions: list[str] = []

    @property
    def is_final(self) -> bool:
        """Final means the descriptions are there."""
        return not self.failed and bool(self.descriptions)


class ShortenResult(Result, kw_only=True, frozen=True, gc=False):
    """Up to five shorter versions of a prompt."""

    kind: ClassVar[str] = "shorten"

    prompts: list[str] = []

    @property
    def is_final(self) -> bool:
        """Final means the prompts are there."""
        return not self.failed and bool(self.prompts)


class TranslateResult(Result, kw_only=True, frozen=True, gc=False):
    """A prompt translated to English."""

    kind: ClassVar[str] = "translate"

    content: str | None = None

    @property
    def is_final(self) -> bool:
        """Final means the translation is there."""
        return not self.failed and bool(self.content)


class SeedResult(Result, kw_only=True, frozen=True, gc=False):
    """The seed of a generated image."""

    kind: ClassVar[str] = "seed"

    #: A numeric string (some gateways send a number; both decode).
    seed: str | int | None = None

    @property
    def is_final(self) -> bool:
        """Final means the seed is there."""
        return not self.failed and self.seed is not None


class SubmitReceipt(Result, kw_only=True, frozen=True, gc=False):
    """The immediate answer to an asynchronous submit: just the `task_id`."""

    kind: ClassVar[str] = "submit"

    @property
    def is_final(self) -> bool:
        """A receipt is complete once it names the task."""
        return not self.failed and bool(self.task_id)


R = TypeVar("R", bound=Result)


def finalize(kind: type[R], update: Result) -> R:
    """The final update of a job as its final type `kind`, checked for what `kind` narrows.

    Returns `update` itself when it already is a `kind`. Raises `ResponseDecodeError` when a field
    the final type guarantees (`image_url`, `video_urls`) is missing: the provider called it final
    without the thing it made.
    """
    if isinstance(update, kind):
        return update
    try:
        return msgspec.convert(update, kind, from_attributes=True)
    except msgspec.ValidationError as exc:
        raise ResponseDecodeError(
            f"a final {kind.kind} result without what it must carry: {exc}", task_id=update.task_id
        ) from None
