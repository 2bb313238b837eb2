"""The request builders (`mjasync._requests`): pure functions from a provider and arguments to a request.

No client, no emulator: each builder's request is checked field by field, and each careless argument
is refused with `InvalidRequestError` (or `UnsupportedFeatureError` where the provider lacks it).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from mjasync import _requests as requests
from mjasync._exceptions import ActionNotAvailableError, InvalidRequestError, UnsupportedFeatureError
from mjasync._models.params import PromptParams
from mjasync._models.requests import (
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    SeedRequest,
    ShortenRequest,
    TranslateRequest,
    VideosRequest,
)
from mjasync._models.results import ImagineResult, VideoResult
from mjasync._providers.acedata import ACEDATA
from mjasync._providers.goapi import GOAPI

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24
PNG_B64 = base64.b64encode(PNG).decode()
URL = "https://cdn.example/a.png"
URL2 = "https://cdn.example/b.png"
GRID_ACTIONS = ["upscale1", "upscale2", "upscale3", "upscale4", "variation1", "variation2", "reroll"]
UPSCALED_ACTIONS = [
    "upscale_2x",
    "upscale_4x",
    "variation_subtle",
    "variation_strong",
    "zoom_out_2x",
    "zoom_out_1_5x",
    "pan_left",
    "pan_right",
    "pan_up",
    "pan_down",
]
GRID = ImagineResult(task_id="task-grid", image_id="img-grid", image_url=URL, actions=GRID_ACTIONS)
UPSCALED = ImagineResult(task_id="task-up", image_id="img-up", image_url=URL, actions=UPSCALED_ACTIONS)


# -- imagine ------------------------------------------------------------------------------------------


def test_imagine_sends_the_prompt_and_only_what_was_set() -> None:
    assert requests.imagine(ACEDATA, "  a red fox  ") == ImagineRequest(action="generate", prompt="a red fox")


def test_imagine_puts_image_urls_first_and_flags_last() -> None:
    params = PromptParams(stylize=100)
    request = requests.imagine(ACEDATA, "a fox", image_urls=[URL], params=params)
    assert request.prompt == f"{URL} a fox --s 100"


def test_imagine_sends_every_option_as_its_field() -> None:
    request = requests.imagine(
        ACEDATA,
        "a fox",
        mode="relax",
        translation=True,
        split_images=False,
        quality="2",
        moodboard=False,
        server_wait=30,
        callback_url="https://hooks.example/mj",
    )
    assert (request.mode, request.translation, request.split_images) == ("relax", True, False)
    assert (request.quality, request.moodboard) == ("2", False)
    assert request.timeout == 30.0 and isinstance(request.timeout, float)
    assert request.callback_url == "https://hooks.example/mj"


def test_imagine_says_version_hd_and_aspect_ratio_in_the_prompt_and_as_fields() -> None:
    request = requests.imagine(ACEDATA, "a fox", version="6.1", hd=True, aspect_ratio="16:9")
    assert request.prompt == "a fox --ar 16:9 --v 6.1 --hd"
    assert (request.version, request.hd, request.aspect_ratio) == ("6.1", True, "16:9")


def test_imagine_takes_the_version_from_params_and_adds_hd_once() -> None:
    request = requests.imagine(ACEDATA, "a fox --hd", params=PromptParams(version="7"), hd=True)
    assert request.version == "7"
    assert request.prompt is not None and request.prompt.split().count("--hd") == 1


@pytest.mark.parametrize(
    ("prompt", "params"),
    [("a fox --sref https://a.example/s.png", None), ("a fox", PromptParams(style_reference=(URL,)))],
)
def test_imagine_marks_a_style_reference(prompt: str, params: PromptParams | None) -> None:
    assert requests.imagine(ACEDATA, prompt, params=params).style_reference is True


def test_imagine_counts_the_whole_prompt_against_the_limit() -> None:
    requests.imagine(ACEDATA, "x" * 10, max_prompt_chars=10)
    with pytest.raises(InvalidRequestError, match="prompt is 11 characters"):
        requests.imagine(ACEDATA, "x" * 11, max_prompt_chars=10)
    with pytest.raises(InvalidRequestError, match="image URLs and --flags"):
        requests.imagine(ACEDATA, "x", params=PromptParams(stylize=1), max_prompt_chars=5)


IMAGINE_REJECTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "conflicts with params.aspect_ratio",
        {"aspect_ratio": "1:1", "params": PromptParams(aspect_ratio="2:3")},
    ),
    ("version must look like", {"version": "seven"}),
    ("version must look like", {"version": 7}),
    ("conflicts with params.version", {"version": "7", "params": PromptParams(version="6")}),
    ("hd must be True, False or None", {"hd": "yes"}),
    ("quality must be one of", {"quality": "3"}),
    ("moodboard must be True", {"moodboard": 1}),
    ("skip_prompt_check must be True", {"skip_prompt_check": "no"}),
    ("mode must be one of", {"mode": "slow"}),
    ("translation must be True", {"translation": 0}),
    ("split_images must be True", {"split_images": "true"}),
    ("server_wait must be a positive number", {"server_wait": -1}),
    ("server_wait must be a positive number", {"server_wait": 0}),
    ("server_wait must be a positive number", {"server_wait": float("inf")}),
    ("server_wait must be a positive number", {"server_wait": True}),
    ("server_wait must be a positive number", {"server_wait": "30"}),
    ("callback_url", {"callback_url": "not a url"}),
    ("image_urls", {"image_urls": "https://one.example/string.png"}),
]


@pytest.mark.parametrize(("message", "options"), IMAGINE_REJECTIONS)
def test_imagine_refuses_careless_options(message: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        requests.imagine(ACEDATA, "a fox", **options)


def test_imagine_refuses_an_empty_prompt() -> None:
    with pytest.raises(InvalidRequestError, match="prompt is empty"):
        requests.imagine(ACEDATA, "   ")


def test_the_server_side_wait_is_no_longer_called_timeout() -> None:
    with pytest.raises(TypeError, match="timeout"):
        requests.imagine(ACEDATA, "a fox", timeout=30)  # type: ignore[call-arg]


def test_what_the_provider_lacks_is_refused_before_sending() -> None:
    with pytest.raises(UnsupportedFeatureError, match="skip_prompt_check"):
        requests.imagine(ACEDATA, "a fox", skip_prompt_check=True)
    with pytest.raises(UnsupportedFeatureError, match="moodboards"):
        requests.imagine(GOAPI, "a fox", moodboard=True)
    assert requests.imagine(GOAPI, "a fox", skip_prompt_check=True).skip_prompt_check is True


# -- blend ---------------------------------------------------------------------------------------------


def test_a_blend_names_its_images_and_says_its_shape_as_the_provider_wants() -> None:
    acedata = requests.blend(ACEDATA, [URL, URL2], "mixed", dimension="portrait", mode="fast")
    assert acedata == ImagineRequest(
        action="generate",
        prompt=f"{URL} {URL2} mixed --ar 2:3",
        blend_urls=[URL, URL2],
        dimension="portrait",
        mode="fast",
    )
    goapi = requests.blend(GOAPI, [URL, URL2], dimension="landscape")
    assert goapi.dimension == "landscape" and goapi.aspect_ratio is None
    assert goapi.prompt == f"{URL} {URL2}"


BLEND_REJECTIONS: list[tuple[str, Callable[[], object]]] = [
    ("between 2 and 5", lambda: requests.blend(ACEDATA, [URL])),
    ("between 2 and 5", lambda: requests.blend(ACEDATA, [URL] * 6)),
    ("between 2 and 5", lambda: requests.blend(ACEDATA, "https://x.example/aa.png")),
    ("dimension must be one of", lambda: requests.blend(ACEDATA, [URL, URL2], dimension="round")),  # type: ignore[arg-type]
    ("drop the aspect ratio", lambda: requests.blend(GOAPI, [URL, URL2], "--ar 1:1", dimension="square")),
    (
        "drop the aspect ratio",
        lambda: requests.blend(
            GOAPI, [URL, URL2], params=PromptParams(aspect_ratio="1:1"), dimension="square"
        ),
    ),
    ("text or parameters in a blend", lambda: requests.blend(GOAPI, [URL, URL2], "words")),
    ("server_wait", lambda: requests.blend(ACEDATA, [URL, URL2], server_wait=-3)),
    ("image_urls\\[1\\]", lambda: requests.blend(ACEDATA, [URL, "ftp://x/y.png"])),
]


@pytest.mark.parametrize(("message", "build"), BLEND_REJECTIONS)
def test_a_careless_blend_is_refused(message: str, build: Callable[[], object]) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        build()


# -- follow-up actions --------------------------------------------------------------------------------


def test_an_action_names_its_image_by_the_providers_follow_up_id() -> None:
    assert requests.act(ACEDATA, GRID, "upscale2") == ImagineRequest(action="upscale2", image_id="img-grid")
    assert requests.act(GOAPI, GRID, "upscale2").image_id == "task-grid"
    assert requests.act(ACEDATA, "  some-id ", "upscale_9x").image_id == "some-id"  # an id: not checked


def test_an_action_carries_its_prompt_mask_and_options() -> None:
    request = requests.act(
        ACEDATA,
        UPSCALED,
        "variation_region",
        prompt=" a hat ",
        mask=PNG,
        mode="turbo",
        translation=False,
        split_images=True,
        server_wait=60,
        callback_url="https://hooks.example/mj",
    )
    assert (request.prompt, request.mask) == ("a hat", PNG_B64)
    assert (request.mode, request.translation, request.split_images, request.timeout) == (
        "turbo",
        False,
        True,
        60.0,
    )
    assert request.callback_url == "https://hooks.example/mj"


FAILED = ImagineResult(task_id="t", image_id="i", image_url=URL, actions=GRID_ACTIONS, success=False)
UNFINISHED = ImagineResult(task_id="t", image_id="i", image_url=URL, progress=40)  # no actions yet

ACT_REJECTIONS: list[tuple[type[Exception], str, Callable[[], object]]] = [
    (InvalidRequestError, "follow-up action name", lambda: requests.act(ACEDATA, GRID, "Upscale 1")),
    (InvalidRequestError, "follow-up action name", lambda: requests.act(ACEDATA, GRID, "generate")),
    (InvalidRequestError, "follow-up action name", lambda: requests.act(ACEDATA, GRID, 3)),  # type: ignore[arg-type]
    (ActionNotAvailableError, "upscale_2x", lambda: requests.act(ACEDATA, GRID, "upscale_2x")),
    (InvalidRequestError, "finished result", lambda: requests.act(ACEDATA, FAILED, "upscale1")),
    (InvalidRequestError, "finished result", lambda: requests.act(ACEDATA, UNFINISHED, "upscale1")),
    (InvalidRequestError, "expected an ImagineResult", lambda: requests.act(ACEDATA, "  ", "upscale1")),
    (InvalidRequestError, "expected an ImagineResult", lambda: requests.act(ACEDATA, 42, "upscale1")),  # type: ignore[arg-type]
    (InvalidRequestError, "needs a mask", lambda: requests.act(ACEDATA, UPSCALED, "variation_region")),
    (InvalidRequestError, "prompt, when given", lambda: requests.act(ACEDATA, GRID, "upscale1", prompt=" ")),
    (InvalidRequestError, "mask is not an image", lambda: requests.act(ACEDATA, "id", "x", mask=b"nope")),
    (InvalidRequestError, "mode must be one of", lambda: requests.act(ACEDATA, "id", "x", mode="slow")),  # type: ignore[arg-type]
    (
        InvalidRequestError,
        "prompt is 3 characters",
        lambda: requests.act(ACEDATA, "id", "x", prompt="abc", max_prompt_chars=2),
    ),
    (UnsupportedFeatureError, "the 'teleport' action", lambda: requests.act(GOAPI, "id", "teleport")),
]


@pytest.mark.parametrize(("error", "message", "build"), ACT_REJECTIONS)
def test_a_careless_action_is_refused(
    error: type[Exception], message: str, build: Callable[[], object]
) -> None:
    with pytest.raises(error, match=message):
        build()


FOLLOW_UPS: list[tuple[Callable[[], ImagineRequest], str]] = [
    (lambda: requests.upscale(ACEDATA, GRID, 1), "upscale1"),
    (lambda: requests.upscale(ACEDATA, GRID, 4), "upscale4"),
    (lambda: requests.variation(ACEDATA, GRID, 2), "variation2"),
    (lambda: requests.act(ACEDATA, GRID, "reroll"), "reroll"),
    (lambda: requests.act(ACEDATA, UPSCALED, "upscale_2x"), "upscale_2x"),
    (lambda: requests.act(ACEDATA, UPSCALED, "upscale_4x"), "upscale_4x"),
    (lambda: requests.act(ACEDATA, UPSCALED, "variation_subtle"), "variation_subtle"),
    (lambda: requests.act(ACEDATA, UPSCALED, "variation_strong"), "variation_strong"),
    (lambda: requests.zoom_out(ACEDATA, UPSCALED), "zoom_out_2x"),
    (lambda: requests.zoom_out(ACEDATA, UPSCALED, "2"), "zoom_out_2x"),
    (lambda: requests.zoom_out(ACEDATA, UPSCALED, "1.5"), "zoom_out_1_5x"),
    (lambda: requests.zoom_out(ACEDATA, UPSCALED, 1.5), "zoom_out_1_5x"),  # type: ignore[arg-type]
    (lambda: requests.pan(ACEDATA, UPSCALED, "up"), "pan_up"),
    (lambda: requests.variation_region(ACEDATA, UPSCALED, PNG), "variation_region"),
]


@pytest.mark.parametrize(("build", "action"), FOLLOW_UPS)
def test_each_follow_up_is_its_action(build: Callable[[], ImagineRequest], action: str) -> None:
    request = build()
    assert request.action == action and request.image_id in ("img-grid", "img-up")


def test_follow_ups_pass_their_options_on() -> None:
    request = requests.upscale(
        ACEDATA, GRID, 3, mode="fast", server_wait=10, max_prompt_chars=5, prompt="abc"
    )
    assert (request.action, request.mode, request.timeout, request.prompt) == (
        "upscale3",
        "fast",
        10.0,
        "abc",
    )
    region = requests.variation_region(ACEDATA, UPSCALED, PNG, "a hat", split_images=True)
    assert (region.prompt, region.mask, region.split_images) == ("a hat", PNG_B64, True)
    with pytest.raises(InvalidRequestError, match="prompt is 6 characters"):
        requests.variation_region(ACEDATA, UPSCALED, PNG, "a cape", max_prompt_chars=5)


FOLLOW_UP_REJECTIONS: list[tuple[str, Callable[[], object]]] = [
    ("grid image index must be 1 to 4", lambda: requests.upscale(ACEDATA, GRID, 5)),  # type: ignore[arg-type]
    ("grid image index must be 1 to 4", lambda: requests.upscale(ACEDATA, GRID, 0)),  # type: ignore[arg-type]
    ("grid image index must be 1 to 4", lambda: requests.variation(ACEDATA, GRID, True)),  # type: ignore[arg-type]
    ("grid image index must be 1 to 4", lambda: requests.variation(ACEDATA, GRID, "2")),  # type: ignore[arg-type]
    ("zoom_out factor must be 2 or 1.5", lambda: requests.zoom_out(ACEDATA, UPSCALED, 3)),  # type: ignore[arg-type]
    ("zoom_out factor must be 2 or 1.5", lambda: requests.zoom_out(ACEDATA, UPSCALED, True)),  # type: ignore[arg-type]
    ("pan direction must be", lambda: requests.pan(ACEDATA, UPSCALED, "sideways")),  # type: ignore[arg-type]
    ("needs a mask", lambda: requests.variation_region(ACEDATA, UPSCALED, None)),
]


@pytest.mark.parametrize(("message", "build"), FOLLOW_UP_REJECTIONS)
def test_a_careless_follow_up_is_refused(message: str, build: Callable[[], object]) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        build()


# -- edits and videos ----------------------------------------------------------------------------------


def test_edits_sends_the_image_prompt_mask_and_options() -> None:
    request = requests.edits(ACEDATA, URL, " a hat ", mask=PNG, mode="fast", split_images=True, server_wait=5)
    assert request == EditsRequest(
        action="generate",
        image_url=URL,
        prompt="a hat",
        mask=PNG_B64,
        mode="fast",
        split_images=True,
        timeout=5.0,
    )


EDITS_REJECTIONS: list[tuple[type[Exception], str, Callable[[], object]]] = [
    (InvalidRequestError, "image_url", lambda: requests.edits(ACEDATA, "ftp://x/y.png", "a hat")),
    (InvalidRequestError, "non-empty prompt", lambda: requests.edits(ACEDATA, URL, "  ")),
    (
        InvalidRequestError,
        "prompt is 5 characters",
        lambda: requests.edits(ACEDATA, URL, "a hat", max_prompt_chars=4),
    ),
    (
        InvalidRequestError,
        "mask is not an image",
        lambda: requests.edits(ACEDATA, URL, "a hat", mask=b"nope"),
    ),
    (InvalidRequestError, "split_images", lambda: requests.edits(ACEDATA, URL, "a hat", split_images=1)),  # type: ignore[arg-type]
    (UnsupportedFeatureError, "edits", lambda: requests.edits(GOAPI, URL, "a hat")),
]


@pytest.mark.parametrize(("error", "message", "build"), EDITS_REJECTIONS)
def test_careless_edits_are_refused(
    error: type[Exception], message: str, build: Callable[[], object]
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_videos_and_their_extension_send_what_was_set() -> None:
    made = requests.videos(
        ACEDATA, URL, " waves ", end_image_url=URL2, mode="turbo", resolution="720p", loop=True, server_wait=9
    )
    assert made == VideosRequest(
        action="generate",
        image_url=URL,
        end_image_url=URL2,
        prompt="waves",
        mode="turbo",
        resolution="720p",
        loop=True,
        timeout=9.0,
    )
    assert requests.videos(ACEDATA, URL) == VideosRequest(action="generate", image_url=URL)
    extended = requests.extend_video(
        ACEDATA, VideoResult(video_id="vid", video_urls=[URL]), index=3, prompt="more"
    )
    assert extended == VideosRequest(action="extend", video_id="vid", video_index=3, prompt="more")
    assert requests.extend_video(ACEDATA, "vid-2").video_index == 0


VIDEO_REJECTIONS: list[tuple[type[Exception], str, Callable[[], object]]] = [
    (InvalidRequestError, "image_url", lambda: requests.videos(ACEDATA, "nope")),
    (InvalidRequestError, "end_image_url", lambda: requests.videos(ACEDATA, URL, end_image_url="nope")),
    (InvalidRequestError, "prompt must be non-empty", lambda: requests.videos(ACEDATA, URL, " ")),
    (
        InvalidRequestError,
        "prompt is 2 characters",
        lambda: requests.videos(ACEDATA, URL, "ab", max_prompt_chars=1),
    ),
    (
        InvalidRequestError,
        "mode must be one of fast, turbo",
        lambda: requests.videos(ACEDATA, URL, mode="relax"),  # type: ignore[arg-type]
    ),
    (
        InvalidRequestError,
        "resolution must be one of",
        lambda: requests.videos(ACEDATA, URL, resolution="4k"),  # type: ignore[arg-type]
    ),
    (InvalidRequestError, "loop must be True", lambda: requests.videos(ACEDATA, URL, loop="yes")),  # type: ignore[arg-type]
    (InvalidRequestError, "server_wait", lambda: requests.videos(ACEDATA, URL, server_wait=-1)),
    (UnsupportedFeatureError, "videos", lambda: requests.videos(GOAPI, URL)),
    (
        InvalidRequestError,
        "finished videos result",
        lambda: requests.extend_video(ACEDATA, VideoResult(video_urls=[URL])),
    ),
    (InvalidRequestError, "finished videos result", lambda: requests.extend_video(ACEDATA, "")),
    (InvalidRequestError, "video index must be 0 to 3", lambda: requests.extend_video(ACEDATA, "v", index=4)),  # type: ignore[arg-type]
    (
        InvalidRequestError,
        "video index must be 0 to 3",
        lambda: requests.extend_video(ACEDATA, "v", index=False),  # type: ignore[arg-type]
    ),
    (UnsupportedFeatureError, "videos", lambda: requests.extend_video(GOAPI, "v")),
]


@pytest.mark.parametrize(("error", "message", "build"), VIDEO_REJECTIONS)
def test_careless_videos_are_refused(
    error: type[Exception], message: str, build: Callable[[], object]
) -> None:
    with pytest.raises(error, match=message):
        build()


# -- short calls and task lookups ----------------------------------------------------------------------


def test_short_calls_carry_their_one_field() -> None:
    assert requests.describe(ACEDATA, URL) == DescribeRequest(image_url=URL)
    assert requests.shorten(ACEDATA, " a long prompt ") == ShortenRequest(prompt="a long prompt")
    assert requests.translate(ACEDATA, " 一只狐狸 ") == TranslateRequest(content="一只狐狸")
    assert requests.seed(ACEDATA, GRID) == SeedRequest(image_id="img-grid")
    assert requests.seed(GOAPI, GRID) == SeedRequest(image_id="task-grid")
    assert requests.seed(ACEDATA, " img-7 ") == SeedRequest(image_id="img-7")


SHORT_CALL_REJECTIONS: list[tuple[type[Exception], str, Callable[[], object]]] = [
    (InvalidRequestError, "image_url", lambda: requests.describe(ACEDATA, "ftp://x/y.png")),
    (InvalidRequestError, "prompt must be non-empty", lambda: requests.shorten(ACEDATA, "")),
    (
        InvalidRequestError,
        "prompt is 3 characters",
        lambda: requests.shorten(ACEDATA, "abc", max_prompt_chars=2),
    ),
    (InvalidRequestError, "content must be non-empty", lambda: requests.translate(ACEDATA, "  ")),
    (
        InvalidRequestError,
        "content is 3 characters",
        lambda: requests.translate(ACEDATA, "abc", max_prompt_chars=2),
    ),
    (InvalidRequestError, "image_id must be non-empty", lambda: requests.seed(ACEDATA, "")),
    (
        InvalidRequestError,
        "image_id must be non-empty",
        lambda: requests.seed(ACEDATA, ImagineResult(image_url=URL)),
    ),
    (UnsupportedFeatureError, "shorten", lambda: requests.shorten(GOAPI, "a fox")),
    (UnsupportedFeatureError, "translate", lambda: requests.translate(GOAPI, "a fox")),
]


@pytest.mark.parametrize(("error", "message", "build"), SHORT_CALL_REJECTIONS)
def test_careless_short_calls_are_refused(
    error: type[Exception], message: str, build: Callable[[], object]
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_task_lookups_take_ids_or_trace_ids() -> None:
    assert requests.task_lookup(ACEDATA, "t1", None) == ACEDATA.task_request("t1")
    assert requests.task_lookup(ACEDATA, None, "tr1") == ACEDATA.task_request(trace_id="tr1")
    assert requests.task_batch_lookup(ACEDATA, ["a", "b"], ()) == ACEDATA.task_batch_request(["a", "b"])
    assert requests.task_batch_lookup(ACEDATA, (), ["x"]) == ACEDATA.task_batch_request(None, trace_ids=["x"])
    with pytest.raises(InvalidRequestError, match="exactly one"):
        requests.task_lookup(ACEDATA, "t1", "tr1")
    with pytest.raises(InvalidRequestError, match="exactly one"):
        requests.task_lookup(ACEDATA, None, None)
    with pytest.raises(InvalidRequestError, match="not one string"):
        requests.task_batch_lookup(ACEDATA, "abc", ())
    with pytest.raises(InvalidRequestError, match="at least one"):
        requests.task_batch_lookup(ACEDATA, (), ())


# -- the account -----------------------------------------------------------------------------------------


def test_the_account_comes_from_arguments_then_variables_then_the_provider() -> None:
    env = {"MJASYNC_API_KEY": "env-key", "ACEDATACLOUD_API_TOKEN": "ace-key"}
    assert requests.account(ACEDATA, "arg-key", "http://127.0.0.1:9/", env) == (
        "arg-key",
        "http://127.0.0.1:9",
    )
    assert requests.account(ACEDATA, None, None, env) == ("env-key", "https://api.acedata.cloud")
    assert requests.account(ACEDATA, None, None, {"ACEDATACLOUD_API_TOKEN": "ace-key"})[0] == "ace-key"
    origin = {"MJASYNC_API_KEY": "k", "MJASYNC_BASE_URL": "http://127.0.0.1:8"}
    assert requests.account(GOAPI, None, None, origin) == ("k", "http://127.0.0.1:8")


def test_a_goapi_account_never_takes_acedatas_key() -> None:
    with pytest.raises(InvalidRequestError, match=r"no API key: pass api_key=\.\.\. or set MJASYNC_API_KEY$"):
        requests.account(GOAPI, None, None, {"ACEDATACLOUD_API_TOKEN": "ace-key"})


def test_a_careless_account_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="api_key"):
        requests.account(ACEDATA, "two words", None, {})
    with pytest.raises(InvalidRequestError, match="base_url"):
        requests.account(ACEDATA, "k", "http://127.0.0.1:9/v1", {})
    with pytest.raises(InvalidRequestError, match="MJASYNC_BASE_URL"):
        requests.account(ACEDATA, "k", None, {"MJASYNC_BASE_URL": "not a url"})


def test_required_text_and_first_given() -> None:
    assert requests.required_text("x", "  a ") == "a"
    with pytest.raises(InvalidRequestError, match="x must be non-empty text"):
        requests.required_text("x", 5)
    assert requests.first_given(("a", None), ("b", ""), ("c", "v")) == ("c", "v")
    assert requests.first_given(("a", None), ("b", "")) == ("b", "")
