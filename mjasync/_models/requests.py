"""Pure layer: what a call asks for, before a provider maps it onto its wire format.

Field names follow AceData, the first provider; another provider's module renames them. Every field
defaults to None and `omit_defaults` leaves it out, so a request carries exactly what the caller set.
"""

import msgspec

__all__ = [
    "DescribeRequest",
    "EditsRequest",
    "ImagineRequest",
    "AnyRequest",
    "CallRequest",
    "JobRequest",
    "SeedRequest",
    "ShortenRequest",
    "TranslateRequest",
    "VideosRequest",
]


class _Request(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    pass


class _JobFields(_Request, kw_only=True, frozen=True, omit_defaults=True):
    """Fields shared by the long-running endpoints (imagine, edits, videos)."""

    mode: str | None = None
    callback_url: str | None = None
    #: `async` on the wire: answer at once with a task_id.
    async_: bool | None = msgspec.field(default=None, name="async")
    #: Seconds the server holds a synchronous call before it answers 504.
    timeout: float | None = None


class ImagineRequest(_JobFields, kw_only=True, frozen=True, omit_defaults=True):
    """A generate, or a follow-up action on an earlier image.

    Fields AceData's body has not (`aspect_ratio`, `skip_prompt_check`, `blend_urls`, `dimension`)
    serve providers that take them as fields; for AceData the prompt already says the same.
    """

    action: str
    prompt: str | None = None
    #: The image a follow-up acts on, by the id its provider uses for that (`Provider.follow_up_id`):
    #: AceData's `image_id`, GoAPI's task id.
    image_id: str | None = None
    mask: str | None = None
    translation: bool | None = None
    split_images: bool | None = None
    version: str | None = None
    hd: bool | None = None
    quality: str | None = None
    style_reference: bool | None = None
    moodboard: bool | None = None
    aspect_ratio: str | None = None
    skip_prompt_check: bool | None = None
    #: The images of a blend (also at the head of `prompt`, where AceData reads them).
    blend_urls: list[str] | None = None
    #: A blend's shape: square, portrait or landscape (also as `--ar` in `prompt`).
    dimension: str | None = None


class EditsRequest(_JobFields, kw_only=True, frozen=True, omit_defaults=True):
    """Edit an uploaded image with a prompt, optionally inside a mask."""

    action: str
    image_url: str | None = None
    prompt: str | None = None
    mask: str | None = None
    split_images: bool | None = None


class VideosRequest(_JobFields, kw_only=True, frozen=True, omit_defaults=True):
    """Animate a first frame (`generate`), or `extend` an earlier video."""

    action: str
    prompt: str | None = None
    image_url: str | None = None
    end_image_url: str | None = None
    video_id: str | None = None
    video_index: int | None = None
    resolution: str | None = None
    loop: bool | None = None


class DescribeRequest(_Request, kw_only=True, frozen=True, omit_defaults=True):
    image_url: str


class ShortenRequest(_Request, kw_only=True, frozen=True, omit_defaults=True):
    prompt: str


class TranslateRequest(_Request, kw_only=True, frozen=True, omit_defaults=True):
    content: str


class SeedRequest(_Request, kw_only=True, frozen=True, omit_defaults=True):
    #: As in `ImagineRequest.image_id`: the provider's id for the image (AceData) or its task (GoAPI).
    image_id: str


JobRequest = ImagineRequest | EditsRequest | VideosRequest
CallRequest = DescribeRequest | ShortenRequest | TranslateRequest | SeedRequest
AnyRequest = JobRequest | CallRequest
