"""ProxyProvider, pure: the midjourney-proxy protocol's bodies, buttons, replies, Task objects and errors.

The JSON examples are midjourney-proxy-api.md's (§10 and the sections they illustrate), copied here
so the tests never read the reference itself.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from mjasync import _redact
from mjasync import _requests as requests
from mjasync._exceptions import (
    ActionNotAvailableError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    JobFailedError,
    MJError,
    ModerationError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    TaskNotFoundError,
    UnsupportedFeatureError,
)
from mjasync._models.requests import (
    DescribeRequest,
    EditsRequest,
    ImagineRequest,
    SeedRequest,
    ShortenRequest,
    TranslateRequest,
    VideosRequest,
)
from mjasync._models.results import (
    DescribeResult,
    EditsResult,
    ImagineResult,
    ImagineUpdate,
    Result,
    SeedResult,
    ShortenResult,
    VideoResult,
    finalize,
)
from mjasync._models.task import TaskRecord
from mjasync._providers import PROVIDERS, CallbackTarget, CallRequest, Provider, WireRequest
from mjasync._providers.proxy import (
    MAX_IMAGE_BYTES,
    MAX_INLINE_BYTES,
    PROXY,
    PROXY_BEARER,
    ListingRequest,
    ProxyProvider,
    data_url,
    job_marker,
)
from mjasync._retry import made_no_task, phase_of

#: The provider once the engine sends the MODAL step (issue 16's engine part): the registered one.
MODAL = ProxyProvider(modal_step=True)
#: A proxy client that does not send the MODAL step (as the registered one did before it could).
NO_MODAL = ProxyProvider(modal_step=False)
H = "9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff"
GRID_ID = "1720001234567123"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 24
GIF = b"GIF89a" + b"\x00" * 24
WEBP = b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 16
MASK = base64.b64encode(PNG).decode()
GRID_ACTIONS = [
    "upscale1", "upscale2", "upscale3", "upscale4", "reroll",
    "variation1", "variation2", "variation3", "variation4",
]  # fmt: skip

# -- the reference's examples (§10), verbatim ---------------------------------------------------------

REPLY_ACCEPTED = {
    "code": 1,
    "description": "提交成功",
    "result": "1720001234567123",
    "properties": {"discordInstanceId": "1118138338562560102"},
}
REPLY_QUEUED = {
    "code": 22,
    "description": "排队中，前面还有2个任务",
    "result": "1720001234567124",
    "properties": {"numberOfQueues": 2, "discordInstanceId": "1118138338562560102"},
}
REPLY_QUEUE_FULL = {
    "code": 23,
    "description": "队列已满，请稍后尝试",
    "result": None,
    "properties": {"discordInstanceId": "1118138338562560102"},
}
REPLY_TA_QUEUE_FULL = {
    "code": 9,
    "description": "提交失败，队列已满，请稍后重试",
    "result": None,
    "properties": {"discordInstanceId": "1261111111111111111", "discordChannelId": "1261111111111111111"},
}
REPLY_BANNED = {
    "code": 24,
    "description": "可能包含敏感词",
    "result": None,
    "properties": {"promptEn": "nude statue", "bannedWord": "nude"},
}
REPLY_MODAL = {
    "code": 21,
    "description": "Waiting for window confirm",
    "result": "1720001299000456",
    "properties": {"finalPrompt": "red fox in snow --v 6.1", "remix": True},
}
REPLY_EXISTS = {
    "code": 21,
    "description": "任务已存在",
    "result": "1720000000000999",
    "properties": {"status": "SUCCESS", "imageUrl": "https://cdn.discordapp.com/attachments/1/2/fox_u1.png"},
}
REPLY_INVALID = {"code": 4, "description": "prompt不能为空", "result": None, "properties": {}}
REPLY_PARENT_GONE = {"code": 3, "description": "关联任务不存在或已失效", "result": None, "properties": {}}
NA_TASK_NOT_FOUND = {"description": "task_not_found ", "type": "upstream_error", "code": 4}
NA_UPSTREAM_FAILED = {"description": "do_request_failed ", "type": "upstream_error", "code": 5}

TASK_IN_PROGRESS: dict[str, Any] = {
    "id": "1720001234567123", "action": "IMAGINE", "status": "IN_PROGRESS",
    "prompt": "red fox in snow --ar 3:2", "promptEn": "red fox in snow --ar 3:2",
    "description": "/imagine red fox in snow --ar 3:2", "state": "job-4b1e9c",
    "submitTime": 1720001234567, "startTime": 1720001236020, "finishTime": None,
    "imageUrl": "https://cdn.discordapp.com/attachments/111/222/user_red_fox_in_snow_0a1b2c3d.webp",
    "progress": "45%", "failReason": None,
    "properties": {"notifyHook": "https://app.example/hook?t=SECRET", "nonce": "1189230000000000001",
        "discordInstanceId": "1118138338562560102", "finalPrompt": "red fox in snow --ar 3:2",
        "progressMessageId": "1260000000000000001", "messageHash": "0a1b2c3d-1111-2222-3333-444455556666"},
}  # fmt: skip

TASK_GRID: dict[str, Any] = {
    "id": "1720001234567123", "action": "IMAGINE", "status": "SUCCESS",
    "prompt": "red fox in snow --v 6.1", "promptEn": "red fox in snow --v 6.1",
    "description": "/imagine red fox in snow --v 6.1", "state": "job-4b1e9c",
    "submitTime": 1720001234567, "startTime": 1720001236020, "finishTime": 1720001268431,
    "imageUrl": "https://cdn.discordapp.com/attachments/111/333/user_red_fox_in_snow_9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff.png",
    "progress": "100%", "failReason": "",
    "properties": {"finalPrompt": "red fox in snow --v 6.1", "discordInstanceId": "1118138338562560102",
        "botType": "MID_JOURNEY", "messageId": "1260000000000000009", "messageHash": "9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff"},
    "buttons": [
        {"customId": "MJ::JOB::upsample::1::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "U1", "type": 2, "style": 2},
        {"customId": "MJ::JOB::upsample::2::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "U2", "type": 2, "style": 2},
        {"customId": "MJ::JOB::upsample::3::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "U3", "type": 2, "style": 2},
        {"customId": "MJ::JOB::upsample::4::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "U4", "type": 2, "style": 2},
        {"customId": "MJ::JOB::reroll::0::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff::SOLO", "emoji": "🔄", "label": "", "type": 2, "style": 2},
        {"customId": "MJ::JOB::variation::1::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "V1", "type": 2, "style": 2},
        {"customId": "MJ::JOB::variation::2::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "V2", "type": 2, "style": 2},
        {"customId": "MJ::JOB::variation::3::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "V3", "type": 2, "style": 2},
        {"customId": "MJ::JOB::variation::4::9f8e7d6c-aaaa-bbbb-cccc-ddddeeeeffff", "emoji": "", "label": "V4", "type": 2, "style": 2},
    ],
}  # fmt: skip

#: The buttons on the UPSCALE result of a v6.1 grid (§10.3, TA's Discord template), `{h}` filled in.
UPSCALED_BUTTONS = {
    "upscale_subtle": "MJ::JOB::upsample_v6r1_2x_subtle::1::{h}::SOLO",
    "upscale_creative": "MJ::JOB::upsample_v6r1_2x_creative::1::{h}::SOLO",
    "variation_subtle": "MJ::JOB::low_variation::1::{h}::SOLO",
    "variation_strong": "MJ::JOB::high_variation::1::{h}::SOLO",
    "variation_region": "MJ::Inpaint::1::{h}::SOLO",
    "zoom_out_2x": "MJ::Outpaint::50::1::{h}::SOLO",
    "zoom_out_1_5x": "MJ::Outpaint::75::1::{h}::SOLO",
    "zoom_custom": "MJ::CustomZoom::{h}",
    "pan_left": "MJ::JOB::pan_left::1::{h}::SOLO",
    "pan_right": "MJ::JOB::pan_right::1::{h}::SOLO",
    "pan_up": "MJ::JOB::pan_up::1::{h}::SOLO",
    "pan_down": "MJ::JOB::pan_down::1::{h}::SOLO",
}
#: v5 upscales' 2x/4x buttons (§5.5).
V5_BUTTONS = {
    "upscale_2x": "MJ::JOB::upsample_v5_2x::1::{h}::SOLO",
    "upscale_4x": "MJ::JOB::upsample_v5_4x::1::{h}::SOLO",
}

TASK_FAILURE: dict[str, Any] = {
    "id": "1720001234567200", "action": "IMAGINE", "status": "FAILURE", "prompt": "cat --ar 0:1",
    "promptEn": "cat --ar 0:1", "description": "/imagine cat --ar 0:1", "state": None,
    "submitTime": 1720001300000, "startTime": 1720001301500, "finishTime": 1720001303100,
    "imageUrl": None, "progress": "", "failReason": "[Invalid parameter] Invalid aspect ratio",
    "properties": {"discordInstanceId": "1118138338562560102", "nonce": "1189230000000000077"},
}  # fmt: skip

DESCRIBE_TEXT = "1️⃣ a fox standing in snow, muted tones --ar 3:2\n\n2️⃣ …\n\n3️⃣ …\n\n4️⃣ …"
TASK_DESCRIBE: dict[str, Any] = {
    "id": "1720001400000321", "action": "DESCRIBE", "status": "SUCCESS",
    "prompt": DESCRIBE_TEXT, "promptEn": DESCRIBE_TEXT,
    "description": "/describe 1720001400000321.png",
    "imageUrl": "https://cdn.discordapp.com/ephemeral-attachments/…/1720001400000321.png",
    "progress": "100%", "properties": {"finalPrompt": DESCRIBE_TEXT},
}  # fmt: skip

#: §10.7, filled out with the fields every Task object has.
TASK_MODAL: dict[str, Any] = {
    "id": "1720001299000456", "action": "ZOOM", "status": "MODAL", "parentId": "1720001234567123",
    "description": "Waiting for window confirm", "progress": None, "state": "mjasync-0", "failReason": None,
}  # fmt: skip

#: MJ's /shorten answer as the bot writes it (the proxy keeps it in `properties.finalPrompt`, §3.8).
SHORTEN_TEXT = (
    "**Important tokens**\nwhimsical majestic **tower of donuts** ~~please~~\n\n**Shortened prompts**\n"
    "1️⃣ Please create a whimsical majestic tower of donuts, intricately crafted\n"
    "2️⃣ whimsical majestic tower of donuts, intricately crafted\n"
    "3️⃣ whimsical majestic tower of donuts\n"
    "4️⃣ majestic tower of donuts\n"
    "5️⃣ tower of donuts"
)


def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def body_of(wire: WireRequest) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(wire.body)
    return decoded


def buttons(templates: dict[str, str], job_hash: str = H) -> list[dict[str, Any]]:
    return [
        {"customId": t.format(h=job_hash), "emoji": "", "label": "", "type": 2, "style": 2}
        for t in templates.values()
    ]


def upscaled_task(templates: dict[str, str] = UPSCALED_BUTTONS, **changes: Any) -> dict[str, Any]:
    task = copy.deepcopy(TASK_GRID)
    task.update(id="1720001250000777", action="UPSCALE", buttons=buttons(templates), **changes)
    return task


def final(provider: ProxyProvider, task: dict[str, Any]) -> ImagineResult:
    update = provider.decode_result(ImagineUpdate, encode(task))
    assert update.is_final
    return finalize(ImagineResult, update)


def refusal(reply: dict[str, Any]) -> APIStatusError:
    with pytest.raises(APIStatusError) as caught:
        PROXY.decode_receipt(encode(reply), request="POST /mj/submit/imagine")
    return caught.value


def no_headers() -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict())


# -- identity, credentials, paths -------------------------------------------------------------------------


def test_identity_and_credentials() -> None:
    """The key goes in `mj-api-secret` (every variant); the Bearer singleton is for gateways that want it."""
    provider: Provider = PROXY  # the protocol holds (mypy checks this line)
    assert provider.name == "midjourney-proxy" and PROXY_BEARER.name == "midjourney-proxy-bearer"
    assert PROXY.auth_headers("k-123") == {"mj-api-secret": "k-123"}
    assert PROXY_BEARER.auth_headers("k-123") == {"authorization": "Bearer k-123"}
    for one in (PROXY, PROXY_BEARER):
        assert one.credential_headers() == {"mj-api-secret", "authorization"}
        assert one.callback_secret_header is None
        assert not one.streams and not one.long_waits
        assert one.default_base_url.startswith("http://")
        assert one.blend_aspect_ratio("portrait") is None
    # A bearer gateway (new-api) issues its own keys: it never reads the proxy's secret.
    assert PROXY.api_key_env == ("MJ_API_SECRET",) and PROXY_BEARER.api_key_env == ()
    assert "k-123" not in repr(PROXY) and hash(PROXY) != hash(PROXY_BEARER)


@pytest.mark.parametrize(
    ("mode", "path"),
    [
        (None, "/mj/submit/imagine"),
        ("fast", "/mj-fast/mj/submit/imagine"),
        ("relax", "/mj-relax/mj/submit/imagine"),
        ("turbo", "/mj-turbo/mj/submit/imagine"),
    ],
)
def test_mode_picks_the_path_prefix(mode: Any, path: str) -> None:
    wire = PROXY.job_request(requests.imagine(PROXY, "a cat", mode=mode), via="poll")
    assert wire.path == path and wire.headers["accept"] == "application/json"
    assert "mode" not in body_of(wire)


def test_a_follow_up_uses_the_mode_prefix_too() -> None:
    wire = PROXY.job_request(requests.upscale(PROXY, f"{GRID_ID}:{H}", 1, mode="relax"), via="poll")
    assert wire.path == "/mj-relax/mj/submit/action"


def test_lookups_are_list_by_condition_posts() -> None:
    """One id or many: the same POST on every variant (fetch is a GET)."""
    one = PROXY.task_request("1720001234567123")
    assert one.path == "/mj/task/list-by-condition" and body_of(one) == {"ids": ["1720001234567123"]}
    many = PROXY.task_batch_request(["1", "2"])
    assert many.path == "/mj/task/list-by-condition" and body_of(many) == {"ids": ["1", "2"]}
    assert body_of(PROXY.task_batch_request(None)) == {"ids": []}
    with pytest.raises(InvalidRequestError):
        PROXY.task_request(trace_id="t")
    with pytest.raises(InvalidRequestError):
        PROXY.task_request()
    with pytest.raises(InvalidRequestError):
        PROXY.task_batch_request(["1"], trace_ids=["t"])


# -- imagine, blend, image bytes ------------------------------------------------------------------------


def test_imagine_body() -> None:
    """The prompt says everything (`--ar`, `--v`, `--hd`, image URLs); the body adds the marker only."""
    request = requests.imagine(
        PROXY, "a cat", image_urls=["https://e.com/a.png"], aspect_ratio="3:2", version="6.1", hd=True
    )
    body = body_of(PROXY.job_request(request, via="poll"))
    assert body == {"prompt": "https://e.com/a.png a cat --ar 3:2 --v 6.1 --hd", "state": job_marker(request)}


def test_callbacks_go_to_notify_hook() -> None:
    request = requests.imagine(PROXY, "a cat")
    target = CallbackTarget(url="https://bot.example/cb/tok", secret="s3cret-value", progress=True)
    body = body_of(PROXY.job_request(request, via="callback", callback=target))
    assert body["notifyHook"] == "https://bot.example/cb/tok"
    assert "s3cret-value" not in json.dumps(body)  # unsigned callbacks: the address is the secret
    own = requests.imagine(PROXY, "a cat", callback_url="https://mine.example/hook")
    assert body_of(PROXY.job_request(own, via="poll"))["notifyHook"] == "https://mine.example/hook"
    assert "notifyHook" not in body_of(PROXY.job_request(request, via="poll"))


@pytest.mark.parametrize(
    ("data", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")]
)
def test_data_urls(data: bytes, mime: str) -> None:
    assert data_url(data) == f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PN", PNG[:4] + b"x" * (MAX_IMAGE_BYTES + 1)])
def test_what_is_not_an_image_or_too_big_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        data_url(data)


def test_imagine_sends_fetched_image_bytes_as_base64_array() -> None:
    """The engine fetches `image_urls` and passes the bytes; they replace the URLs in the prompt."""
    request = requests.imagine(
        PROXY, "a cat --ar 3:2", image_urls=["https://e.com/a.png", "https://e.com/b.jpg"]
    )
    assert PROXY.image_urls(request) == ("https://e.com/a.png", "https://e.com/b.jpg")
    body = body_of(PROXY.job_request(request, via="poll", images=[PNG, JPEG]))
    assert body["prompt"] == "a cat --ar 3:2"
    assert body["base64Array"] == [data_url(PNG), data_url(JPEG)]
    assert body["state"] == job_marker(request)  # the marker is the request's, whatever was inlined
    with pytest.raises(InvalidRequestError):
        PROXY.job_request(request, via="poll", images=[PNG])  # one short
    with pytest.raises(InvalidRequestError):
        PROXY.job_request(request, via="poll", images=PNG)  # type: ignore[arg-type]
    only_images = requests.imagine(PROXY, "", image_urls=["https://e.com/a.png", "https://e.com/b.png"])
    with pytest.raises(InvalidRequestError, match="text"):
        PROXY.job_request(only_images, via="poll", images=[PNG, PNG])


def test_inline_images_are_bounded_in_all() -> None:
    urls = [f"https://e.com/{i}.png" for i in range(3)]
    request = requests.imagine(PROXY, "a cat", image_urls=urls)
    big = PNG + b"\x00" * (MAX_INLINE_BYTES // 3 + 1)
    with pytest.raises(InvalidRequestError, match="in all"):
        PROXY.job_request(request, via="poll", images=[big, big, big])


def test_a_prompt_without_image_urls_has_nothing_to_fetch() -> None:
    assert PROXY.image_urls(requests.imagine(PROXY, "a cat https://e.com/late.png")) == ()
    assert PROXY.image_urls(requests.upscale(PROXY, GRID_ID, 1)) == ()
    assert PROXY.image_urls(ShortenRequest(prompt="a cat")) == ()


@pytest.mark.parametrize(
    ("dimension", "field"),
    [(None, "SQUARE"), ("square", "SQUARE"), ("portrait", "PORTRAIT"), ("landscape", "LANDSCAPE")],
)
def test_blend_body(dimension: Any, field: str) -> None:
    urls = ["https://e.com/a.png", "https://e.com/b.png", "https://e.com/c.png"]
    request = requests.blend(PROXY, urls, dimension=dimension)
    wire = PROXY.job_request(request, via="poll")
    assert wire.path == "/mj/submit/blend"
    # Without bytes the URLs go as they are (TA takes them; NZ answers code 4, which made no task).
    assert body_of(wire) == {"base64Array": urls, "dimensions": field, "state": job_marker(request)}
    inline = body_of(PROXY.job_request(request, via="poll", images=[PNG, JPEG, GIF]))
    assert inline["base64Array"] == [data_url(PNG), data_url(JPEG), data_url(GIF)]


def test_blend_with_text_or_an_aspect_ratio_is_refused() -> None:
    with pytest.raises(UnsupportedFeatureError):
        requests.blend(PROXY, ["https://e.com/a.png", "https://e.com/b.png"], "and a cat")
    with pytest.raises(InvalidRequestError):
        requests.blend(PROXY, ["https://e.com/a.png", "https://e.com/b.png"], "--ar 2:3", dimension="square")


@pytest.mark.parametrize(
    "request_",
    [
        VideosRequest(action="generate", image_url="https://e.com/a.png"),
        EditsRequest(action="generate", image_url="https://e.com/a.png", prompt="x"),
        TranslateRequest(content="猫"),
        SeedRequest(image_id="1"),
        ImagineRequest(action="generate", prompt="a cat", translation=True),
        ImagineRequest(action="generate", prompt="a cat", quality="2"),
        ImagineRequest(action="generate", prompt="a cat", moodboard=True),
        ImagineRequest(action="generate", prompt="a cat", split_images=True),
        ImagineRequest(action="generate", prompt="a cat", skip_prompt_check=True),
        ImagineRequest(action="outpaint_custom", image_id=f"{GRID_ID}:{H}"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_what_the_proxy_lacks_is_refused_before_sending(request_: Any) -> None:
    with pytest.raises(UnsupportedFeatureError):
        PROXY.check(request_)
    if isinstance(request_, (DescribeRequest, ShortenRequest, TranslateRequest, SeedRequest)):
        with pytest.raises(UnsupportedFeatureError):
            PROXY.call_request(request_)
    else:
        with pytest.raises(UnsupportedFeatureError):
            PROXY.job_request(request_, via="poll")


def test_false_asks_for_nothing_the_proxy_lacks() -> None:
    request = ImagineRequest(action="generate", prompt="a cat", translation=False, split_images=False)
    PROXY.check(request)
    PROXY.check(ImagineRequest(action="generate", prompt="a cat", skip_prompt_check=False, moodboard=False))


# -- buttons, follow-ups --------------------------------------------------------------------------------


def test_the_documented_grid_lists_its_buttons_as_actions() -> None:
    """§10.3: U1–U4, 🔄, V1–V4 in button order; the job hash is the image id."""
    result = final(PROXY, TASK_GRID)
    assert result.actions == GRID_ACTIONS
    assert PROXY.allowed_actions(result) == frozenset(GRID_ACTIONS)
    assert result.image_id == H and result.image_url == TASK_GRID["imageUrl"]
    assert result.progress == 100.0 and result.raw == TASK_GRID
    assert PROXY.follow_up_id(result) == f"{GRID_ID}:{H}"


@pytest.mark.parametrize("action", GRID_ACTIONS)
def test_grid_follow_ups_send_the_buttons_custom_id(action: str) -> None:
    """The customId rebuilt for each action is exactly the grid's button for it."""
    result = final(PROXY, TASK_GRID)
    request = requests.act(PROXY, result, action)
    wire = PROXY.job_request(request, via="poll")
    expected = next(b["customId"] for b in TASK_GRID["buttons"] if _action_of(b["customId"]) == action)
    assert wire.path == "/mj/submit/action"
    assert body_of(wire) == {"taskId": GRID_ID, "customId": expected, "state": job_marker(request)}


def _action_of(custom_id: str) -> str:
    parts = custom_id.split("::")
    return {"upsample": "upscale", "variation": "variation"}.get(parts[2], parts[2]) + (
        parts[3] if parts[2] != "reroll" else ""
    )


def test_an_upscaled_image_lists_every_documented_button() -> None:
    """§10.3's upscale buttons: vary subtle/strong/region, zoom 2x/1.5x/custom, pans, and v6.1's
    subtle/creative upscalers, whose tag the follow-up id keeps."""
    result = final(PROXY, upscaled_task())
    assert result.actions == list(UPSCALED_BUTTONS)
    assert PROXY.follow_up_id(result) == f"1720001250000777:{H}:v6r1"


@pytest.mark.parametrize(
    "action", [a for a in UPSCALED_BUTTONS if a not in ("variation_region", "zoom_custom")]
)
def test_upscaled_follow_ups_send_the_buttons_custom_id(action: str) -> None:
    result = final(PROXY, upscaled_task())
    request = requests.act(PROXY, result, action)
    assert body_of(PROXY.job_request(request, via="poll")) == {
        "taskId": "1720001250000777",
        "customId": UPSCALED_BUTTONS[action].format(h=H),
        "state": job_marker(request),
    }


@pytest.mark.parametrize("action", list(V5_BUTTONS))
def test_v5_upscalers(action: str) -> None:
    result = final(PROXY, upscaled_task(V5_BUTTONS))
    assert result.actions == list(V5_BUTTONS) and PROXY.follow_up_id(result) == f"1720001250000777:{H}"
    body = body_of(PROXY.job_request(requests.act(PROXY, result, action), via="poll"))
    assert body["customId"] == V5_BUTTONS[action].format(h=H)


def test_client_follow_up_verbs_map_onto_the_buttons() -> None:
    """The client's own verbs (zoom_out, pan, variation) name actions the buttons offer."""
    result = final(PROXY, upscaled_task())
    zoom = PROXY.job_request(requests.zoom_out(PROXY, result, "1.5"), via="poll")
    assert body_of(zoom)["customId"] == f"MJ::Outpaint::75::1::{H}::SOLO"
    pan = PROXY.job_request(requests.pan(PROXY, result, "up"), via="poll")
    assert body_of(pan)["customId"] == f"MJ::JOB::pan_up::1::{H}::SOLO"
    with pytest.raises(ActionNotAvailableError):
        requests.upscale(PROXY, result, 1)  # an upscaled image has no U1


def test_foreign_and_unknown_buttons_are_left_out() -> None:
    """Describe's, videos', bookmarks, TA's own CustomZoom form and another hash's buttons are not
    actions: only a customId rebuilt exactly is ever sent."""
    task = upscaled_task({"pan_left": UPSCALED_BUTTONS["pan_left"]})
    task["buttons"] += [
        {"customId": "MJ::Job::PicReader::1"},
        {"customId": f"MJ::JOB::animate_high::1::{H}::SOLO"},
        {"customId": f"MJ::BOOKMARK::{H}"},
        {"customId": f"MJ::CustomZoom::1::{H}"},
        {"customId": "MJ::JOB::pan_right::1::0000-other-hash::SOLO"},
        {"customId": ""},
        {"label": "no id"},
        "not a button",
    ]
    result = final(PROXY, task)
    assert result.actions == ["pan_left"] and result.image_id == H


def test_a_result_whose_buttons_are_all_foreign_offers_nothing() -> None:
    task = copy.deepcopy(TASK_DESCRIBE)
    task["buttons"] = [{"customId": f"MJ::Job::PicReader::{i}"} for i in range(1, 5)]
    result = PROXY.decode_result(ImagineUpdate, encode(task))
    assert result.actions == [] and result.image_id is None


def test_a_grid_without_buttons_acts_through_submit_change() -> None:
    """NZ has no buttons: a grid offers what `submit/change` can do, and names its parent by task id."""
    task = {k: v for k, v in TASK_GRID.items() if k != "buttons"}
    result = final(PROXY, task)
    assert result.actions == GRID_ACTIONS and result.image_id is None
    assert PROXY.follow_up_id(result) == GRID_ID
    upscale = requests.upscale(PROXY, result, 3)
    wire = PROXY.job_request(upscale, via="poll")
    assert wire.path == "/mj/submit/change"
    assert body_of(wire) == {"taskId": GRID_ID, "action": "UPSCALE", "index": 3, "state": job_marker(upscale)}
    variation = body_of(PROXY.job_request(requests.variation(PROXY, result, 2), via="poll"))
    assert (variation["action"], variation["index"]) == ("VARIATION", 2)
    reroll = body_of(PROXY.job_request(requests.act(PROXY, result, "reroll"), via="poll"))
    assert reroll["action"] == "REROLL" and "index" not in reroll


@pytest.mark.parametrize("buttons_value", [None, []])
def test_null_or_empty_buttons_read_as_none(buttons_value: Any) -> None:
    task = {**TASK_GRID, "buttons": buttons_value}
    assert final(PROXY, task).actions == GRID_ACTIONS


@pytest.mark.parametrize("action", ["UPSCALE", "DESCRIBE", "ZOOM", None])
def test_only_grids_offer_change_follow_ups(action: Any) -> None:
    task = {k: v for k, v in TASK_GRID.items() if k != "buttons"}
    task["action"] = action
    assert final(PROXY, task).actions == []


def test_the_batch_cli_rebuilds_the_follow_up_id_from_the_journal() -> None:
    """`follow_up_id(ImagineUpdate(task_id, image_id))`, as the batch CLI rebuilds a grid's parent."""
    assert PROXY.follow_up_id(ImagineUpdate(task_id=GRID_ID, image_id=H)) == f"{GRID_ID}:{H}"
    assert PROXY.follow_up_id(ImagineUpdate(task_id=GRID_ID)) == GRID_ID
    assert PROXY.follow_up_id(ImagineUpdate()) is None


@pytest.mark.parametrize(
    ("target", "action", "error"),
    [
        (GRID_ID, "pan_left", InvalidRequestError),  # needs the buttons
        (f"{GRID_ID}:{H}", "upscale_subtle", InvalidRequestError),  # needs the tag
        ("a b", "upscale1", InvalidRequestError),
        (f"{GRID_ID}:{H}:v6:extra", "upscale1", InvalidRequestError),
        (f"{GRID_ID}:{H}", "variation_region", UnsupportedFeatureError),  # the MODAL step
        (f"{GRID_ID}:{H}", "zoom_custom", UnsupportedFeatureError),
    ],
)
def test_follow_ups_the_id_cannot_carry_are_refused(target: str, action: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        requests.act(NO_MODAL, target, action, prompt="a fox --zoom 1.5", mask=PNG)
    with pytest.raises(error):
        NO_MODAL.check(ImagineRequest(action=action, image_id=target, prompt="a fox --zoom 1.5", mask=MASK))


def test_a_prompt_with_a_follow_up_needs_the_modal_step() -> None:
    with pytest.raises(UnsupportedFeatureError, match="MODAL"):
        requests.variation(NO_MODAL, f"{GRID_ID}:{H}", 1, prompt="a red fox")
    assert PROXY.modal_step and requests.variation(PROXY, f"{GRID_ID}:{H}", 1, prompt="a red fox")


def test_a_mask_goes_with_variation_region_only() -> None:
    with pytest.raises(InvalidRequestError, match="mask"):
        PROXY.check(ImagineRequest(action="upscale1", image_id=f"{GRID_ID}:{H}", mask=MASK))
    with pytest.raises(InvalidRequestError, match="mask"):
        PROXY.check(ImagineRequest(action="generate", prompt="a cat", mask=MASK))


# -- the MODAL two-step ---------------------------------------------------------------------------------


def test_vary_region_is_two_submits_of_one_task() -> None:
    """Step 1 presses Vary (Region); step 2 (`submit/modal`) sends the prompt and mask for the task
    the first one made."""
    result = final(MODAL, upscaled_task())
    request = requests.variation_region(MODAL, result, PNG, "a red scarf", mode="fast")
    first = MODAL.job_request(request, via="poll")
    assert first.path == "/mj-fast/mj/submit/action"
    assert body_of(first) == {
        "taskId": "1720001250000777",
        "customId": f"MJ::Inpaint::1::{H}::SOLO",
        "state": job_marker(request),
    }
    second = MODAL.modal_request(request, "1720001299000456")
    assert second.path == "/mj-fast/mj/submit/modal" and second.headers["accept"] == "application/json"
    assert body_of(second) == {"taskId": "1720001299000456", "prompt": "a red scarf", "maskBase64": MASK}


def test_custom_zoom_needs_a_zoom_between_1_and_2() -> None:
    result = final(MODAL, upscaled_task())
    request = requests.act(MODAL, result, "zoom_custom", prompt="red fox --zoom 1.5")
    assert body_of(MODAL.job_request(request, via="poll"))["customId"] == f"MJ::CustomZoom::{H}"
    assert body_of(MODAL.modal_request(request, "7")) == {"taskId": "7", "prompt": "red fox --zoom 1.5"}
    for prompt in (None, "red fox", "red fox --zoom 3"):
        with pytest.raises(InvalidRequestError, match="--zoom"):
            requests.act(MODAL, result, "zoom_custom", prompt=prompt)


def test_a_prompted_follow_up_asks_for_remix() -> None:
    """TA's `enableRemix` takes the MODAL path, where the new prompt goes."""
    request = requests.variation(MODAL, final(MODAL, TASK_GRID), 2, prompt="a red fox")
    body = body_of(MODAL.job_request(request, via="poll"))
    assert body["enableRemix"] is True and "prompt" not in body
    assert body_of(MODAL.modal_request(request, "9"))["prompt"] == "a red fox"
    with pytest.raises(InvalidRequestError):
        requests.variation(MODAL, GRID_ID, 2, prompt="a red fox")  # submit/change takes no prompt


def test_a_mask_url_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="URL"):
        requests.variation_region(MODAL, f"{GRID_ID}:{H}", "https://e.com/mask.png")


def test_a_modal_task_fails_clearly_until_the_engine_sends_the_step() -> None:
    """§10.7: without the step, a MODAL task is a failure that says why, not a wait to the deadline."""
    record = NO_MODAL.decode_task(encode(TASK_MODAL))
    assert NO_MODAL.needs_modal(record) and NO_MODAL.task_state(record) == "failed"
    assert isinstance(record.response, ImagineUpdate) and record.response.failed
    error = NO_MODAL.job_failed(record.response)
    assert isinstance(error, JobFailedError) and error.code == "modal" and "MODAL" in error.message
    assert error.task_id == "1720001299000456"
    waiting = MODAL.decode_task(encode(TASK_MODAL))
    assert MODAL.needs_modal(waiting) and MODAL.task_state(waiting) == "pending"
    assert waiting.response is not None and not waiting.response.failed
    assert not PROXY.needs_modal(PROXY.decode_task(encode(TASK_GRID)))


# -- describe, shorten ----------------------------------------------------------------------------------


def test_describe_is_a_task() -> None:
    request = requests.describe(PROXY, "https://e.com/fox.png")
    call = PROXY.call_request(request)
    assert isinstance(call, CallRequest) and call.as_task and call.result_type is DescribeResult
    assert call.path == "/mj/submit/describe"
    assert body_of(call) == {"link": "https://e.com/fox.png", "state": job_marker(request)}
    assert PROXY.image_urls(request) == ("https://e.com/fox.png",)
    inline = PROXY.call_request(request, images=[PNG])
    assert body_of(inline) == {"base64": data_url(PNG), "state": job_marker(request)}


def test_the_documented_describe_result() -> None:
    """§10.5: the four prompts out of the keycap-numbered text."""
    record = PROXY.decode_task(encode(TASK_DESCRIBE))
    result = record.response
    assert isinstance(result, DescribeResult) and result.is_final and PROXY.task_state(record) == "succeeded"
    assert result.descriptions == ["a fox standing in snow, muted tones --ar 3:2", "…", "…", "…"]
    assert result.raw == TASK_DESCRIBE and record.type == "describe"


def test_describe_falls_back_to_the_prompt() -> None:
    task = {**TASK_DESCRIBE, "properties": {}, "promptEn": None}
    assert PROXY.decode_result(DescribeResult, encode(task)).descriptions[0].startswith("a fox")


def test_shorten_is_a_task_and_its_prompts_are_parsed() -> None:
    request = requests.shorten(PROXY, "Please create a whimsical majestic tower of donuts")
    call = PROXY.call_request(request)
    assert call.path == "/mj/submit/shorten" and call.as_task and call.result_type is ShortenResult
    assert body_of(call) == {"prompt": request.prompt, "state": job_marker(request)}
    task = {"id": "5", "action": "SHORTEN", "status": "SUCCESS", "properties": {"finalPrompt": SHORTEN_TEXT}}
    result = PROXY.decode_task(encode(task)).response
    assert isinstance(result, ShortenResult) and result.is_final
    assert result.prompts[0] == "Please create a whimsical majestic tower of donuts, intricately crafted"
    assert result.prompts[-1] == "tower of donuts" and len(result.prompts) == 5


# -- submit replies -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "task_id"),
    [
        (REPLY_ACCEPTED, "1720001234567123"),
        (REPLY_QUEUED, "1720001234567124"),
        (REPLY_MODAL, "1720001299000456"),  # the MODAL task: its status tells the engine
        (REPLY_EXISTS, "1720000000000999"),  # NZ <= 2.6.1: the existing task, finished
        (
            {"code": 1, "description": "成功", "result": 1320098173412546, "properties": {}},
            "1320098173412546",
        ),
        ({"code": "22", "result": " 77 "}, "77"),
    ],
)
def test_accepted_replies_give_the_task_id(reply: dict[str, Any], task_id: str) -> None:
    assert PROXY.decode_receipt(encode(reply)) == task_id


@pytest.mark.parametrize("reply", [REPLY_QUEUE_FULL, REPLY_TA_QUEUE_FULL])
def test_a_full_queue_is_a_refusal_retried_like_a_429(reply: dict[str, Any]) -> None:
    error = refusal(reply)
    assert isinstance(error, RateLimitError) and error.status == 429 and error.code == str(reply["code"])
    assert reply["description"] in error.message and error.request == "POST /mj/submit/imagine"
    assert phase_of(error) == "rejected" and made_no_task(error)


def test_a_banned_prompt_is_a_moderation_error_naming_the_word() -> None:
    error = refusal(REPLY_BANNED)
    assert isinstance(error, ModerationError) and error.code == "24" and "'nude'" in error.message
    assert phase_of(error) == "fatal" and made_no_task(error)


@pytest.mark.parametrize(
    ("reply", "cls", "status"),
    [
        (REPLY_INVALID, BadRequestError, 400),
        (REPLY_PARENT_GONE, NotFoundError, 404),
        ({"code": 3, "description": "无可用的账号实例", "result": None}, RateLimitError, 429),
        ({"code": 9, "description": "提交失败，系统异常", "result": None}, ServerError, 500),
        (
            {"success": False, "code": -1, "message": "state too long", "timestamp": "638"},
            BadRequestError,
            400,
        ),
        ({"code": 30, "description": "something new"}, BadRequestError, 400),
    ],
)
def test_other_refusals(reply: dict[str, Any], cls: type[APIStatusError], status: int) -> None:
    error = refusal(reply)
    assert type(error) is cls and error.status == status
    # Only code 9's internal failure leaves the task's fate open (it is looked up, never resent).
    assert made_no_task(error) is (status != 500)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"description": "no code"}',
        b'{"code": true, "result": "1"}',
        b'{"code": 1, "result": null}',
        b'{"code": 22, "result": ""}',
        b'{"code": 1, "result": ["1", "2"]}',
    ],
)
def test_undecodable_replies_leave_the_fate_open(body: bytes) -> None:
    """An answer that cannot be read came from a server that got the submit: it is looked up."""
    with pytest.raises(ResponseDecodeError) as caught:
        PROXY.decode_receipt(body)
    assert phase_of(caught.value) == "unknown"


# -- Task objects ---------------------------------------------------------------------------------------


def test_the_documented_progress_update() -> None:
    """§10.2: "45%" and the preview image; not final, running; the object kept whole."""
    record = PROXY.decode_task(encode(TASK_IN_PROGRESS), ImagineUpdate)
    update = record.response
    assert isinstance(update, ImagineUpdate) and not update.is_final and not update.failed
    assert update.progress == 45.0 and update.image_url == TASK_IN_PROGRESS["imageUrl"]
    assert update.actions == [] and update.image_id is None and update.raw == TASK_IN_PROGRESS
    assert PROXY.task_state(record) == "running"
    assert record.id == "1720001234567123" and record.type == "imagine" and record.state == "IN_PROGRESS"
    assert record.request == {"state": "job-4b1e9c"}
    assert record.created_at == 1720001234.567 and record.started_at == 1720001236.02
    assert record.finished_at is None and record.duration is None


def test_the_documented_success_as_a_record() -> None:
    record = PROXY.decode_task(encode([TASK_GRID]))  # list-by-condition for one id
    assert PROXY.task_state(record) == "succeeded" and isinstance(record.response, ImagineUpdate)
    assert record.duration == pytest.approx(1720001268.431 - 1720001236.02)


def test_the_documented_failure() -> None:
    """§10.4: FAILURE with its failReason is a `JobFailedError`."""
    record = PROXY.decode_task(encode(TASK_FAILURE))
    assert PROXY.task_state(record) == "failed"
    update = record.response
    assert isinstance(update, ImagineUpdate) and update.failed and not update.is_final
    assert update.error == "[Invalid parameter] Invalid aspect ratio" and update.progress is None
    error = PROXY.job_failed(update, request="POST /mj/task/list-by-condition")
    assert isinstance(error, JobFailedError) and error.message == update.error and error.code is None
    assert error.task_id == "1720001234567200" and error.body and "Invalid aspect ratio" in error.body
    assert record.request is None  # no marker: state was null


def test_a_failure_at_100_percent_is_never_success() -> None:
    """NA sets progress "100%" on failures; TA's banned prompts fail after the submit."""
    task = {**TASK_FAILURE, "progress": "100%", "failReason": "可能包含敏感词"}
    record = PROXY.decode_task(encode(task))
    assert PROXY.task_state(record) == "failed"
    update = PROXY.decode_callback(ImagineUpdate, encode(task))
    assert update.failed and not update.is_final and update.finished is False
    assert PROXY.job_failed(update).code == "banned_prompt"
    banned = {**TASK_FAILURE, "failReason": "Banned prompt detected, Sorry! ..."}
    assert PROXY.job_failed(PROXY.decode_result(ImagineUpdate, encode(banned))).code == "banned_prompt"


def test_cancel_and_a_failure_without_reason() -> None:
    cancelled = PROXY.decode_task(encode({**TASK_FAILURE, "status": "CANCEL", "failReason": None}))
    assert PROXY.task_state(cancelled) == "failed" and isinstance(cancelled.response, ImagineUpdate)
    assert PROXY.job_failed(cancelled.response).code == "cancelled"
    silent = PROXY.decode_result(ImagineUpdate, encode({**TASK_FAILURE, "failReason": ""}))
    assert silent.failed and PROXY.job_failed(silent).message == "the proxy reports the task as failed"


@pytest.mark.parametrize(
    ("status", "state", "has_response"),
    [
        ("NOT_START", "pending", False),
        ("", "pending", False),  # NA until its poller's first look
        (None, "pending", False),
        ("SOMETHING_NEW", "pending", False),
        ("SUBMITTED", "running", True),
        ("IN_PROGRESS", "running", True),
        ("SUCCESS", "succeeded", True),
        ("FAILURE", "failed", True),
        ("CANCEL", "failed", True),
        ("success", "succeeded", True),
    ],
)
def test_task_state_for_every_status(status: Any, state: str, has_response: bool) -> None:
    record = PROXY.decode_task(encode({**TASK_IN_PROGRESS, "status": status}))
    assert PROXY.task_state(record) == state and (record.response is not None) is has_response


def test_a_success_record_without_a_response_is_pending() -> None:
    assert PROXY.task_state(TaskRecord(state="SUCCESS")) == "pending"
    assert PROXY.task_state(TaskRecord(state="IN_PROGRESS")) == "pending"


@pytest.mark.parametrize(
    ("progress", "value"),
    [
        ("0%", 0.0), ("46%", 46.0), ("46", 46.0), (" 7.5% ", 7.5), ("100%", 100.0), (46, 46.0), (12.5, 12.5),
        ("", None), (None, None), ("Waiting to start", None), ("paused", None), ("-5%", None), (True, None),
        ("250%", 100.0), (10**40, None), ([], None),
    ],
)  # fmt: skip
def test_progress_is_parsed_tolerantly(progress: Any, value: float | None) -> None:
    update = PROXY.decode_result(ImagineUpdate, encode({**TASK_IN_PROGRESS, "progress": progress}))
    assert update.progress == value


def test_times_that_are_not_times_read_as_absent() -> None:
    task = {**TASK_IN_PROGRESS, "submitTime": 0, "startTime": "1720001236020", "finishTime": 10**16}
    record = PROXY.decode_task(encode(task))
    assert record.created_at is None and record.started_at is None and record.finished_at is None


def test_every_field_is_optional_and_odd_types_are_ignored() -> None:
    record = PROXY.decode_task(b"{}")
    assert record.id is None and record.response is None and PROXY.task_state(record) == "pending"
    odd = {
        "id": 1720001234567123,
        "status": "SUCCESS",
        "action": 5,
        "imageUrl": 3,
        "properties": [],
        "buttons": {},
    }
    update = PROXY.decode_result(ImagineUpdate, encode(odd))
    assert update.task_id == "1720001234567123" and update.image_url is None and update.actions == []


@pytest.mark.parametrize(
    ("action", "kind"),
    [("IMAGINE", ImagineUpdate), ("UPSCALE_HD", ImagineUpdate), ("DESCRIBE", DescribeResult),
     ("SHORTEN", ShortenResult), ("VIDEO", Result), (None, Result)],
)  # fmt: skip
def test_the_task_action_picks_the_result_type(action: Any, kind: type[Result]) -> None:
    response = PROXY.decode_task(encode({**TASK_GRID, "action": action})).response
    assert type(response) is kind
    assert (
        type(PROXY.decode_task(encode({**TASK_GRID, "action": action}), ImagineUpdate).response)
        is ImagineUpdate
    )


def test_ta_image_urls_become_sub_images() -> None:
    urls = [{"url": f"https://cdn.midjourney.com/j/0_{i}.png", "thumbnail": "t"} for i in range(4)]
    result = final(PROXY, {**TASK_GRID, "imageUrls": [*urls, {"thumbnail": "no url"}]})
    assert result.sub_image_urls == [u["url"] for u in urls]
    assert final(PROXY, TASK_GRID).sub_image_urls is None


def test_a_callback_is_the_task_object() -> None:
    """notifyHook bodies are Task objects; a duplicate decodes the same (the cursor drops stale ones)."""
    first = PROXY.decode_callback(ImagineUpdate, encode(TASK_IN_PROGRESS))
    again = PROXY.decode_callback(ImagineUpdate, encode(TASK_IN_PROGRESS))
    assert first == again and first.task_id == "1720001234567123" and first.progress == 45.0
    done = PROXY.decode_callback(ImagineUpdate, encode(TASK_GRID))
    assert done.is_final and done.actions == GRID_ACTIONS
    for body in (b"[]", b"null", encode([TASK_GRID]), b"\xff"):
        with pytest.raises(ResponseDecodeError):
            PROXY.decode_callback(ImagineUpdate, body)


def test_no_ndjson() -> None:
    assert PROXY.decode_updates(ImagineUpdate, encode(TASK_GRID)) is None
    assert PROXY.decode_update(ImagineUpdate, encode(TASK_GRID), 1).is_final


# -- list-by-condition ----------------------------------------------------------------------------------


def test_the_documented_list_by_condition_answer() -> None:
    """§10.6: unknown ids left out, order not the request's; bodies keyed by id."""
    failure = {**TASK_FAILURE, "progress": "", "state": None}
    success = {**TASK_GRID, "progress": "100%", "state": "job-4b1e9c"}
    body = encode([failure, success])
    bodies = PROXY.task_bodies(body, batch=True)
    assert set(bodies) == {"1720001234567200", "1720001234567123"}
    assert json.loads(bodies["1720001234567123"]) == success
    assert PROXY.task_bodies(body, batch=False) == bodies  # the one-id lookup answers an array too
    batch = PROXY.decode_task_batch(body)
    assert batch.count == 2 and [r.id for r in batch.items] == ["1720001234567200", "1720001234567123"]
    assert [PROXY.task_state(r) for r in batch.items] == ["failed", "succeeded"]


def test_task_bodies_take_a_single_object_and_skip_ids_they_lack() -> None:
    assert PROXY.task_bodies(encode(TASK_GRID), batch=False) == {GRID_ID: encode(TASK_GRID)}
    assert PROXY.task_bodies(b"[]", batch=True) == {}
    assert PROXY.task_bodies(b'[{"status": "SUCCESS"}, {"id": 42}]', batch=True) == {"42": b'{"id": 42}'}
    for bad in (b"", b"[1]", b'"x"', b"[{}, 2]"):
        with pytest.raises(ResponseDecodeError):
            PROXY.task_bodies(bad, batch=True)


def test_a_one_id_lookup_of_an_unknown_task() -> None:
    with pytest.raises(TaskNotFoundError):
        PROXY.decode_task(b"[]")
    with pytest.raises(ResponseDecodeError):
        PROXY.decode_task(encode([TASK_GRID, TASK_FAILURE]))
    for bad in (b"", b"null", b"[1]", b'"x"'):
        with pytest.raises(ResponseDecodeError):
            PROXY.decode_task(bad)
    with pytest.raises(ResponseDecodeError):
        PROXY.decode_task_batch(b"[1]")


# -- the job marker and lost submits ---------------------------------------------------------------------


def test_every_submit_carries_the_marker_of_its_request() -> None:
    grid = requests.imagine(PROXY, "a cat")
    marker = job_marker(grid)
    assert marker.startswith("mjasync-") and len(marker) <= 255  # TA's limit for `state`
    assert body_of(PROXY.job_request(grid, via="poll"))["state"] == marker
    # How the answer is delivered is not what the job is: the marker ignores it.
    assert (
        job_marker(msgspec.structs.replace(grid, callback_url="https://e.com/h", async_=True, timeout=9.0))
        == marker
    )
    assert job_marker(requests.imagine(PROXY, "a cat")) == marker  # deterministic: found after a crash too
    others = {
        job_marker(requests.imagine(PROXY, "a dog")),
        job_marker(requests.imagine(PROXY, "a cat", mode="relax")),
        job_marker(requests.upscale(PROXY, f"{GRID_ID}:{H}", 1)),
        job_marker(requests.upscale(PROXY, f"{GRID_ID}:{H}", 2)),
        job_marker(DescribeRequest(image_url="https://e.com/a.png")),
        job_marker(ShortenRequest(prompt="a cat")),
    }
    assert len(others) == 6 and marker not in others


def test_a_lost_submit_is_found_by_its_marker_in_the_listing() -> None:
    """`GET /mj/task/list` shows the marker in `state`; only the task with ours matches."""
    request = requests.imagine(PROXY, "red fox in snow --v 6.1")
    query = PROXY.recent_tasks_request(request, since=1720001234.0)
    assert isinstance(query, ListingRequest) and query.method == "GET" and query.path == "/mj/task/list"
    assert query.page_size == 100 and query.body == b""  # one read, of TA's newest 100 (NZ lists all)
    assert PROXY.recent_tasks_request(request, since=1720001234.0, offset=100) is None  # no next page
    ours = {**TASK_GRID, "id": "2", "state": job_marker(request)}
    someone_elses = {**TASK_GRID, "id": "3", "state": job_marker(requests.imagine(PROXY, "a cat"))}
    batch = PROXY.decode_task_batch(encode([someone_elses, ours, TASK_FAILURE, {"id": "4", "state": ""}]))
    assert [r.id for r in batch.items if PROXY.same_request(r, request)] == ["2"]
    assert batch.items[1].created_at == 1720001234.567  # how far back the listing reaches
    describe = DescribeRequest(image_url="https://e.com/a.png")
    assert PROXY.recent_tasks_request(describe, since=0.0) is not None
    assert PROXY.recent_tasks_request(ShortenRequest(prompt="x"), since=0.0) is not None
    assert PROXY.recent_tasks_request(SeedRequest(image_id="1"), since=0.0) is None


def test_a_jobs_marker_is_its_requests_digest_and_its_own_nonce() -> None:
    """`mjasync-<digest>-<nonce>`: two jobs of one request share the digest, never the marker; each of a
    job's submits (job, call) carries the same one, whatever is inlined or how it is delivered."""
    grid = requests.imagine(PROXY, "a cat")
    digest = job_marker(grid)
    marker = job_marker(grid, "0123456789abcdef")
    assert marker == f"{digest}-0123456789abcdef" and len(marker) <= 255  # TA's limit for `state`
    assert job_marker(grid, "fedcba9876543210") != marker
    assert body_of(PROXY.job_request(grid, via="poll", nonce="0123456789abcdef"))["state"] == marker
    hooked = PROXY.job_request(
        grid, via="callback", callback=CallbackTarget("https://e.com/h", "s"), nonce="0123456789abcdef"
    )
    assert body_of(hooked)["state"] == marker
    describe = DescribeRequest(image_url="https://e.com/a.png")
    for images in (None, [PNG]):
        call = PROXY.call_request(describe, images=images, nonce="0123456789abcdef")
        assert body_of(call)["state"] == job_marker(describe, "0123456789abcdef")
    shorten = ShortenRequest(prompt="a cat")
    assert body_of(PROXY.call_request(shorten, nonce="ab"))["state"] == f"{job_marker(shorten)}-ab"


def test_same_request_with_a_nonce_is_exact_and_without_one_takes_any_job_of_the_request() -> None:
    """The job that sent a submit looks for its own marker only, never an identical sibling's; a job
    rebuilt after a crash (no nonce) takes any task of its request (the engine refuses to choose
    between several), and one sent without a nonce (the bare digest) too; never another request's."""
    request = requests.imagine(PROXY, "red fox in snow --v 6.1")
    digest = job_marker(request)

    def task(state: Any) -> TaskRecord[Any]:
        return PROXY.decode_task(encode({**TASK_GRID, "state": state}))

    ours, sibling, bare = task(f"{digest}-aaaa"), task(f"{digest}-bbbb"), task(digest)
    assert PROXY.same_request(ours, request, nonce="aaaa")
    assert not PROXY.same_request(sibling, request, nonce="aaaa")
    assert not PROXY.same_request(bare, request, nonce="aaaa")
    assert all(PROXY.same_request(record, request) for record in (ours, sibling, bare))
    other = job_marker(requests.imagine(PROXY, "a cat"))
    strangers = [
        task(f"{other}-aaaa"),
        task(other),
        task(f"{digest}aaaa"),
        task(digest[:-1]),
        task(None),
        task(7),
    ]
    for record in strangers:
        assert not PROXY.same_request(record, request)
        assert not PROXY.same_request(record, request, nonce="aaaa")


def test_the_other_providers_take_a_nonce_and_ignore_it() -> None:
    """The protocol passes a job's nonce to every provider; AceData and GoAPI send no field for it, so
    their requests and their `same_request` are what they are without one."""
    grid = ImagineRequest(action="generate", prompt="a cat")
    describe = DescribeRequest(image_url="https://e.com/a.png")
    for provider in (PROVIDERS["acedata"], PROVIDERS["goapi"]):
        assert provider.job_request(grid, via="poll", nonce="aaaa") == provider.job_request(grid, via="poll")
        assert provider.call_request(describe, nonce="aaaa") == provider.call_request(describe)
    record: TaskRecord[Any] = TaskRecord(id="1", request={"action": "generate", "prompt": "a cat"})
    acedata = PROVIDERS["acedata"]
    assert acedata.same_request(record, grid, nonce="aaaa") == acedata.same_request(record, grid)


# -- HTTP errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls", "message", "code"),
    [
        (401, b"", AuthenticationError, "HTTP 401 with an empty body (check the API key", None),  # NZ
        (401, b"Authorization header missing.", AuthenticationError, "Authorization header missing.", None),  # TA
        (
            401,
            encode({"error": {"message": "无效的令牌 (request id: 1)", "type": "new_api_error", "code": ""}}),
            AuthenticationError,
            "无效的令牌 (request id: 1)",
            None,
        ),  # NA
        (404, encode(REPLY_PARENT_GONE), NotFoundError, "关联任务不存在或已失效", "3"),  # TA action/modal
        (400, encode(NA_TASK_NOT_FOUND), BadRequestError, "task_not_found", "4"),  # NA
        (403, "账号不可用".encode(), PermissionDeniedError, "账号不可用", None),  # TA
        (429, b"", RateLimitError, "HTTP 429 with an empty body", None),
        (500, encode({"success": False, "code": -1, "message": "操作失败"}), ServerError, "操作失败", "-1"),
        (405, encode({"timestamp": "x", "status": 405, "error": "Method Not Allowed", "path": "/mj/task/list"}),
         APIStatusError, "Method Not Allowed", None),  # Spring, for a POSTed listing
        (502, b"<html>bad gateway</html>" * 20, ServerError, "HTTP 502 with no error message", None),
    ],
)  # fmt: skip
def test_status_errors(
    status: int, body: bytes, cls: type[APIStatusError], message: str, code: str | None
) -> None:
    headers = CIMultiDictProxy(CIMultiDict({"x-request-id": "r-1", "content-type": "text/html"}))
    error = PROXY.status_error(status, headers, body, request="POST /mj/submit/action")
    assert type(error) is cls and error.status == status and error.message.startswith(message)
    assert error.code == code and error.request == "POST /mj/submit/action"
    # Never a trace id: with one, an empty lookup would count as "proven absent" and allow a resubmit.
    assert error.trace_id is None


def test_na_upstream_failure_leaves_the_fate_open_by_class() -> None:
    """NA's 400 `do_request_failed`: the proxy may have made the task (a 60 s timeout), so it is a
    `ServerError` by class; the status stays the 400 the gateway sent."""
    error = PROXY.status_error(400, no_headers(), encode(NA_UPSTREAM_FAILED))
    assert isinstance(error, ServerError) and error.status == 400 and error.code == "5"


def test_retry_after_is_kept() -> None:
    headers = CIMultiDictProxy(CIMultiDict({"retry-after": "7"}))
    assert PROXY.status_error(429, headers, b"").retry_after == 7.0


class _Owner:
    """Something a secret can be held for (weakly referenced)."""


def test_a_key_echoed_in_an_error_body_is_redacted() -> None:
    owner = _Owner()  # the secret is held while its owner lives (a client's transport, in use)
    _redact.hold(owner, "sk-proxy-secret-123456")
    error = PROXY.status_error(401, no_headers(), b"bad token sk-proxy-secret-123456")
    assert "sk-proxy-secret-123456" not in f"{error} {error!r} {error.body} {error.message}"
    reply = refusal({"code": 4, "description": "bad key sk-proxy-secret-123456"})
    assert "sk-proxy-secret-123456" not in f"{reply} {reply.body}"
    del owner


# -- hostile input ----------------------------------------------------------------------------------------

#: Field names of the proxy's bodies, so hostile objects reach past the top-level checks.
FIELD_NAMES = [
    "id", "action", "status", "prompt", "promptEn", "description", "state", "submitTime", "startTime",
    "finishTime", "imageUrl", "imageUrls", "url", "progress", "failReason", "properties", "finalPrompt",
    "bannedWord", "buttons", "customId", "code", "result", "message", "error", "type", "success", "mode",
]  # fmt: skip
STRINGS = st.sampled_from(
    ["SUCCESS", "FAILURE", "MODAL", "IN_PROGRESS", "IMAGINE", "DESCRIBE", "SHORTEN", "45%", "100%",
     f"MJ::JOB::upsample::1::{H}", f"MJ::JOB::upsample_v6_2x_subtle::1::{H}::SOLO", "队列已满", "1️⃣ a\n2️⃣ b"]
) | st.text(max_size=20)  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | STRINGS
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=6)
    ),
    max_leaves=30,
)
HOSTILE_OBJECTS = st.dictionaries(st.sampled_from(FIELD_NAMES), JSON_VALUES, max_size=10)
EXAMPLES = [
    encode(x)
    for x in (
        TASK_GRID,
        TASK_IN_PROGRESS,
        TASK_FAILURE,
        TASK_DESCRIBE,
        TASK_MODAL,
        REPLY_BANNED,
        REPLY_QUEUED,
    )
]


@st.composite
def truncated_example(draw: st.DrawFn) -> bytes:
    body = draw(st.sampled_from(EXAMPLES))
    at = draw(st.integers(0, len(body)))
    if draw(st.booleans()):
        return body[:at]
    return body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"]", b"{"])) + body[at:]


BODIES = (
    st.binary(max_size=300)
    | HOSTILE_OBJECTS.map(encode)
    | st.lists(HOSTILE_OBJECTS, max_size=3).map(encode)
    | JSON_VALUES.map(encode)
    | truncated_example()
)
DEEP_BODIES = [
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'[{"id": "1", "properties": ' + b"[" * 5000 + b"]" * 5000 + b"}]",
    b'{"id": "1", "status": "FAILURE", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"id": "1", "buttons": ' + b"[" * 5000,
]
KINDS: list[type[Result]] = [
    ImagineUpdate, ImagineResult, EditsResult, VideoResult, DescribeResult, ShortenResult, SeedResult, Result,
]  # fmt: skip


def decode_everywhere(provider: ProxyProvider, kind: type[Result], body: bytes) -> None:
    """Every decode path returns something a caller can use, or raises an `MJError`."""
    paths: dict[str, Any] = {
        "decode_result": lambda: provider.decode_result(kind, body),
        "decode_callback": lambda: provider.decode_callback(kind, body),
        "decode_update": lambda: provider.decode_update(kind, body, 1),
        "decode_receipt": lambda: provider.decode_receipt(body),
        "decode_task": lambda: provider.decode_task(body),
        "decode_task[kind]": lambda: provider.decode_task(body, kind),
        "decode_task_batch": lambda: provider.decode_task_batch(body),
        "task_bodies": lambda: provider.task_bodies(body, batch=True),
    }
    for name, path in paths.items():
        try:
            value = path()
        except MJError:
            continue
        except BaseException as exc:
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
        touch(provider, value)


def touch(provider: ProxyProvider, value: Any) -> None:
    """What a caller does next with a decoded value, which must not blow up either."""
    if isinstance(value, Result):
        _ = value.is_final, value.failed
        if value.failed:
            assert isinstance(provider.job_failed(value), JobFailedError)
        if isinstance(value, ImagineUpdate):
            provider.allowed_actions(value)
            provider.follow_up_id(value)
    elif isinstance(value, TaskRecord):
        provider.task_state(value)
        provider.needs_modal(value)
        touch(provider, value.response)
    elif hasattr(value, "items"):
        for item in value.items if not isinstance(value, dict) else value.values():
            touch(provider, item)


@pytest.mark.parametrize("provider", [NO_MODAL, PROXY], ids=["no_modal_step", "proxy"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, kind=st.sampled_from(KINDS))
def test_any_answer_gives_a_value_or_an_mj_error(
    provider: ProxyProvider, body: bytes, kind: type[Result]
) -> None:
    decode_everywhere(provider, kind, body)


@pytest.mark.parametrize("body", DEEP_BODIES, ids=range(len(DEEP_BODIES)))
def test_deep_nesting_is_an_mj_error(body: bytes) -> None:
    for kind in (ImagineUpdate, Result):
        decode_everywhere(PROXY, kind, body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.integers(300, 599),
    body=BODIES,
    header_values=st.dictionaries(
        st.sampled_from(["x-request-id", "retry-after", "content-type"]), st.text(max_size=40), max_size=3
    ),
)
def test_any_error_body_gives_the_typed_status_error(
    status: int, body: bytes, header_values: dict[str, str]
) -> None:
    """`status_error` builds (never raises) the typed error, with the status it was given."""
    error = PROXY.status_error(status, CIMultiDictProxy(CIMultiDict(header_values)), body, request="POST /x")
    assert isinstance(error, APIStatusError) and error.status == status and error.trace_id is None
    assert str(error) and repr(error)


@settings(max_examples=200, deadline=None)
@given(prompt=st.text(min_size=1, max_size=40).filter(str.strip), index=st.integers(1, 4))
def test_markers_are_stable_and_bounded(prompt: str, index: int) -> None:
    request = ImagineRequest(action="generate", prompt=prompt)
    assert job_marker(request) == job_marker(ImagineRequest(action="generate", prompt=prompt))
    assert len(job_marker(request)) <= 255
    follow_up = ImagineRequest(action=f"upscale{index}", image_id=f"{GRID_ID}:{H}")
    assert PROXY.same_request(TaskRecord(request={"state": job_marker(follow_up)}), follow_up)
    assert not PROXY.same_request(TaskRecord(request={"state": job_marker(request)}), follow_up)


def test_a_prompt_banned_after_the_submit_is_both_a_job_failure_and_a_moderation_error() -> None:
    """TA bans words after accepting the task: the same refusal as code 24, so `ModerationError` too."""
    from mjasync import BannedPromptError, ModerationError

    task = {**TASK_FAILURE, "failReason": "可能包含敏感词"}
    error = PROXY.job_failed(PROXY.decode_result(ImagineUpdate, encode(task)))
    assert isinstance(error, BannedPromptError)
    assert isinstance(error, JobFailedError) and isinstance(error, ModerationError)
    assert (error.status, error.code, error.message) == (403, "banned_prompt", "可能包含敏感词")
    assert error.task_id == TASK_FAILURE["id"]
    other = PROXY.job_failed(PROXY.decode_result(ImagineUpdate, encode(TASK_FAILURE)))
    assert not isinstance(other, ModerationError)
