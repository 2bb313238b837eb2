"""Pure layer: typed Midjourney prompt parameters, prompt assembly, mask encoding and input checks.

`PromptParams` renders typed values into the inline `--flags` Midjourney reads from the prompt;
`build_prompt` puts image URLs, text and flags together the way `/midjourney/imagine` expects;
`encode_mask` turns a mask (bytes, file, PIL image) into the base64 string `variation_region` takes.
The checks of what a caller hands the client (`validate_http_url`, `validate_origin_url`,
`validate_api_key`, `validate_headers`, `check_prompt_length`) refuse careless input with an
`InvalidRequestError` before anything is sent, and never repeat a secret in their messages.
Only msgspec and the standard library are imported here; Pillow is only touched when the caller
already hands us a PIL image.
"""

import base64
import binascii
import io
import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import msgspec

from .._exceptions import InvalidRequestError

__all__ = [
    "MAX_IMAGE_URLS",
    "MAX_MASK_BYTES",
    "MAX_PROMPT_CHARS",
    "PromptParams",
    "Quality",
    "build_prompt",
    "check_max_prompt_chars",
    "check_prompt_length",
    "encode_mask",
    "validate_api_key",
    "validate_headers",
    "validate_http_url",
    "validate_origin_url",
]

#: Values Midjourney accepts for `--q`.
Quality = Literal[".25", ".5", "1", "2", "4"]

#: Most image URLs a prompt may start with (AceData: "a maximum of 5 image URLs").
MAX_IMAGE_URLS: Final = 5
#: Largest mask we will base64-encode; a mask is a single image, so anything bigger is a mistake.
MAX_MASK_BYTES: Final = 16 * 1024 * 1024
#: Longest prompt we send, in characters (code points), image URLs and `--flags` included. Neither
#: AceData nor GoAPI documents a maximum; Midjourney's `/imagine` is a Discord slash command, whose
#: text option holds at most 6000 characters, so a longer prompt cannot be meant and would only be
#: paid for and fail. Change it with `Client(max_prompt_chars=...)`.
MAX_PROMPT_CHARS: Final = 6000

_QUALITIES: Final = (".25", ".5", "1", "2", "4")
_INT_RANGES: Final[dict[str, tuple[int, int]]] = {
    "stylize": (0, 1000),
    "chaos": (0, 100),
    "seed": (0, 4_294_967_295),
    "weird": (0, 3000),
    "stop": (10, 100),
    "repeat": (1, 40),
    "style_weight": (0, 1000),
    "character_weight": (0, 100),
    "omni_weight": (1, 1000),
}
_BOOL_FIELDS: Final = ("tile", "raw", "draft", "personalize")
_ASPECT_RE: Final = re.compile(r"([1-9][0-9]*):([1-9][0-9]*)")
# Model versions look like "7" or "6.1"; a format check rather than a fixed list, so a new
# Midjourney release does not need a library release.
_VERSION_RE: Final = re.compile(r"[1-9][0-9]?(?:\.[0-9])?")
_SREF_CODE_RE: Final = re.compile(r"[0-9]+")
# Midjourney treats an em dash like "--" (Apple keyboards turn one into the other), so both start a flag.
_FLAG_START: Final = ("--", "\u2014")
_TEXT_FLAG_RE: Final = re.compile(r"(?:^|(?<=\s))(?:--|\u2014)([A-Za-z]+)")

# Render order and flag name for every field; `render()` walks this table.
_FLAGS: Final[tuple[tuple[str, str], ...]] = (
    ("aspect_ratio", "ar"),
    ("version", "v"),
    ("niji", "niji"),
    ("stylize", "s"),
    ("chaos", "c"),
    ("quality", "q"),
    ("seed", "seed"),
    ("weird", "weird"),
    ("stop", "stop"),
    ("repeat", "r"),
    ("image_weight", "iw"),
    ("style_reference", "sref"),
    ("style_weight", "sw"),
    ("character_reference", "cref"),
    ("character_weight", "cw"),
    ("omni_reference", "oref"),
    ("omni_weight", "ow"),
    ("tile", "tile"),
    ("raw", "raw"),
    ("draft", "draft"),
    ("personalize", "p"),
    ("no", "no"),
)

# Every spelling of a flag Midjourney accepts in a prompt, by the field that renders it. `version`
# and `niji` share a group: a text with `--niji 6` conflicts with `version=` and vice versa.
_TEXT_ALIASES: Final[dict[str, frozenset[str]]] = {
    "aspect_ratio": frozenset({"ar", "aspect"}),
    "version": frozenset({"v", "version", "niji"}),
    "niji": frozenset({"niji", "v", "version"}),
    "stylize": frozenset({"s", "stylize"}),
    "chaos": frozenset({"c", "chaos"}),
    "quality": frozenset({"q", "quality"}),
    "seed": frozenset({"seed"}),
    "weird": frozenset({"w", "weird"}),
    "stop": frozenset({"stop"}),
    "repeat": frozenset({"r", "repeat"}),
    "image_weight": frozenset({"iw"}),
    "style_reference": frozenset({"sref"}),
    "style_weight": frozenset({"sw"}),
    "character_reference": frozenset({"cref"}),
    "character_weight": frozenset({"cw"}),
    "omni_reference": frozenset({"oref"}),
    "omni_weight": frozenset({"ow"}),
    "tile": frozenset({"tile"}),
    "raw": frozenset({"raw", "style"}),
    "draft": frozenset({"draft"}),
    "personalize": frozenset({"p", "personalize", "profile"}),
    "no": frozenset({"no"}),
}


def _preview(value: object, limit: int = 80) -> str:
    """A repr of `value` short enough for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: object) -> str:
    """The bare class name of `value`, for error messages."""
    return type(value).__name__


class PromptParams(
    msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True, repr_omit_defaults=True
):
    """Typed Midjourney prompt parameters, validated on creation and rendered as `--flags`.

    Every field is optional; unset fields render nothing. Change a copy with
    `msgspec.structs.replace(params, stylize=500)`.
    """

    #: `--ar W:H`, e.g. "16:9" (positive integers).
    aspect_ratio: str | None = None
    #: `--v`, a model version such as "6.1", "7" or "8.2". Excludes `niji`.
    version: str | None = None
    #: `--niji`, the anime model version such as "6". Excludes `version`.
    niji: str | None = None
    #: `--s`, 0-1000.
    stylize: int | None = None
    #: `--c`, 0-100.
    chaos: int | None = None
    #: `--q`, one of ".25", ".5", "1", "2", "4".
    quality: Quality | None = None
    #: `--seed`, 0-4294967295.
    seed: int | None = None
    #: `--weird`, 0-3000.
    weird: int | None = None
    #: `--stop`, 10-100.
    stop: int | None = None
    #: `--r`, 1-40.
    repeat: int | None = None
    #: `--iw`, 0-3: how much the leading image URLs count against the text.
    image_weight: float | None = None
    #: `--sref`: http(s) URLs, numeric style codes, or "random".
    style_reference: tuple[str, ...] = ()
    #: `--sw`, 0-1000.
    style_weight: int | None = None
    #: `--cref`: http(s) URLs of the character.
    character_reference: tuple[str, ...] = ()
    #: `--cw`, 0-100.
    character_weight: int | None = None
    #: `--oref`: an http(s) URL.
    omni_reference: str | None = None
    #: `--ow`, 1-1000.
    omni_weight: int | None = None
    #: `--tile`.
    tile: bool = False
    #: `--raw`.
    raw: bool = False
    #: `--draft`.
    draft: bool = False
    #: `--p` (use the personalization profile).
    personalize: bool = False
    #: `--no a, b`: things to leave out.
    no: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Check every field; raise `InvalidRequestError` naming the first bad one."""
        for name, (lo, hi) in _INT_RANGES.items():
            _check_int(name, getattr(self, name), lo, hi)
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InvalidRequestError(f"{name} must be a bool, got {_type_name(value)} {_preview(value)}")

        if self.aspect_ratio is not None:
            _check_str("aspect_ratio", self.aspect_ratio)
            if not _ASPECT_RE.fullmatch(self.aspect_ratio):
                raise InvalidRequestError(
                    f"aspect_ratio must be 'W:H' with positive integers (e.g. '16:9'), got {_preview(self.aspect_ratio)}"
                )
        for name in ("version", "niji"):
            value = getattr(self, name)
            if value is not None:
                _check_str(name, value)
                if not _VERSION_RE.fullmatch(value):
                    raise InvalidRequestError(
                        f"{name} must be a version string like '7' or '6.1', got {_preview(value)}"
                    )
        if self.version is not None and self.niji is not None:
            raise InvalidRequestError(
                f"version ({self.version!r}) and niji ({self.niji!r}) are mutually exclusive; set only one"
            )
        if self.quality is not None and (not isinstance(self.quality, str) or self.quality not in _QUALITIES):
            allowed = ", ".join(repr(q) for q in _QUALITIES)
            raise InvalidRequestError(f"quality must be one of {allowed}, got {_preview(self.quality)}")

        if self.image_weight is not None:
            value = self.image_weight
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(
                    f"image_weight must be a number between 0 and 3, got {_type_name(value)} {_preview(value)}"
                )
            if not math.isfinite(value) or not 0 <= value <= 3:
                raise InvalidRequestError(f"image_weight must be between 0 and 3, got {value!r}")

        for i, item in enumerate(_check_tuple("style_reference", self.style_reference)):
            what = f"style_reference[{i}]"
            _check_str(what, item)
            if item != "random" and not _SREF_CODE_RE.fullmatch(item):
                if not item.lower().startswith(("http://", "https://")):
                    raise InvalidRequestError(
                        f"{what} must be an http(s) URL, a numeric style code or 'random', got {_preview(item)}"
                    )
                validate_http_url(item, what)
        for i, item in enumerate(_check_tuple("character_reference", self.character_reference)):
            validate_http_url(item, f"character_reference[{i}]")
        if self.omni_reference is not None:
            validate_http_url(self.omni_reference, "omni_reference")

        for i, item in enumerate(_check_tuple("no", self.no)):
            what = f"no[{i}]"
            _check_str(what, item)
            if not item.strip():
                raise InvalidRequestError(f"{what} must not be empty")
            # A flag inside `--no` would end the list early and smuggle in another parameter.
            if any(mark in item for mark in _FLAG_START):
                raise InvalidRequestError(f"{what} must not contain '--', got {_preview(item)}")
            if any(ch in item for ch in "\r\n"):
                raise InvalidRequestError(f"{what} must be a single line, got {_preview(item)}")
        # Runs of whitespace inside an item mean nothing to Midjourney: keep the one form we send.
        normalised = tuple(" ".join(item.split()) for item in self.no)
        if normalised != self.no:
            msgspec.structs.force_setattr(self, "no", normalised)

    def render(self) -> str:
        """The flags as Midjourney expects them, in a fixed order ("" when nothing is set)."""
        parts: list[str] = []
        for name, flag in _FLAGS:
            value = getattr(self, name)
            if not _is_set(value):
                continue
            if value is True:
                parts.append(f"--{flag}")
            elif name == "no":
                parts.append(f"--no {', '.join(value)}")
            elif isinstance(value, tuple):
                parts.append(f"--{flag} {' '.join(value)}")
            elif name == "image_weight":
                parts.append(f"--{flag} {_format_number(value)}")
            else:
                parts.append(f"--{flag} {value}")
        return " ".join(parts)


def _is_set(value: object) -> bool:
    """Whether a field value renders a flag (0 does; None, False and () do not)."""
    return value is not None and value is not False and value != ()


def _set_fields(params: PromptParams) -> list[str]:
    """Names of the fields of `params` that render a flag, in render order."""
    return [name for name, _ in _FLAGS if _is_set(getattr(params, name))]


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    """Raise unless `value` is None or an int (not a bool) in `lo..hi`."""
    if value is None:
        return
    # bool is an int subclass; `stylize=True` is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{name} must be an int between {lo} and {hi}, got {_type_name(value)} {_preview(value)}"
        )
    if not lo <= value <= hi:
        raise InvalidRequestError(f"{name} must be between {lo} and {hi}, got {value}")


def _check_str(name: str, value: object) -> None:
    """Raise unless `value` is a str."""
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a str, got {_type_name(value)} {_preview(value)}")


def _check_tuple(name: str, value: object) -> tuple[Any, ...]:
    """Return `value` if it is a tuple; raise otherwise."""
    # A lone string would iterate as characters, and a list would make the frozen struct unhashable.
    if not isinstance(value, tuple):
        raise InvalidRequestError(
            f"{name} must be a tuple of str, got {_type_name(value)} {_preview(value)}"
            + (f"; for one item write ({value!r},)" if isinstance(value, str) else "")
        )
    return value


def _format_number(value: float) -> str:
    """`2` for 2.0, `0.5` for 0.5: the shortest plain decimal that reads back as the same float."""
    if float(value).is_integer():
        return str(int(value))
    # Decimal(repr(...)) keeps repr's shortest round-trip digits but never uses exponent notation
    # ("1e-05"), which Midjourney would not parse.
    return format(Decimal(repr(float(value))), "f")


def validate_http_url(url: str, what: str) -> str:
    """Return `url` unchanged if it is an http(s) URL with a host and no whitespace; else raise."""
    if not isinstance(url, str):
        raise InvalidRequestError(
            f"{what} must be an http(s) URL string, got {_type_name(url)} {_preview(url)}"
        )
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in url):
        raise InvalidRequestError(f"{what} must be an http(s) URL without whitespace, got {_preview(url)}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise InvalidRequestError(f"{what} is not a valid URL ({exc}): {_preview(url)}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequestError(f"{what} must be an http:// or https:// URL, got {_preview(url)}")
    if not parts.hostname:
        raise InvalidRequestError(f"{what} must be an http(s) URL with a host, got {_preview(url)}")
    return url


def validate_origin_url(url: object, what: str) -> str:
    """Return `url` without a trailing "/" if it is an http(s) origin, `scheme://host[:port]`; else raise.

    mjasync puts the provider's paths (`/midjourney/...`, `/mj/v2/...`) after the origin itself, so
    a path prefix would be doubled, and a query or fragment would swallow the path: all are refused,
    as are credentials (`user:password@`, `user@`: the key goes in `api_key=`). A message never
    repeats credentials. (A base URL is checked this way, image and webhook URLs by `validate_http_url`.)
    """
    if not isinstance(url, str):
        raise InvalidRequestError(f"{what} must be an http(s) origin string, got {_type_name(url)}")
    if "@" in url:
        raise InvalidRequestError(
            f"{what} must not hold credentials (user:password@ or user@); pass the API key as api_key=. "
            f"Got {_without_userinfo(url)}"
        )
    validate_http_url(url, what)
    parts = urlsplit(url)
    if parts.path.strip("/") or "?" in url or "#" in url:
        origin = f"{parts.scheme}://{parts.netloc}"
        raise InvalidRequestError(
            f"{what} must be an origin, scheme://host[:port] (a trailing '/' is fine), without a path, "
            f"query or fragment; got {_preview(url)}. mjasync adds the API paths itself: use {origin!r}"
        )
    return url.rstrip("/")


def _without_userinfo(url: str) -> str:
    """`url` for a message, with everything up to its last "@" (where credentials may be) masked."""
    scheme, separator, _ = url.partition("://")
    head = scheme + separator if separator and "@" not in scheme else ""
    return _preview(f"{head}***@{url.rpartition('@')[2]}")


# Header field names are RFC 9110 tokens.
_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# What aiohttp refuses in a header value with a bare ValueError: C0 controls other than tab, and DEL.
_HEADER_VALUE_FORBIDDEN_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# An API key is a token: visible ASCII only, so no whitespace anywhere and nothing a header mangles.
_API_KEY_FORBIDDEN_RE: Final = re.compile(r"[^\x21-\x7e]")
_CHAR_NAMES: Final = {
    "\n": "a line feed (LF)",
    "\r": "a carriage return (CR)",
    "\x00": "a NUL character",
    "\t": "a tab",
    " ": "a space",
    "\x7f": "a DEL character",
}


def _describe_char(char: str) -> str:
    """A bad character named for a message; a printable one is not shown, as it is part of a secret."""
    if char in _CHAR_NAMES:
        return _CHAR_NAMES[char]
    if ord(char) < 0x20:
        return f"a control character (U+{ord(char):04X})"
    return "a non-ASCII character"


def validate_api_key(key: object, source: str) -> str:
    """Return `key` if it can go into an HTTP header as it is: visible ASCII (0x21-0x7E) only; else raise.

    Whitespace at either edge is refused too, not stripped: the key is used exactly as given. `source`
    names where the key came from (`api_key`, an environment variable); the message never holds the key.
    """
    if not isinstance(key, str):
        raise InvalidRequestError(f"{source} must be a str, got {_type_name(key)}")
    bad = _API_KEY_FORBIDDEN_RE.search(key)
    if bad is not None:
        hint = (
            "; it looks like it was read with a line break or padding around it: strip it"
            if key != key.strip()
            else ""
        )
        raise InvalidRequestError(
            f"{source} holds {_describe_char(bad.group())} at position {bad.start() + 1} of {len(key)}: "
            f"an API key goes into an HTTP header and may hold only visible ASCII characters "
            f"(no spaces, line breaks or control characters){hint}"
        )
    return key


def validate_headers(headers: Mapping[Any, Any] | None, what: str = "default_headers") -> dict[str, str]:
    """A copy of `headers` if every name is a token and every value a str an HTTP header can carry; else raise.

    Values may hold tabs and non-ASCII text (sent as UTF-8) but no other control character; a
    message names the header, never its value, which may be a secret of its own.
    """
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidRequestError(f"{what} must be a mapping of names to values, got {_type_name(headers)}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME_RE.fullmatch(name):
            raise InvalidRequestError(
                f"{what}: {_preview(name)} is not a header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        if not isinstance(value, str):
            raise InvalidRequestError(f"{what}[{name!r}] must be a str, got {_type_name(value)}")
        bad = _HEADER_VALUE_FORBIDDEN_RE.search(value)
        if bad is not None:
            raise InvalidRequestError(
                f"{what}[{name!r}] holds {_describe_char(bad.group())} at position {bad.start() + 1} "
                f"of {len(value)}, which an HTTP header value cannot carry"
            )
        checked[name] = value
    return checked


def check_max_prompt_chars(value: object) -> int:
    """Return `value` if it is a usable prompt length limit (a positive int); else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"max_prompt_chars must be a positive int, got {_preview(value)}")
    return value


def check_prompt_length(
    prompt: str,
    limit: int = MAX_PROMPT_CHARS,
    *,
    what: str = "prompt",
    setting: str = "Client(max_prompt_chars=...)",
) -> str:
    """Return `prompt` if it is at most `limit` characters long; else raise, saying how to change the limit.

    `what` names the text in the message; `setting` says where the limit is set (the CLI passes its own).
    """
    if len(prompt) > limit:
        raise InvalidRequestError(
            f"{what} is {len(prompt)} characters long, over the limit of {limit}; nothing was sent. "
            f"If your provider takes longer prompts, raise the limit with {setting}"
        )
    return prompt


def build_prompt(
    text: str,
    *,
    image_urls: Sequence[str] = (),
    params: PromptParams | None = None,
    max_image_urls: int = MAX_IMAGE_URLS,
) -> str:
    """Assemble the `prompt` field: image URLs first, then the text, then `params.render()`.

    One URL makes an image prompt, two or more a blend. A flag both in `text` and in `params`
    is refused rather than silently sent twice.
    """
    if not isinstance(text, str):
        raise InvalidRequestError(f"prompt text must be a str, got {_type_name(text)} {_preview(text)}")
    # A list or tuple first: the ABC check costs a few microseconds on every job of a fan-out.
    if type(image_urls) not in (tuple, list) and (
        isinstance(image_urls, (str, bytes)) or not isinstance(image_urls, Sequence)
    ):
        raise InvalidRequestError(
            f"image_urls must be a sequence of URLs, got {_type_name(image_urls)} {_preview(image_urls)}"
        )
    if isinstance(max_image_urls, bool) or not isinstance(max_image_urls, int) or max_image_urls < 0:
        raise InvalidRequestError(
            f"max_image_urls must be a non-negative int, got {_preview(max_image_urls)}"
        )
    if len(image_urls) > max_image_urls:
        raise InvalidRequestError(
            f"too many image URLs: got {len(image_urls)}, the maximum is {max_image_urls}"
        )
    urls = [validate_http_url(url, f"image_urls[{i}]") for i, url in enumerate(image_urls)]
    if params is not None and not isinstance(params, PromptParams):
        raise InvalidRequestError(f"params must be a PromptParams, got {_type_name(params)}")

    body = text.strip()
    if not body and not urls:
        raise InvalidRequestError("prompt is empty: give some text or at least one image URL")

    flags = ""
    if params is not None:
        in_text = {name.lower() for name in _TEXT_FLAG_RE.findall(body)}
        for name in _set_fields(params):
            clash = sorted(in_text & _TEXT_ALIASES[name])
            if clash:
                raise InvalidRequestError(
                    f"prompt text already contains --{clash[0]}, which conflicts with params.{name}; "
                    f"set it in one place only"
                )
        flags = params.render()

    if not urls and not flags:
        return body  # the usual text-only prompt, without building the join
    return " ".join(part for part in (*urls, body, flags) if part)


# Magic numbers of the formats a mask may come in. WEBP is checked separately (RIFF....WEBP).
_MAGIC: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
_URL_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_DATA_URI_RE: Final = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_BASE64_RE: Final = re.compile(r"[A-Za-z0-9+/]+={0,2}")
# PNG cannot hold these Pillow modes; encode them as the nearest mode it can.
_PNG_MODES: Final = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})


def _image_format(data: bytes) -> str | None:
    """The image format `data` starts with, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    # "BM" alone is common in text; also require room for the 14+12 byte BMP headers.
    if len(data) >= 26 and data[:2] == b"BM":
        return "BMP"
    return None


def _check_image_bytes(data: bytes, source: str) -> bytes:
    """Return `data` if it is a non-empty image within the size cap; raise otherwise."""
    if not data:
        raise InvalidRequestError(f"mask is empty ({source})")
    if len(data) > MAX_MASK_BYTES:
        raise InvalidRequestError(
            f"mask is too large ({source}): {len(data)} bytes, the maximum is {MAX_MASK_BYTES} bytes"
        )
    if _image_format(data) is None:
        hint = ""
        if _decode_base64_image(data.decode("ascii", "replace")) is not None:
            hint = "; it looks like base64 text, pass it as a str instead"
        raise InvalidRequestError(
            f"mask is not an image (starts with {data[:16]!r}, {source}); expected PNG, JPEG, GIF, WEBP or BMP{hint}"
        )
    return data


def _decode_base64_image(text: str) -> bytes | None:
    """The decoded bytes if `text` is base64 (or a data: URI) of an image, else None."""
    match = _DATA_URI_RE.match(text)
    candidate = "".join(text[match.end() :].split()) if match else "".join(text.split())
    # Cheap size check first, so a huge string is not decoded just to be refused.
    if not candidate or len(candidate) // 4 * 3 > MAX_MASK_BYTES + 3 or not _BASE64_RE.fullmatch(candidate):
        return None
    try:
        data = base64.b64decode(candidate, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if _image_format(data) is not None else None


def _read_mask_file(path: str | os.PathLike[str]) -> bytes:
    """Read a mask file, turning every I/O failure into `InvalidRequestError`."""
    shown = _preview(os.fspath(path))
    try:
        with open(path, "rb") as f:
            # Read one byte past the cap so an oversized file is detected without reading all of it.
            data = f.read(MAX_MASK_BYTES + 1)
    except FileNotFoundError:
        raise InvalidRequestError(f"mask file not found: {shown}") from None
    except IsADirectoryError:
        raise InvalidRequestError(f"mask path is a directory, not a file: {shown}") from None
    except OSError as exc:
        raise InvalidRequestError(f"cannot read mask file {shown}: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. an embedded NUL: not a usable path at all
        raise InvalidRequestError(f"mask is not a usable path ({exc}): {shown}") from None
    return _check_image_bytes(data, f"file {shown}")


def _pil_to_png(image: Any) -> bytes:
    """Encode a PIL image as PNG, converting modes PNG cannot store."""
    if image.mode not in _PNG_MODES:
        bands = len(image.getbands())
        image = image.convert("L" if bands == 1 else "RGBA" if "A" in image.mode else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _is_pil_image(obj: object) -> bool:
    """Whether `obj` is a Pillow image, without importing Pillow."""
    # If obj is a PIL image, PIL.Image is already imported; never import Pillow just to check.
    pil_image = sys.modules.get("PIL.Image")
    if pil_image is not None and isinstance(obj, pil_image.Image):
        return True
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "save") and hasattr(obj, "mode")


def encode_mask(mask: bytes | bytearray | memoryview | str | os.PathLike[str] | Any) -> str:
    """The base64 string `variation_region` (and edits) take as `mask`.

    - `bytes` / `bytearray` / `memoryview`: the image file's bytes.
    - `os.PathLike`: a path to read.
    - `str`: an http(s) URL is returned unchanged; base64 of an image (or a `data:image/...;base64,`
      URI) is normalised; anything else is a path to read.
    - a PIL image: encoded as PNG.

    The bytes must be a PNG, JPEG, GIF, WEBP or BMP of at most `MAX_MASK_BYTES`. Files are read
    synchronously; in async code, call this before entering the event loop's hot path or in a thread.
    """
    if isinstance(mask, (bytes, bytearray, memoryview)):
        raw = bytes(mask)
        data = _check_image_bytes(raw, f"{_type_name(mask)} of {len(raw)} bytes")
    elif isinstance(mask, str):
        if _URL_SCHEME_RE.match(mask):
            return validate_http_url(mask, "mask")
        decoded = _decode_base64_image(mask)
        if decoded is not None:
            data = _check_image_bytes(decoded, "base64 string")
        elif not mask.strip():
            raise InvalidRequestError(
                "mask is an empty string; give image bytes, a path, a URL or a PIL image"
            )
        else:
            data = _read_mask_file(mask)
    elif isinstance(mask, os.PathLike):
        data = _read_mask_file(mask)
    elif _is_pil_image(mask):
        data = _check_image_bytes(_pil_to_png(mask), "PIL image")
    else:
        raise InvalidRequestError(
            "mask must be image bytes, a path, an http(s) URL, base64 text or a PIL image, "
            f"got {_type_name(mask)} {_preview(mask)}"
        )
    return base64.b64encode(data).decode("ascii")
