"""Tests for mjasync._models.params: PromptParams, build_prompt, the input checks, encode_mask."""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from mjasync._exceptions import InvalidRequestError
from mjasync._models import params as params_mod
from mjasync._models.params import (
    MAX_IMAGE_URLS,
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

# field -> (min, max, flag) for every integer parameter.
INT_FIELDS: dict[str, tuple[int, int, str]] = {
    "stylize": (0, 1000, "s"),
    "chaos": (0, 100, "c"),
    "seed": (0, 4_294_967_295, "seed"),
    "weird": (0, 3000, "weird"),
    "stop": (10, 100, "stop"),
    "repeat": (1, 40, "r"),
    "style_weight": (0, 1000, "sw"),
    "character_weight": (0, 100, "cw"),
    "omni_weight": (1, 1000, "ow"),
}
BOOL_FIELDS: dict[str, str] = {"tile": "tile", "raw": "raw", "draft": "draft", "personalize": "p"}


def _make(**kwargs: Any) -> PromptParams:
    """PromptParams from loosely typed keyword arguments (tests pass wrong types on purpose)."""
    return PromptParams(**kwargs)


def _image_bytes(fmt: str = "PNG", mode: str = "L", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color=255 if mode == "L" else (255, 255, 255)).save(buf, format=fmt)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# PromptParams: rendering


def test_empty_params_render_nothing() -> None:
    assert PromptParams().render() == ""


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"aspect_ratio": "16:9"}, "--ar 16:9"),
        ({"aspect_ratio": "1:1"}, "--ar 1:1"),
        ({"version": "7"}, "--v 7"),
        ({"version": "5.2"}, "--v 5.2"),
        ({"version": "8.2"}, "--v 8.2"),
        ({"niji": "6"}, "--niji 6"),
        ({"stylize": 250}, "--s 250"),
        ({"chaos": 30}, "--c 30"),
        ({"seed": 42}, "--seed 42"),
        ({"no": ("cars",)}, "--no cars"),
        ({"no": ("cars", "red trees")}, "--no cars, red trees"),
        ({"no": ("  cars ",)}, "--no cars"),
        ({"image_weight": 2}, "--iw 2"),
        ({"image_weight": 2.0}, "--iw 2"),
        ({"image_weight": 0.5}, "--iw 0.5"),
        ({"image_weight": 1.25}, "--iw 1.25"),
        ({"image_weight": 1e-5}, "--iw 0.00001"),
        ({"style_reference": ("https://e.com/s.png",)}, "--sref https://e.com/s.png"),
        (
            {"style_reference": ("123456", "random", "http://e.com/a.jpg")},
            "--sref 123456 random http://e.com/a.jpg",
        ),
        ({"style_weight": 100}, "--sw 100"),
        (
            {"character_reference": ("https://e.com/c.png", "https://e.com/d.png")},
            "--cref https://e.com/c.png https://e.com/d.png",
        ),
        ({"character_weight": 50}, "--cw 50"),
        ({"omni_reference": "https://e.com/o.png"}, "--oref https://e.com/o.png"),
        ({"omni_weight": 400}, "--ow 400"),
        ({"quality": ".25"}, "--q .25"),
        ({"quality": ".5"}, "--q .5"),
        ({"quality": "1"}, "--q 1"),
        ({"quality": "2"}, "--q 2"),
        ({"quality": "4"}, "--q 4"),
        ({"weird": 250}, "--weird 250"),
        ({"stop": 50}, "--stop 50"),
        ({"repeat": 3}, "--r 3"),
        ({"tile": True}, "--tile"),
        ({"raw": True}, "--raw"),
        ({"draft": True}, "--draft"),
        ({"personalize": True}, "--p"),
        ({"tile": False, "raw": False, "draft": False, "personalize": False}, ""),
    ],
)
def test_each_flag_renders(kwargs: dict[str, Any], expected: str) -> None:
    assert PromptParams(**kwargs).render() == expected


def test_render_order_is_stable_and_single_spaced() -> None:
    p = PromptParams(
        no=("text",),
        personalize=True,
        seed=7,
        version="7",
        aspect_ratio="3:2",
        stylize=100,
        image_weight=1.5,
        style_reference=("99",),
    )
    rendered = p.render()
    assert rendered == "--ar 3:2 --v 7 --s 100 --seed 7 --iw 1.5 --sref 99 --p --no text"
    assert "  " not in rendered
    # Same values given in another order render identically.
    q = PromptParams(
        aspect_ratio="3:2",
        style_reference=("99",),
        image_weight=1.5,
        stylize=100,
        version="7",
        seed=7,
        personalize=True,
        no=("text",),
    )
    assert q.render() == rendered
    assert q == p
    assert hash(q) == hash(p)


def test_zero_values_still_render() -> None:
    assert PromptParams(stylize=0, chaos=0, seed=0, image_weight=0).render() == "--s 0 --c 0 --seed 0 --iw 0"


# --------------------------------------------------------------------------------------------------
# PromptParams: ranges and types


@pytest.mark.parametrize("name", sorted(INT_FIELDS))
def test_int_range_boundaries(name: str) -> None:
    lo, hi, flag = INT_FIELDS[name]
    assert _make(**{name: lo}).render() == f"--{flag} {lo}"
    assert _make(**{name: hi}).render() == f"--{flag} {hi}"
    for bad in (lo - 1, hi + 1):
        with pytest.raises(InvalidRequestError) as info:
            _make(**{name: bad})
        message = str(info.value)
        assert name in message
        assert str(bad) in message
        assert f"between {lo} and {hi}" in message


@pytest.mark.parametrize("name", sorted(INT_FIELDS))
@pytest.mark.parametrize("value", [True, False])
def test_bool_rejected_for_int_fields(name: str, value: bool) -> None:
    with pytest.raises(InvalidRequestError, match=rf"{name} must be an int .* got bool"):
        _make(**{name: value})


@pytest.mark.parametrize("name", sorted(INT_FIELDS))
@pytest.mark.parametrize("value", ["100", 10.0, 1.5, [1]])
def test_non_int_rejected_for_int_fields(name: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=rf"{name} must be an int"):
        _make(**{name: value})


@pytest.mark.parametrize("name", sorted(BOOL_FIELDS))
@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_bool_fields_reject_non_bool(name: str, value: object) -> None:
    with pytest.raises(InvalidRequestError, match=rf"{name} must be a bool"):
        _make(**{name: value})


@pytest.mark.parametrize("value", [0, 0.0, 3, 3.0, 0.25, 2.999])
def test_image_weight_in_range(value: float) -> None:
    rendered = PromptParams(image_weight=value).render()
    assert rendered.startswith("--iw ")
    assert float(rendered.split()[1]) == value


@pytest.mark.parametrize("value", [-0.01, -1, 3.01, 4, math.nan, math.inf, -math.inf])
def test_image_weight_out_of_range(value: float) -> None:
    with pytest.raises(InvalidRequestError, match=r"image_weight must be between 0 and 3"):
        PromptParams(image_weight=value)


@pytest.mark.parametrize("value", [True, "2", [2]])
def test_image_weight_wrong_type(value: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"image_weight must be a number"):
        PromptParams(image_weight=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["16/9", "0:1", "1:0", "-1:2", "1.5:1", " 16:9", "16:9 ", "16:9:1", "16:", "a:b", "016:9", ""]
)
def test_bad_aspect_ratio(value: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"aspect_ratio must be 'W:H'") as info:
        PromptParams(aspect_ratio=value)
    assert repr(value) in str(info.value)


def test_aspect_ratio_wrong_type() -> None:
    with pytest.raises(InvalidRequestError, match=r"aspect_ratio must be a str, got float"):
        PromptParams(aspect_ratio=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["5.2", "6", "6.1", "7", "8", "8.1", "8.2", "10"])
def test_valid_versions(value: str) -> None:
    assert PromptParams(version=value).render() == f"--v {value}"
    assert PromptParams(niji=value).render() == f"--niji {value}"


@pytest.mark.parametrize("value", ["v7", "7.", "", "latest", "0", "6.1.2", " 7", "7a"])
@pytest.mark.parametrize("name", ["version", "niji"])
def test_invalid_versions(name: str, value: str) -> None:
    with pytest.raises(InvalidRequestError, match=rf"{name} must be a version string"):
        _make(**{name: value})


@pytest.mark.parametrize("name", ["version", "niji"])
def test_version_must_be_str(name: str) -> None:
    with pytest.raises(InvalidRequestError, match=rf"{name} must be a str, got int 7"):
        _make(**{name: 7})


def test_version_and_niji_are_exclusive() -> None:
    with pytest.raises(InvalidRequestError, match=r"version .* and niji .* mutually exclusive"):
        PromptParams(version="7", niji="6")


@pytest.mark.parametrize("value", ["3", "0.25", "0.5", ".75", 1, 0.5, ""])
def test_bad_quality(value: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"quality must be one of '.25', '.5', '1', '2', '4'"):
        PromptParams(quality=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"no": "cars"}, r"no must be a tuple of str, got str 'cars'; for one item write \('cars',\)"),
        ({"no": ["cars"]}, r"no must be a tuple of str, got list"),
        ({"no": ("",)}, r"no\[0\] must not be empty"),
        ({"no": ("ok", "   ")}, r"no\[1\] must not be empty"),
        ({"no": ("cars --ar 1:1",)}, r"no\[0\] must not contain '--'"),
        ({"no": ("cars \u2014ar 1:1",)}, r"no\[0\] must not contain '--'"),
        ({"no": ("a\nb",)}, r"no\[0\] must be a single line"),
        ({"no": (3,)}, r"no\[0\] must be a str, got int"),
        ({"style_reference": "123"}, r"style_reference must be a tuple of str"),
        (
            {"style_reference": ("abc",)},
            r"style_reference\[0\] must be an http\(s\) URL, a numeric style code or 'random'",
        ),
        ({"style_reference": ("ftp://e.com/x.png",)}, r"style_reference\[0\] must be an http\(s\) URL"),
        ({"style_reference": ("https://",)}, r"style_reference\[0\] must be an http\(s\) URL with a host"),
        ({"style_reference": (123,)}, r"style_reference\[0\] must be a str, got int"),
        ({"character_reference": ("123",)}, r"character_reference\[0\] must be an http:// or https:// URL"),
        ({"character_reference": ("https://e.com/a.png", "e.com/b.png")}, r"character_reference\[1\]"),
        ({"character_reference": "https://e.com/a.png"}, r"character_reference must be a tuple of str"),
        ({"omni_reference": "not a url"}, r"omni_reference must be an http\(s\) URL without whitespace"),
        ({"omni_reference": "javascript:alert(1)"}, r"omni_reference must be an http:// or https:// URL"),
        ({"omni_reference": 5}, r"omni_reference must be an http\(s\) URL string, got int"),
    ],
)
def test_wrong_values_and_types(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(InvalidRequestError, match=pattern):
        PromptParams(**kwargs)


def test_invalid_request_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="chaos"):
        PromptParams(chaos=101)


def test_params_are_frozen_and_replace_revalidates() -> None:
    p = PromptParams(stylize=100)
    with pytest.raises(AttributeError):
        p.stylize = 200  # type: ignore[misc]
    q = msgspec.structs.replace(p, stylize=200, chaos=5)
    assert q.render() == "--s 200 --c 5"
    assert p.render() == "--s 100"
    with pytest.raises(InvalidRequestError, match="stylize must be between 0 and 1000"):
        msgspec.structs.replace(p, stylize=5000)


def test_repr_omits_defaults() -> None:
    assert repr(PromptParams(stylize=3)) == "PromptParams(stylize=3)"


def test_decoding_validates_and_forbids_unknown_fields() -> None:
    p = msgspec.json.decode(b'{"aspect_ratio": "2:3", "no": ["cars"], "quality": ".5"}', type=PromptParams)
    assert p == PromptParams(aspect_ratio="2:3", no=("cars",), quality=".5")
    assert msgspec.json.decode(msgspec.json.encode(p), type=PromptParams) == p
    with pytest.raises(msgspec.ValidationError, match="stylize must be between 0 and 1000"):
        msgspec.convert({"stylize": 5000}, PromptParams)
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):
        msgspec.convert({"bogus": 1}, PromptParams)


def test_unknown_keyword_rejected() -> None:
    with pytest.raises(TypeError):
        PromptParams(stylise=100)  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------------
# validate_http_url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://example.com/a/b.png?x=1&y=2#f",
        "HTTPS://EXAMPLE.COM/A.PNG",
        "https://cdn.example.com:8443/img.png",
        "https://127.0.0.1/a.png",
        "https://[::1]/a.png",
        "https://user:pw@example.com/a.png",
    ],
)
def test_validate_http_url_accepts(url: str) -> None:
    assert validate_http_url(url, "thing") is url


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        ("ftp://example.com/a.png", r"must be an http:// or https:// URL"),
        ("javascript:alert(1)", r"must be an http:// or https:// URL"),
        ("file:///x", r"must be an http:// or https:// URL"),
        ("data:image/png;base64,AAAA", r"must be an http:// or https:// URL"),
        ("/images/a.png", r"must be an http:// or https:// URL"),
        ("a.png", r"must be an http:// or https:// URL"),
        ("example.com/a.png", r"must be an http:// or https:// URL"),
        ("//example.com/a.png", r"must be an http:// or https:// URL"),
        ("https://exa mple.com/a.png", r"without whitespace"),
        ("https://example.com/a b.png", r"without whitespace"),
        (" https://example.com/a.png", r"without whitespace"),
        ("https://example.com/a.png\n", r"without whitespace"),
        ("https://example.com/\x00", r"without whitespace"),
        ("http://", r"with a host"),
        ("http:///path", r"with a host"),
        ("https://:443/a", r"with a host"),
        ("https://example.com:abc/a", r"is not a valid URL"),
        ("", r"must be an http:// or https:// URL"),
    ],
)
def test_validate_http_url_rejects(url: str, pattern: str) -> None:
    with pytest.raises(InvalidRequestError, match=pattern) as info:
        validate_http_url(url, "the thing")
    assert str(info.value).startswith("the thing ")


@pytest.mark.parametrize("url", [None, 5, b"https://example.com"])
def test_validate_http_url_rejects_non_str(url: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"the thing must be an http\(s\) URL string"):
        validate_http_url(url, "the thing")  # type: ignore[arg-type]


def test_validate_http_url_truncates_huge_values_in_the_message() -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_http_url("ftp://" + "x" * 10_000, "u")
    assert len(str(info.value)) < 200


# --------------------------------------------------------------------------------------------------
# build_prompt

URLS = [f"https://cdn.example.com/{i}.png" for i in range(1, 7)]


def test_text_without_params_passes_through_stripped() -> None:
    text = "a cat in a hat --ar 3:2 --v 6.1 --no dogs"
    assert build_prompt(text) == text
    assert build_prompt(f"  {text}\n") == text


def test_text_with_params() -> None:
    p = PromptParams(aspect_ratio="16:9", version="7")
    assert build_prompt("a cat", params=p) == "a cat --ar 16:9 --v 7"
    assert build_prompt("a cat", params=PromptParams()) == "a cat"


def test_one_url_is_an_image_prompt() -> None:
    assert build_prompt("a cat", image_urls=[URLS[0]]) == f"{URLS[0]} a cat"


def test_two_urls_blend_in_order_with_params() -> None:
    prompt = build_prompt(
        "The bear is holding the chainsaw", image_urls=URLS[:2], params=PromptParams(image_weight=2)
    )
    assert prompt == f"{URLS[0]} {URLS[1]} The bear is holding the chainsaw --iw 2"


def test_blend_without_text() -> None:
    assert build_prompt("", image_urls=URLS[:2]) == f"{URLS[0]} {URLS[1]}"
    assert build_prompt("  ", image_urls=URLS[:2], params=PromptParams(aspect_ratio="1:1")) == (
        f"{URLS[0]} {URLS[1]} --ar 1:1"
    )


def test_five_urls_ok_and_six_rejected() -> None:
    assert build_prompt("x", image_urls=URLS[:5]) == " ".join([*URLS[:5], "x"])
    assert MAX_IMAGE_URLS == 5
    with pytest.raises(InvalidRequestError, match=r"too many image URLs: got 6, the maximum is 5"):
        build_prompt("x", image_urls=URLS[:6])


def test_max_image_urls_is_configurable() -> None:
    assert build_prompt("x", image_urls=URLS[:6], max_image_urls=6).startswith(URLS[0])
    with pytest.raises(InvalidRequestError, match=r"got 2, the maximum is 1"):
        build_prompt("x", image_urls=URLS[:2], max_image_urls=1)
    with pytest.raises(InvalidRequestError, match=r"max_image_urls must be a non-negative int"):
        build_prompt("x", max_image_urls=-1)


def test_image_urls_accept_any_sequence() -> None:
    assert build_prompt("x", image_urls=tuple(URLS[:2])) == f"{URLS[0]} {URLS[1]} x"


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://example.com/a.png",
        "javascript:alert(1)",
        "file:///x",
        "images/a.png",
        "/a.png",
        "https://example.com/a b.png",
        "https://",
    ],
)
def test_bad_image_url_rejected_with_its_index(bad: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"image_urls\[1\]"):
        build_prompt("x", image_urls=[URLS[0], bad])


def test_image_urls_as_a_single_string_rejected() -> None:
    with pytest.raises(InvalidRequestError, match=r"image_urls must be a sequence of URLs, got str"):
        build_prompt("x", image_urls=URLS[0])


@pytest.mark.parametrize("text", [None, 5, b"a cat", ["a cat"]])
def test_text_must_be_str(text: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"prompt text must be a str"):
        build_prompt(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompt_rejected(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"prompt is empty"):
        build_prompt(text)
    with pytest.raises(InvalidRequestError, match=r"prompt is empty"):
        build_prompt(text, params=PromptParams(aspect_ratio="1:1"))


def test_params_must_be_prompt_params() -> None:
    with pytest.raises(InvalidRequestError, match=r"params must be a PromptParams, got dict"):
        build_prompt("x", params={"stylize": 5})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "kwargs", "flag", "field"),
    [
        ("cat --ar 3:2", {"aspect_ratio": "16:9"}, "ar", "aspect_ratio"),
        ("cat --aspect 3:2", {"aspect_ratio": "16:9"}, "aspect", "aspect_ratio"),
        ("cat --AR 3:2", {"aspect_ratio": "16:9"}, "ar", "aspect_ratio"),
        ("cat \u2014ar 3:2", {"aspect_ratio": "16:9"}, "ar", "aspect_ratio"),
        ("--ar 3:2 cat", {"aspect_ratio": "16:9"}, "ar", "aspect_ratio"),
        ("cat --v 6", {"version": "7"}, "v", "version"),
        ("cat --version 6", {"version": "7"}, "version", "version"),
        ("cat --niji 6", {"version": "7"}, "niji", "version"),
        ("cat --v 6", {"niji": "6"}, "v", "niji"),
        ("cat --s 50", {"stylize": 100}, "s", "stylize"),
        ("cat --stylize 50", {"stylize": 100}, "stylize", "stylize"),
        ("cat --c 5", {"chaos": 10}, "c", "chaos"),
        ("cat --chaos 5", {"chaos": 10}, "chaos", "chaos"),
        ("cat --q 2", {"quality": "1"}, "q", "quality"),
        ("cat --quality 2", {"quality": "1"}, "quality", "quality"),
        ("cat --seed 1", {"seed": 2}, "seed", "seed"),
        ("cat --no dogs", {"no": ("birds",)}, "no", "no"),
        ("cat --iw 1", {"image_weight": 2}, "iw", "image_weight"),
        ("cat --sref 123", {"style_reference": ("456",)}, "sref", "style_reference"),
        ("cat --style raw", {"raw": True}, "style", "raw"),
        ("cat --tile", {"tile": True}, "tile", "tile"),
        ("cat --repeat 2", {"repeat": 3}, "repeat", "repeat"),
        ("cat --w 100", {"weird": 100}, "w", "weird"),
        ("cat --profile abc", {"personalize": True}, "profile", "personalize"),
    ],
)
def test_flag_in_text_conflicts_with_params(text: str, kwargs: dict[str, Any], flag: str, field: str) -> None:
    with pytest.raises(InvalidRequestError, match="conflicts") as info:
        build_prompt(text, params=PromptParams(**kwargs))
    message = str(info.value)
    assert f"--{flag}" in message
    assert f"params.{field}" in message


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        # Different flags in text and params coexist.
        ("cat --ar 3:2", {"stylize": 100}, "cat --ar 3:2 --s 100"),
        # --sw is not --s, --cref is not --c.
        ("cat --sw 100 --cref https://e.com/c.png", {"stylize": 5, "chaos": 1}, None),
        # "--" that does not start a word (inside a URL or a word) is not a flag.
        ("see https://e.com/a--ar.png and well--s", {"aspect_ratio": "1:1", "stylize": 3}, None),
        # Only set fields count: False / empty / None do not conflict.
        ("cat --tile --no dogs", {"tile": False, "no": ()}, "cat --tile --no dogs"),
    ],
)
def test_no_false_conflicts(text: str, kwargs: dict[str, Any], expected: str | None) -> None:
    params = PromptParams(**kwargs)
    result = build_prompt(text, params=params)
    assert result == (expected if expected is not None else f"{text} {params.render()}")


# --------------------------------------------------------------------------------------------------
# encode_mask


def _decode(encoded: str) -> bytes:
    assert "\n" not in encoded
    return base64.b64decode(encoded, validate=True)


def test_mask_from_bytes_like() -> None:
    png = _image_bytes()
    assert _decode(encode_mask(png)) == png
    assert _decode(encode_mask(bytearray(png))) == png
    assert _decode(encode_mask(memoryview(png))) == png
    assert encode_mask(png) == base64.b64encode(png).decode("ascii")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP"])
def test_mask_accepts_every_supported_format(fmt: str) -> None:
    data = _image_bytes(fmt)
    assert _decode(encode_mask(data)) == data


def test_mask_from_path_and_str_path(tmp_path: Path) -> None:
    jpeg = _image_bytes("JPEG")
    path = tmp_path / "mask.jpg"
    path.write_bytes(jpeg)
    assert _decode(encode_mask(path)) == jpeg
    assert _decode(encode_mask(str(path))) == jpeg


def test_mask_from_path_with_spaces(tmp_path: Path) -> None:
    png = _image_bytes()
    path = tmp_path / "my mask.png"
    path.write_bytes(png)
    assert _decode(encode_mask(str(path))) == png


def test_mask_from_pil_image_is_png() -> None:
    image = Image.new("L", (10, 7), color=0)
    image.paste(255, (2, 2, 6, 5))
    data = _decode(encode_mask(image))
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as back:
        assert back.format == "PNG"
        assert back.size == (10, 7)
        assert back.mode == "L"
        assert back.getpixel((3, 3)) == 255
        assert back.getpixel((0, 0)) == 0


@pytest.mark.parametrize(("mode", "expected"), [("CMYK", "RGB"), ("F", "L"), ("I", "L"), ("RGBA", "RGBA")])
def test_mask_from_pil_image_in_modes_png_cannot_hold(mode: str, expected: str) -> None:
    data = _decode(encode_mask(Image.new(mode, (4, 4))))
    with Image.open(io.BytesIO(data)) as back:
        assert back.format == "PNG"
        assert back.mode == expected


def test_mask_from_opened_pil_image(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    path.write_bytes(_image_bytes("JPEG"))
    with Image.open(path) as opened:  # a JpegImageFile subclass, re-encoded as PNG
        data = _decode(encode_mask(opened))
    assert data.startswith(b"\x89PNG")


@pytest.mark.parametrize("url", ["https://cdn.example.com/mask.png", "http://e.com/m.jpg?x=1"])
def test_mask_url_passes_through(url: str) -> None:
    assert encode_mask(url) is url


@pytest.mark.parametrize("url", ["ftp://e.com/m.png", "file:///tmp/m.png", "https://e.com/a b.png"])
def test_mask_bad_url_rejected(url: str) -> None:
    with pytest.raises(InvalidRequestError, match=r"^mask "):
        encode_mask(url)


def test_mask_base64_string_is_normalised() -> None:
    png = _image_bytes()
    b64 = base64.b64encode(png).decode("ascii")
    assert encode_mask(b64) == b64
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert encode_mask(wrapped) == b64
    assert encode_mask("data:image/png;base64," + b64) == b64


def test_mask_jpeg_base64_starting_with_slash_is_not_a_path() -> None:
    jpeg = _image_bytes("JPEG")
    b64 = base64.b64encode(jpeg).decode("ascii")
    assert b64.startswith("/9j/")
    assert encode_mask(b64) == b64


def test_mask_not_an_image() -> None:
    with pytest.raises(InvalidRequestError, match=r"mask is not an image \(starts with b'hello world'"):
        encode_mask(b"hello world")


def test_mask_base64_bytes_get_a_hint() -> None:
    encoded = base64.b64encode(_image_bytes())
    with pytest.raises(InvalidRequestError, match=r"looks like base64 text, pass it as a str"):
        encode_mask(encoded)


def test_mask_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(
        InvalidRequestError, match=r"mask is not an image \(starts with b'not an image'.*notes\.txt"
    ):
        encode_mask(path)


def test_mask_bmp_magic_needs_a_header() -> None:
    with pytest.raises(InvalidRequestError, match="not an image"):
        encode_mask(b"BM short")


def test_mask_str_that_cannot_be_a_path() -> None:
    with pytest.raises(InvalidRequestError, match=r"mask is not a usable path"):
        encode_mask("a\x00b")
    with pytest.raises(InvalidRequestError, match=r"cannot read mask file"):
        encode_mask("x" * 5000)


def test_mask_empty() -> None:
    with pytest.raises(InvalidRequestError, match=r"mask is empty"):
        encode_mask(b"")
    with pytest.raises(InvalidRequestError, match=r"mask is an empty string"):
        encode_mask("")


def test_mask_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(InvalidRequestError, match=r"mask file not found: .*nope\.png"):
        encode_mask(missing)
    with pytest.raises(InvalidRequestError, match=r"mask file not found: .*nope\.png"):
        encode_mask(str(missing))


def test_mask_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match=r"mask path is a directory"):
        encode_mask(tmp_path)


def test_mask_too_large(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params_mod, "MAX_MASK_BYTES", 1000)
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * 1000
    with pytest.raises(
        InvalidRequestError, match=r"mask is too large .*1008 bytes, the maximum is 1000 bytes"
    ):
        encode_mask(big)
    path = tmp_path / "big.png"
    path.write_bytes(big)
    with pytest.raises(InvalidRequestError, match=r"mask is too large .*the maximum is 1000 bytes"):
        encode_mask(path)
    # Exactly at the cap is fine.
    assert _decode(encode_mask(big[:1000])) == big[:1000]


def test_default_mask_cap_is_16_mib() -> None:
    assert params_mod.MAX_MASK_BYTES == 16 * 1024 * 1024


@pytest.mark.parametrize("value", [None, 5, 1.5, ["a"], object()])
def test_mask_wrong_type(value: object) -> None:
    with pytest.raises(
        InvalidRequestError, match=r"mask must be image bytes, a path, .*got " + type(value).__name__
    ):
        encode_mask(value)


# --------------------------------------------------------------------------------------------------
# Properties

# flag -> field, to parse a rendered string back.
FLAG_TO_FIELD = {
    "ar": "aspect_ratio",
    "v": "version",
    "niji": "niji",
    "q": "quality",
    "iw": "image_weight",
    "sref": "style_reference",
    "cref": "character_reference",
    "oref": "omni_reference",
    "no": "no",
    **{flag: name for name, (_, _, flag) in INT_FIELDS.items()},
    **{flag: name for name, flag in BOOL_FIELDS.items()},
}


def _parse_flags(rendered: str) -> dict[str, Any]:
    """Parse `--flag value` text back into PromptParams keyword arguments."""
    out: dict[str, Any] = {}
    if not rendered:
        return out
    assert rendered.startswith("--")
    for chunk in re.split(r"(?:^| )--(?=[a-z]+(?: |$))", rendered)[1:]:
        flag, _, value = chunk.partition(" ")
        field = FLAG_TO_FIELD[flag]
        assert field not in out, f"flag --{flag} rendered twice"
        if field in BOOL_FIELDS:
            assert value == ""
            out[field] = True
        elif field in INT_FIELDS:
            out[field] = int(value)
        elif field == "image_weight":
            assert "e" not in value
            out[field] = float(value)
        elif field == "no":
            out[field] = tuple(value.split(", "))
        elif field in ("style_reference", "character_reference"):
            out[field] = tuple(value.split(" "))
        else:
            out[field] = value
    return out


def _ints(name: str) -> st.SearchStrategy[int | None]:
    lo, hi, _ = INT_FIELDS[name]
    return st.none() | st.integers(lo, hi)


_urls = st.builds(
    "https://{}.example.com/{}.png".format,
    st.text("abcdefghij", min_size=1, max_size=8),
    st.text("abcxyz0123-_", min_size=1, max_size=12),
)
_words = st.text("abcdefghij klmnop", min_size=1, max_size=20).filter(lambda s: s.strip() == s and s != "")


@st.composite
def valid_params(draw: st.DrawFn) -> PromptParams:
    """Any PromptParams the validator accepts."""
    kwargs: dict[str, Any] = {name: draw(_ints(name)) for name in INT_FIELDS}
    kwargs.update({name: draw(st.booleans()) for name in BOOL_FIELDS})
    kwargs["aspect_ratio"] = draw(
        st.none() | st.builds("{}:{}".format, st.integers(1, 50), st.integers(1, 50))
    )
    model = draw(st.sampled_from(["version", "niji", None]))
    if model is not None:
        kwargs[model] = draw(st.sampled_from(["5.2", "6", "6.1", "7", "8", "8.1", "8.2"]))
    kwargs["quality"] = draw(st.none() | st.sampled_from([".25", ".5", "1", "2", "4"]))
    kwargs["image_weight"] = draw(
        st.none() | st.integers(0, 3) | st.floats(0, 3, allow_nan=False, allow_infinity=False)
    )
    kwargs["style_reference"] = tuple(
        draw(st.lists(_urls | st.sampled_from(["random"]) | st.integers(0, 10**12).map(str), max_size=3))
    )
    kwargs["character_reference"] = tuple(draw(st.lists(_urls, max_size=3)))
    kwargs["omni_reference"] = draw(st.none() | _urls)
    kwargs["no"] = tuple(draw(st.lists(_words, max_size=4)))
    return PromptParams(**kwargs)


@given(valid_params())
def test_render_reparses_to_the_same_values(params: PromptParams) -> None:
    rendered = params.render()
    assert rendered == rendered.strip()
    assert "  " not in rendered
    reparsed = PromptParams(**_parse_flags(rendered))
    assert reparsed == params
    assert reparsed.render() == rendered


@given(
    valid_params(),
    st.text(st.characters(blacklist_characters="-\u2014"), max_size=40),
    st.lists(_urls, max_size=5),
)
def test_build_prompt_layout(params: PromptParams, text: str, urls: list[str]) -> None:
    if not text.strip() and not urls:
        with pytest.raises(InvalidRequestError, match="prompt is empty"):
            build_prompt(text, image_urls=urls, params=params)
        return
    prompt = build_prompt(text, image_urls=urls, params=params)
    expected = " ".join(p for p in (*urls, text.strip(), params.render()) if p)
    assert prompt == expected


@given(st.sampled_from(sorted(INT_FIELDS)), st.integers(-(10**12), 10**12))
def test_ints_render_in_range_and_raise_outside(name: str, value: int) -> None:
    lo, hi, flag = INT_FIELDS[name]
    if lo <= value <= hi:
        assert _make(**{name: value}).render() == f"--{flag} {value}"
    else:
        with pytest.raises(InvalidRequestError, match=rf"{name} must be between {lo} and {hi}, got {value}"):
            _make(**{name: value})


@given(st.binary(max_size=64))
def test_encode_mask_accepts_exactly_image_magic(data: bytes) -> None:
    looks_like_image = (
        data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or (len(data) >= 26 and data[:2] == b"BM")
    )
    if looks_like_image:
        assert _decode(encode_mask(data)) == data
    else:
        with pytest.raises(InvalidRequestError, match=r"^mask is (not an image|empty)"):
            encode_mask(data)


# --------------------------------------------------------------------------------------------------
# Input checks: base URL origin, API key, headers, prompt length


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://api.acedata.cloud", "https://api.acedata.cloud"),
        ("https://api.acedata.cloud/", "https://api.acedata.cloud"),
        ("https://api.acedata.cloud//", "https://api.acedata.cloud"),
        ("HTTP://127.0.0.1:8080", "HTTP://127.0.0.1:8080"),
        ("http://[::1]:9/", "http://[::1]:9"),
    ],
)
def test_origin_accepted_without_trailing_slash(url: str, kept: str) -> None:
    assert validate_origin_url(url, "base_url") == kept


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://api.acedata.cloud/midjourney", "https://api.acedata.cloud"),
        ("https://api.goapi.ai/mj/v2/", "https://api.goapi.ai"),
        ("http://127.0.0.1:8080/x?y=1", "http://127.0.0.1:8080"),
        ("https://h.example?", "https://h.example"),
        ("https://h.example/#", "https://h.example"),
        ("https://h.example/;p", "https://h.example"),
    ],
)
def test_origin_refuses_path_query_fragment_and_names_the_origin(url: str, origin: str) -> None:
    with pytest.raises(
        InvalidRequestError, match=r"^base_url must be an origin, scheme://host\[:port\]"
    ) as caught:
        validate_origin_url(url, "base_url")
    assert repr(url) in str(caught.value)
    assert str(caught.value).endswith(f"use {origin!r}")


@pytest.mark.parametrize("url", ["ftp://h.example", "h.example", "https://", "https://h .example", 3])
def test_origin_refuses_what_is_not_an_http_url(url: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"^MJASYNC_BASE_URL"):
        validate_origin_url(url, "MJASYNC_BASE_URL")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cret@h.example", "'https://***@h.example'"),
        ("https://alice@h.example/", "'https://***@h.example/'"),
        ("https://a:b@c:s3cret@h.example", "'https://***@h.example'"),
        ("https://alice:s3/cret@h.example", "'https://***@h.example'"),
        ("alice:s3cret@h.example://x", "'***@h.example://x'"),
        ("https://alice:s3 cret\n@h.example", "'https://***@h.example'"),
    ],
)
def test_origin_refuses_credentials_and_masks_them(url: str, shown: str) -> None:
    with pytest.raises(InvalidRequestError, match="must not hold credentials") as caught:
        validate_origin_url(url, "base_url")
    assert str(caught.value).endswith(f"Got {shown}")


@given(
    st.text(max_size=12),
    st.text(min_size=4, max_size=24),
    st.sampled_from(["h.example", "h.example/midjourney", "127.0.0.1:99/?q#f", ""]),
)
def test_credentials_never_appear_in_the_message(user: str, password: str, tail: str) -> None:
    def message(url: str) -> str:
        with pytest.raises(InvalidRequestError) as caught:
            validate_origin_url(url, "base_url")
        return str(caught.value)

    assume(password not in message(f"https://{user}:@{tail}"))
    assert password not in message(f"https://{user}:{password}@{tail}")


def test_origin_check_leaves_validate_http_url_as_it_was() -> None:
    """Image, webhook and callback URLs keep their paths, queries and even credentials."""
    url = "https://u:p@cdn.example.com/a/b.png?sig=1#x"
    assert validate_http_url(url, "image_url") == url


@pytest.mark.parametrize(
    "key", ["k", "sk-0123456789abcdef", "a.b_c~d+e/f=", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"]
)
def test_api_key_of_visible_ascii_is_accepted(key: str) -> None:
    assert validate_api_key(key, "api_key") == key


@pytest.mark.parametrize(
    ("key", "described", "position", "hint"),
    [
        ("sk-secret-1\n", "a line feed (LF)", 12, True),
        ("\r\nsk-secret-1", "a carriage return (CR)", 1, True),
        ("sk-\x00secret-1", "a NUL character", 4, False),
        ("sk-secret-1\x1f", "a control character (U+001F)", 12, True),
        ("sk-secret-1\x7f", "a DEL character", 12, False),
        ("sk-sec ret-1", "a space", 7, False),
        ("\tsk-secret-1", "a tab", 1, True),
        ("sk-secret-1\u20ac", "a non-ASCII character", 12, False),
        ("sk-secret-1\u00e9", "a non-ASCII character", 12, False),
        ("sk-secret-1\u00a0", "a non-ASCII character", 12, True),
    ],
)
def test_api_key_refusal_says_what_and_where_but_not_the_key(
    key: str, described: str, position: int, hint: bool
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_api_key(key, "MJASYNC_API_KEY")
    message = str(caught.value)
    assert message.startswith(f"MJASYNC_API_KEY holds {described} at position {position} of {len(key)}: ")
    assert "secret" not in message and "sk-" not in message
    assert ("strip it" in message) is hint


def test_api_key_must_be_a_str() -> None:
    with pytest.raises(InvalidRequestError, match=r"^api_key must be a str, got bytes$"):
        validate_api_key(b"sk-secret", "api_key")


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=8), st.data())
def test_any_key_with_a_character_outside_visible_ascii_is_refused_unseen(
    clean: str, data: st.DataObject
) -> None:
    bad = data.draw(st.characters().filter(lambda c: not "\x21" <= c <= "\x7e"))
    at = data.draw(st.integers(0, len(clean)))
    key = clean[:at] + bad + clean[at:]
    with pytest.raises(InvalidRequestError) as caught:
        validate_api_key(key, "api_key")
    assert key not in str(caught.value) and clean not in str(caught.value)


def test_headers_are_copied_when_valid() -> None:
    given_headers = {"x-team": "render farm\t#2; \u00fc", "X-Trace_ID.v2": ""}
    checked = validate_headers(given_headers)
    assert checked == given_headers and checked is not given_headers
    assert validate_headers(None) == {}


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"x-t": "a\nb"}, r"^default_headers\['x-t'\] holds a line feed \(LF\) at position 2 of 3"),
        ({"x-t": "\x00"}, "a NUL character"),
        ({"x-t": "a\x7f"}, "a DEL character"),
        ({"x-t": "\x0b"}, r"a control character \(U\+000B\)"),
        ({"x-t": 5}, r"^default_headers\['x-t'\] must be a str, got int$"),
        ({"x:y": "v"}, "is not a header name"),
        ({"": "v"}, "is not a header name"),
        ({"x\r\ny": "v"}, "is not a header name"),
        ({b"x": "v"}, "is not a header name"),
        ([("x", "v")], "^default_headers must be a mapping"),
    ],
)
def test_headers_aiohttp_would_refuse_are_refused(headers: Any, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        validate_headers(headers)


def test_header_refusal_does_not_repeat_the_value() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_headers({"x-token": "team-secret\r\n"})
    assert "team-secret" not in str(caught.value)


def test_prompt_length_limit_is_inclusive_and_says_how_to_change_it() -> None:
    assert check_prompt_length("x" * MAX_PROMPT_CHARS) == "x" * MAX_PROMPT_CHARS
    with pytest.raises(InvalidRequestError) as caught:
        check_prompt_length("x" * (MAX_PROMPT_CHARS + 1))
    assert str(caught.value) == (
        f"prompt is {MAX_PROMPT_CHARS + 1} characters long, over the limit of {MAX_PROMPT_CHARS}; nothing was "
        "sent. If your provider takes longer prompts, raise the limit with Client(max_prompt_chars=...)"
    )


def test_prompt_length_names_the_text_and_the_setting_given() -> None:
    assert check_prompt_length("\u732b" * 3, 3) == "\u732b" * 3
    with pytest.raises(
        InvalidRequestError, match=r"^line 7 is 4 characters long, over the limit of 3;.* --max-prompt-chars$"
    ):
        check_prompt_length("abcd", 3, what="line 7", setting="--max-prompt-chars")


@pytest.mark.parametrize("value", [0, -5, 2.0, "10", True, None])
def test_max_prompt_chars_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(InvalidRequestError, match=r"^max_prompt_chars must be a positive int"):
        check_max_prompt_chars(value)
    assert check_max_prompt_chars(1) == 1
