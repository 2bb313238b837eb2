"""Pure layer: the result Structs every call returns, lenient to what providers actually send.

Decoders for these run with `strict=False`, so `"1024"` decodes as `1024`; unknown fields are ignored
and missing ones are None. Structs are frozen and never hold the API key.
"""

from typing import Any, ClassVar

import msgspec

__all__ = [
    "DescribeResult",
    "EditsResult",
    "ErrorDetail",
    "ImagineResult",
    "Result",
    "SeedResult",
    "ShortenResult",
    "SubmitReceipt",
    "TranslateResult",
    "VideoResult",
]


class ErrorDetail(msgspec.Struct, frozen=True, gc=False):
    """The provider's `error` object: a code such as `bad_request` and a message."""

    code: str | None = None
    message: str | None = None


class Result(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Fields every result and progress update can carry."""

    #: Which endpoint produced it (class-level, not decoded).
    kind: ClassVar[str] = "result"

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


class ImagineResult(_ImageFields, kw_only=True, frozen=True, gc=False):
    """An imagine result or progress update: a grid, or an upscaled image, with the follow-up `actions`."""

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


class EditsResult(_ImageFields, kw_only=True, frozen=True, gc=False):
    """An edits result or progress update."""

    kind: ClassVar[str] = "edits"

    @property
    def is_final(self) -> bool:
        """Final means progress 100 with an image URL."""
        if self.finished is not None:
            return self.finished and not self.failed
        return self.progress is not None and self.progress >= 100 and bool(self.image_url) and not self.failed


class VideoResult(Result, kw_only=True, frozen=True, gc=False):
    """A videos result or progress update: four video URLs from one first frame."""

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
