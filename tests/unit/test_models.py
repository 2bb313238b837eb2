"""Result and task-record Structs: every documented AceData payload decodes leniently, and finality is right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mjasync._exceptions import MalformedLineError, ResponseDecodeError, StreamError
from mjasync._models.requests import EditsRequest, ImagineRequest, SeedRequest, TranslateRequest
from mjasync._models.results import (
    DescribeResult,
    EditsResult,
    EditsUpdate,
    ErrorDetail,
    ImagineResult,
    ImagineUpdate,
    Result,
    SeedResult,
    ShortenResult,
    SubmitReceipt,
    TranslateResult,
    VideoResult,
    VideoUpdate,
    finalize,
)
from mjasync._models.task import TaskRecord
from mjasync._providers.acedata import AceDataProvider

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ACEDATA = FIXTURES / "acedata"
STREAM = FIXTURES / "streams" / "acedata_imagine.ndjson"

PROVIDER = AceDataProvider()

#: How each fixture is decoded, and to what: ("result", R) -> decode_result(R), ("task", R) -> decode_task
#: giving a TaskRecord whose response is an R, ("batch", R) -> decode_task_batch, ("request", Q) -> the
#: request Struct Q (what we send). Every file in tests/fixtures/acedata/*.json must be listed here.
EXPECTED: dict[str, tuple[str, type[Any]]] = {
    "seed000_imagine_generate.json": ("result", ImagineUpdate),
    "seed000_variation2.json": ("result", ImagineUpdate),
    "seed000_upscale4.json": ("result", ImagineUpdate),
    "seed000_image_prompt.json": ("result", ImagineUpdate),
    "seed000_blend.json": ("result", ImagineUpdate),
    "seed000_variation_region.json": ("result", ImagineUpdate),
    "seed000_variation_region_request_curl_fixed.json": ("request", ImagineRequest),
    "seed000_variation_region_request_python_fixed.json": ("request", ImagineRequest),
    "seed000_callback_success.json": ("result", ImagineUpdate),
    "seed000_callback_failure.json": ("result", ImagineUpdate),
    "seed000_stream_request_python.json": ("request", ImagineRequest),
    "seed000_stream_request_js_fixed.json": ("request", ImagineRequest),
    "seed001_imagine_generate.json": ("result", ImagineUpdate),
    "seed001_variation2.json": ("result", ImagineUpdate),
    "seed001_upscale4.json": ("result", ImagineUpdate),
    "seed002_imagine_request.json": ("request", ImagineRequest),
    "seed002_imagine_response.json": ("result", ImagineUpdate),
    "seed004_edits_response.json": ("result", EditsUpdate),
    "seed004_edits_request.json": ("request", EditsRequest),
    "seed004_edits_async_receipt.json": ("result", SubmitReceipt),
    "seed004_edits_callback.json": ("result", EditsUpdate),
    "seed004_error_api_error.json": ("result", Result),
    "note_videos_response.json": ("result", VideoUpdate),
    "note_describe_response.json": ("result", DescribeResult),
    "note_shorten_response.json": ("result", ShortenResult),
    "note_translate_request.json": ("request", TranslateRequest),
    "note_translate_response.json": ("result", TranslateResult),
    "note_seed_request.json": ("request", SeedRequest),
    "note_seed_response.json": ("result", SeedResult),
    "note_task_record_fixed.json": ("task", ImagineUpdate),
    "note_tasks_batch_fixed.json": ("batch", ImagineUpdate),
    "note_error_timeout_504_fixed.json": ("result", Result),
    "note_error_forbidden_403_composed.json": ("result", Result),
}

#: Fixtures that are a finished job's result (sync answer, success callback, finished task record).
FINAL = {
    "seed000_imagine_generate.json",
    "seed000_variation2.json",
    "seed000_upscale4.json",
    "seed000_image_prompt.json",
    "seed000_blend.json",
    "seed000_variation_region.json",
    "seed000_callback_success.json",
    "seed001_imagine_generate.json",
    "seed001_variation2.json",
    "seed001_upscale4.json",
    "seed002_imagine_response.json",
    "seed004_edits_response.json",
    "seed004_edits_callback.json",
    "note_videos_response.json",
    "note_describe_response.json",
    "note_shorten_response.json",
    "note_translate_response.json",
    "note_seed_response.json",
}
#: The asynchronous submit's `{task_id}` answer: neither a result nor a failure.
RECEIPT = "seed004_edits_async_receipt.json"
#: Fixtures that report a failure.
FAILED = {
    "seed000_callback_failure.json",
    "seed004_error_api_error.json",
    "note_error_timeout_504_fixed.json",
    "note_error_forbidden_403_composed.json",
}

SIZE_FIELDS = {"image_width", "image_height", "raw_image_width", "raw_image_height"}

RESULT_KINDS = (
    ImagineUpdate,
    EditsUpdate,
    VideoUpdate,
    DescribeResult,
    ShortenResult,
    TranslateResult,
    SeedResult,
    SubmitReceipt,
)


def fixture_names() -> list[str]:
    return sorted(p.name for p in ACEDATA.glob("*.json"))


def load(name: str) -> tuple[bytes, Any]:
    body = (ACEDATA / name).read_bytes()
    return body, json.loads(body)


def request_data(kind: type[Any], data: dict[str, Any]) -> dict[str, Any]:
    """The documented body, with the API's default `action` our request Structs require spelled out."""
    names = {f.encode_name for f in msgspec.structs.fields(kind)}
    return {"action": "generate", **data} if "action" in names else dict(data)


def decode(name: str) -> Any:
    how, kind = EXPECTED[name]
    body, data = load(name)
    if how == "result":
        return PROVIDER.decode_result(kind, body)
    if how == "task":
        return PROVIDER.decode_task(body)
    if how == "batch":
        return PROVIDER.decode_task_batch(body)
    assert how == "request"
    return msgspec.convert(request_data(kind, data), kind)


def field_default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def assert_matches(obj: msgspec.Struct, data: dict[str, Any]) -> None:
    """Every field of `obj` equals the JSON value under its wire name, or its default when the JSON has none."""
    assert isinstance(data, dict)
    for field in msgspec.structs.fields(obj):
        value = getattr(obj, field.name)
        if field.encode_name not in data:
            assert value == field_default(field), field.name
            continue
        expected = data[field.encode_name]
        if isinstance(value, msgspec.Struct):
            assert_matches(value, expected)
        elif field.name in SIZE_FIELDS:
            assert type(value) is int, field.name
            assert value == int(expected), field.name
        else:
            assert value == expected, field.name


# -- every fixture decodes -------------------------------------------------------------------------


def test_every_fixture_has_an_expected_type() -> None:
    """Each JSON file under fixtures/acedata is named in EXPECTED, and EXPECTED names no missing file."""
    assert set(fixture_names()) == set(EXPECTED)


def test_fixture_readme_lists_every_fixture() -> None:
    """The fixtures README has a row for each JSON file."""
    readme = (ACEDATA / "README.md").read_text(encoding="utf-8")
    missing = [name for name in fixture_names() if f"`{name}`" not in readme]
    assert missing == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_decodes_to_its_struct_with_the_json_values(name: str) -> None:
    """The fixture decodes to the mapped Struct and every Struct field equals the JSON's value (ints for sizes)."""
    how, kind = EXPECTED[name]
    _, data = load(name)
    decoded = decode(name)
    if how in ("result", "request"):
        assert type(decoded) is kind
        assert_matches(decoded, request_data(kind, data) if how == "request" else data)
    elif how == "task":
        assert isinstance(decoded, TaskRecord)
        assert type(decoded.response) is kind
        assert_matches(decoded, data)
    else:
        assert [type(record) for record in decoded.items] == [TaskRecord] * len(data["items"])
        assert len(decoded.items) == decoded.count == data["count"]
        for record, item in zip(decoded.items, data["items"], strict=True):
            assert record.response is None or type(record.response) is kind
            assert_matches(record, item)


@pytest.mark.parametrize("name", sorted(n for n, (how, _) in EXPECTED.items() if how == "request"))
def test_request_fixture_fields_are_all_known_and_round_trip(name: str) -> None:
    """Every documented request field is a field of our request Struct, and encoding gives the body back."""
    _, kind = EXPECTED[name]
    _, data = load(name)
    wire_names = {f.encode_name for f in msgspec.structs.fields(kind)}
    assert set(data) <= wire_names
    assert json.loads(msgspec.json.encode(decode(name))) == request_data(kind, data)


def test_imagine_request_requires_an_action() -> None:
    """A body without `action` is not an ImagineRequest: every request we send names its action."""
    _, data = load("seed000_stream_request_python.json")
    assert "action" not in data
    with pytest.raises(msgspec.ValidationError, match="action"):
        msgspec.convert(data, ImagineRequest)


@pytest.mark.parametrize("name", sorted(n for n, (how, _) in EXPECTED.items() if how == "result"))
def test_result_fixture_finality_and_failure(name: str) -> None:
    """Documented finished results are final; failure bodies are failed and not final; others neither."""
    result = decode(name)
    assert result.failed is (name in FAILED)
    if name != RECEIPT:
        assert result.is_final is (name in FINAL)


def test_key_values_of_the_generate_result() -> None:
    """The seed's generate result decodes with its ids, sizes, progress and the nine grid actions."""
    result = decode("seed000_imagine_generate.json")
    assert result.task_id == "1bae3bec-3ac4-4180-a148-74ee6cb68b98"
    assert result.image_id == "1234197197067915365"
    assert (result.image_width, result.image_height) == (1024, 1024)
    assert (result.raw_image_width, result.raw_image_height) == (2048, 2048)
    assert result.progress == 100
    assert result.actions == [
        "upscale1",
        "upscale2",
        "upscale3",
        "upscale4",
        "reroll",
        "variation1",
        "variation2",
        "variation3",
        "variation4",
    ]
    assert result.success is True
    assert result.sub_image_urls is None


def test_upscale_result_allows_region_variation() -> None:
    """An upscaled image offers its listed actions plus variation_region, which the guide applies to it."""
    upscaled = decode("seed000_upscale4.json")
    assert "variation_region" not in upscaled.actions
    assert PROVIDER.allowed_actions(upscaled) == frozenset(upscaled.actions) | {"variation_region"}
    grid = decode("seed000_imagine_generate.json")
    assert PROVIDER.allowed_actions(grid) == frozenset(grid.actions)


def test_edits_result_keeps_sub_image_urls() -> None:
    """The edits result keeps its four quadrant URLs in order."""
    result = decode("seed004_edits_response.json")
    assert result.sub_image_urls == [
        f"https://cdn.midjourney.com/88e16dab-ef48-43a5-af73-bf24065287bc/0_{i}.png" for i in range(4)
    ]


def test_callback_failure_decodes_its_error_detail() -> None:
    """The failure webhook body decodes `error` as an ErrorDetail with code and message."""
    result = decode("seed000_callback_failure.json")
    assert result.error == ErrorDetail(code="bad_request", message="Unrecognized argument(s): `-c`, `x`")
    assert result.success is False
    assert result.task_id == "7ba0feaf-d20b-4c22-a35a-31ec30fc7715"


def test_async_receipt_gives_the_task_id() -> None:
    """decode_receipt reads the task_id of the asynchronous submit's immediate answer."""
    body, _ = load("seed004_edits_async_receipt.json")
    assert PROVIDER.decode_receipt(body) == "b8b7fdc2-628e-40dd-bc0c-671c3ddac9e9"


def test_a_receipt_answered_as_a_progress_stream_gives_its_first_lines_task_id() -> None:
    """With callback_url and an ndjson accept the documents allow the stream itself as the answer."""
    lines = b'{"task_id":"t-1","progress":0}\n{"task_id":"t-1","progress":40}\n'
    assert PROVIDER.decode_receipt(lines) == "t-1"
    # One object spread over lines is still read whole.
    assert PROVIDER.decode_receipt(b'{\n  "task_id": "t-2"\n}\n') == "t-2"
    with pytest.raises(ResponseDecodeError):
        PROVIDER.decode_receipt(b"garbage\nmore garbage\n")


def test_seed_result_keeps_the_documented_string() -> None:
    """The seed endpoint's string seed stays a string."""
    assert decode("note_seed_response.json").seed == "1515630083539206144"


# -- leniency ----------------------------------------------------------------------------------------


def test_unknown_fields_are_ignored() -> None:
    """Fields the Struct does not know (job_id, hold, nested junk) are skipped, known ones still decode."""
    body = b'{"job_id":"da317da6","hold":false,"extra":{"a":[1,{"b":null}]},"image_id":"42","progress":100}'
    result = PROVIDER.decode_result(ImagineUpdate, body)
    assert result.image_id == "42"
    assert result.progress == 100
    assert not hasattr(result, "job_id")


@pytest.mark.parametrize("field", sorted(SIZE_FIELDS))
def test_string_sizes_decode_to_int(field: str) -> None:
    """A width or height sent as a numeric string (the OAS types them as strings) decodes to an int."""
    result = PROVIDER.decode_result(ImagineUpdate, json.dumps({field: "1024"}).encode())
    value = getattr(result, field)
    assert type(value) is int
    assert value == 1024


@pytest.mark.parametrize("kind", RESULT_KINDS)
def test_missing_optional_fields_are_none(kind: type[Result]) -> None:
    """An empty object decodes, with every scalar field None and every list field empty or None."""
    result = PROVIDER.decode_result(kind, b"{}")
    for field in msgspec.structs.fields(kind):
        value = getattr(result, field.name)
        if field.name == "retries_taken":  # ours, not the provider's: a count that starts at 0
            assert value == 0
            continue
        assert value is None or value == [], field.name
    assert result.failed is False


def test_error_as_a_string() -> None:
    """A bare-string `error` (some gateways send one) decodes as that string and marks the body failed."""
    result = PROVIDER.decode_result(ImagineUpdate, b'{"success":false,"error":"fetch failed"}')
    assert result.error == "fetch failed"
    assert result.failed is True


def test_error_null_is_not_a_failure() -> None:
    """`error: null` on a success body is no error."""
    result = PROVIDER.decode_result(ImagineUpdate, b'{"success":true,"error":null}')
    assert result.error is None
    assert result.failed is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"seed":"1515630083539206144"}', "1515630083539206144"),
        (b'{"seed":1515630083539206144}', 1515630083539206144),
        (b'{"seed":0}', 0),
    ],
)
def test_seed_as_number_or_string(raw: bytes, expected: str | int) -> None:
    """`seed` decodes whether sent as a string or a number, keeping its value."""
    seed = PROVIDER.decode_result(SeedResult, raw).seed
    assert seed == expected
    assert type(seed) is type(expected)


@pytest.mark.parametrize(("raw", "expected"), [(b"35.5", 35.5), (b"100", 100.0), (b'"75"', 75.0)])
@pytest.mark.parametrize("kind", [ImagineUpdate, EditsUpdate, VideoUpdate])
def test_progress_is_a_float(kind: type[Result], raw: bytes, expected: float) -> None:
    """`progress` decodes to a float from a float, an int or a numeric string."""
    progress = PROVIDER.decode_result(kind, b'{"progress":' + raw + b"}").progress  # type: ignore[attr-defined]
    assert type(progress) is float
    assert progress == expected


# -- the recorded ndjson stream ------------------------------------------------------------------------


def stream_updates() -> list[ImagineUpdate]:
    lines = STREAM.read_bytes().splitlines()
    return [PROVIDER.decode_update(ImagineUpdate, line, number) for number, line in enumerate(lines, 1)]


def test_recorded_stream_has_three_lines() -> None:
    """The recorded stream fixture holds exactly the three documented lines."""
    assert len(STREAM.read_bytes().splitlines()) == 3


def test_recorded_stream_progress() -> None:
    """The recorded lines report progress 35, 75 and 100."""
    assert [update.progress for update in stream_updates()] == [35, 75, 100]


def test_recorded_stream_image_id_changes_on_every_line() -> None:
    """Each recorded line carries a different image_id (only the last one can be acted on)."""
    ids = [update.image_id for update in stream_updates()]
    assert None not in ids
    assert len(set(ids)) == 3


def test_recorded_stream_only_the_last_line_is_final() -> None:
    """is_final is False, False, True although success is True on every line."""
    updates = stream_updates()
    assert [update.is_final for update in updates] == [False, False, True]
    assert [update.success for update in updates] == [True, True, True]
    assert [update.actions == [] for update in updates] == [True, True, False]
    assert {update.task_id for update in updates} == {"49589d2c-b6b3-4fbf-9f82-93068509c76f"}


def test_recorded_stream_sizes_grow_to_the_final_grid() -> None:
    """Progress lines carry the 256 px preview, the final line the 1024 px grid."""
    assert [update.image_width for update in stream_updates()] == [256, 256, 1024]


# -- final results: the update a job ends with, narrowed to what finality guarantees -----------------------

#: Each final type, the update it narrows, and what it guarantees.
FINAL_TYPES = [
    pytest.param(ImagineResult, ImagineUpdate, "image_url", id="imagine"),
    pytest.param(EditsResult, EditsUpdate, "image_url", id="edits"),
    pytest.param(VideoResult, VideoUpdate, "video_urls", id="videos"),
]
#: The short calls have no progress: each is its own update.
SHORT_TYPES = [DescribeResult, ShortenResult, TranslateResult, SeedResult, SubmitReceipt, Result]


@pytest.mark.parametrize(("final", "update", "narrowed"), FINAL_TYPES)
def test_a_final_type_is_its_update_narrowed(
    final: type[Result], update: type[Result], narrowed: str
) -> None:
    """The final type subclasses its update and names it; only the guaranteed field loses its default."""
    assert issubclass(final, update)
    assert final.update_type is update
    assert update.update_type is update
    assert not isinstance(update(), final)
    assert final.__struct_fields__ == update.__struct_fields__
    required = {f.name for f in msgspec.structs.fields(final) if f.required} - {
        f.name for f in msgspec.structs.fields(update) if f.required
    }
    assert required == {narrowed}


@pytest.mark.parametrize("kind", SHORT_TYPES)
def test_a_short_call_is_its_own_update(kind: type[Result]) -> None:
    """describe, shorten, translate, seed (and the bare Result) have no separate update type."""
    assert kind.update_type is kind


@pytest.mark.parametrize(
    "name", sorted(n for n in FINAL if EXPECTED[n][1] in (ImagineUpdate, EditsUpdate, VideoUpdate))
)
def test_finalize_a_documented_final_update(name: str) -> None:
    """Every documented finished imagine, edits and videos body finalizes with all its fields kept."""
    update = decode(name)
    kind = {ImagineUpdate: ImagineResult, EditsUpdate: EditsResult, VideoUpdate: VideoResult}[type(update)]
    final = finalize(kind, update)
    assert type(final) is kind
    assert msgspec.structs.asdict(final) == msgspec.structs.asdict(update)


def test_finalize_the_recorded_streams_last_line() -> None:
    """The stream's final line becomes an ImagineResult whose image_url is the grid's."""
    last = stream_updates()[-1]
    final = finalize(ImagineResult, last)
    assert final.image_url == last.image_url
    assert final.image_url.startswith("https://")
    assert final.actions == last.actions


@pytest.mark.parametrize(
    ("final", "update", "body"),
    [
        pytest.param(
            ImagineResult,
            ImagineUpdate,
            {"task_id": "t", "finished": True, "actions": ["upscale1"], "progress": 100},
            id="imagine-finished-without-url",
        ),
        pytest.param(
            ImagineResult, ImagineUpdate, {"task_id": "t", "image_url": None}, id="imagine-url-null"
        ),
        pytest.param(EditsResult, EditsUpdate, {"task_id": "t", "progress": 100}, id="edits-without-url"),
        pytest.param(VideoResult, VideoUpdate, {"task_id": "t", "progress": 100}, id="videos-without-urls"),
    ],
)
def test_finalize_without_the_guaranteed_field_is_a_decode_error(
    final: type[Result], update: type[Result], body: dict[str, Any]
) -> None:
    """A final update missing what the final type guarantees raises ResponseDecodeError naming the task."""
    with pytest.raises(ResponseDecodeError, match=final.kind) as caught:
        finalize(final, msgspec.convert(body, update))
    assert caught.value.task_id == "t"


@pytest.mark.parametrize(
    "result",
    [
        ImagineResult(image_url="https://x/y.png"),
        EditsResult(image_url="https://x/y.png"),
        VideoResult(video_urls=["https://x/0.mp4"]),
        DescribeResult(descriptions=["a cat"]),
        SeedResult(seed="1"),
    ],
    ids=lambda result: type(result).kind,
)
def test_finalize_an_already_final_result_returns_it(result: Result) -> None:
    """No copy when the update already is of the final type (the short calls always are)."""
    assert finalize(type(result), result) is result


@pytest.mark.parametrize(("final", "update", "narrowed"), FINAL_TYPES)
def test_a_progress_line_decodes_as_the_update_not_the_final_type(
    final: type[Result], update: type[Result], narrowed: str
) -> None:
    """A line without the guaranteed field is a valid update and an invalid final result."""
    line = b'{"task_id":"t","progress":35}'
    assert PROVIDER.decode_update(update, line, 1).progress == 35  # type: ignore[attr-defined]
    with pytest.raises(msgspec.ValidationError, match=narrowed):
        msgspec.json.decode(line, type=final, strict=False)


# -- is_final per result type -----------------------------------------------------------------------------

FAILURE = {"success": False, "error": {"code": "api_error", "message": "fetch failed"}}

IS_FINAL_CASES = [
    pytest.param(
        ImagineUpdate, {"image_id": "1", "progress": 100, "actions": ["upscale1"]}, True, id="imagine-done"
    ),
    pytest.param(
        ImagineUpdate, {"image_id": "1", "actions": ["upscale1"]}, True, id="imagine-actions-no-progress"
    ),
    pytest.param(
        ImagineUpdate, {"image_id": "1", "progress": 100, "actions": []}, False, id="imagine-no-actions"
    ),
    pytest.param(ImagineUpdate, {"image_id": "1", "progress": 100}, False, id="imagine-actions-missing"),
    pytest.param(
        ImagineUpdate, {"image_id": "1", "progress": 75, "actions": ["upscale1"]}, False, id="imagine-75"
    ),
    pytest.param(ImagineUpdate, {"progress": 100, "actions": ["upscale1"]}, False, id="imagine-no-image-id"),
    pytest.param(EditsUpdate, {"progress": 100, "image_url": "https://x/y.png"}, True, id="edits-done"),
    pytest.param(EditsUpdate, {"progress": 100}, False, id="edits-no-url"),
    pytest.param(EditsUpdate, {"progress": 100, "image_url": ""}, False, id="edits-empty-url"),
    pytest.param(EditsUpdate, {"progress": 50, "image_url": "https://x/y.png"}, False, id="edits-50"),
    pytest.param(VideoUpdate, {"video_urls": ["https://x/0.mp4"]}, True, id="videos-done"),
    pytest.param(VideoUpdate, {"video_urls": [], "progress": 100}, False, id="videos-empty"),
    pytest.param(VideoUpdate, {"progress": 40, "image_url": "https://x/y.png"}, False, id="videos-running"),
    pytest.param(DescribeResult, {"descriptions": ["a cat"]}, True, id="describe-done"),
    pytest.param(DescribeResult, {"descriptions": []}, False, id="describe-empty"),
]

#: Bodies that would be final but for the failure in them.
FINAL_BODIES = {
    ImagineUpdate: {"image_id": "1", "progress": 100, "actions": ["upscale1"]},
    EditsUpdate: {"progress": 100, "image_url": "https://x/y.png"},
    VideoUpdate: {"video_urls": ["https://x/0.mp4"]},
    DescribeResult: {"descriptions": ["a cat"]},
}


@pytest.mark.parametrize(("kind", "body", "final"), IS_FINAL_CASES)
def test_is_final_rules(kind: type[Result], body: dict[str, Any], final: bool) -> None:
    """Imagine needs actions and progress 100, edits progress 100 and a URL, videos URLs, describe text."""
    assert PROVIDER.decode_result(kind, json.dumps({"success": True, **body}).encode()).is_final is final


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(FAILURE, id="success-false-with-error"),
        pytest.param({"success": False}, id="success-false"),
        pytest.param({"error": {"code": "api_error"}}, id="error-without-success"),
        pytest.param({"success": True, "error": "fetch failed"}, id="error-string"),
    ],
)
@pytest.mark.parametrize("kind", sorted(FINAL_BODIES, key=lambda k: k.kind))
def test_failure_bodies_are_never_final(kind: type[Result], failure: dict[str, Any]) -> None:
    """A body that reports a failure is failed and not final, whatever else it carries."""
    result = PROVIDER.decode_result(kind, json.dumps({**FINAL_BODIES[kind], **failure}).encode())
    assert result.failed is True
    assert result.is_final is False


# -- task_state -------------------------------------------------------------------------------------------

PARTIAL = {"success": True, "task_id": "t", "image_id": "9", "progress": 50, "actions": []}
FINAL_IMAGINE = {"success": True, "task_id": "t", "image_id": "9", "progress": 100, "actions": ["upscale1"]}


def state_of(record: dict[str, Any]) -> str:
    return PROVIDER.task_state(PROVIDER.decode_task(json.dumps(record).encode()))


@pytest.mark.parametrize(
    ("record", "state"),
    [
        pytest.param({"id": "t", "type": "imagine"}, "pending", id="no-response"),
        pytest.param({"id": "t", "type": "imagine", "response": None}, "pending", id="response-null"),
        pytest.param({"id": "t", "type": "imagine", "response": {}}, "pending", id="empty-response"),
        pytest.param({"id": "t", "type": "imagine", "response": PARTIAL}, "running", id="partial"),
        pytest.param(
            {"id": "t", "type": "imagine", "response": {**PARTIAL, "progress": 0}}, "running", id="progress-0"
        ),
        pytest.param(
            {"id": "t", "type": "imagine", "response": {**PARTIAL, "progress": 100}},
            "running",
            id="progress-100-no-actions",
        ),
        pytest.param({"id": "t", "type": "imagine", "response": FINAL_IMAGINE}, "succeeded", id="final"),
        pytest.param({"id": "t", "type": "imagine", "response": FAILURE}, "failed", id="failure"),
        pytest.param(
            {"id": "t", "type": "describe", "response": {"error": {"code": "api_error", "message": "x"}}},
            "failed",
            id="describe-error-without-success",
        ),
        pytest.param({"id": "t", "type": "describe", "response": {}}, "pending", id="describe-empty"),
        pytest.param(
            {"id": "t", "type": "describe", "response": {"descriptions": ["a cat"]}},
            "succeeded",
            id="describe-done",
        ),
        pytest.param(
            {"id": "t", "type": "videos", "response": {"success": True, "progress": 30}},
            "running",
            id="videos-partial",
        ),
        pytest.param(
            {"id": "t", "type": "videos", "response": {"success": True, "video_urls": ["u"]}},
            "succeeded",
            id="videos-done",
        ),
        pytest.param(
            {"id": "t", "type": "edits", "response": {"success": True, "progress": 100, "image_url": "u"}},
            "succeeded",
            id="edits-done",
        ),
        pytest.param({"id": "t", "type": "imagine", "state": "failed"}, "failed", id="state-failed"),
        pytest.param(
            {"id": "t", "type": "imagine", "state": "failed", "response": PARTIAL},
            "failed",
            id="state-failed-with-partial",
        ),
        pytest.param({"id": "t", "type": "imagine", "state": "Cancelled"}, "failed", id="state-cancelled"),
        pytest.param(
            {"id": "t", "type": "imagine", "state": "generating", "response": PARTIAL},
            "running",
            id="state-generating",
        ),
    ],
)
def test_task_state(record: dict[str, Any], state: str) -> None:
    """Missing or empty response is pending, partial running, final succeeded, any failure failed."""
    assert state_of(record) == state


def test_task_state_of_the_documented_record_and_batch() -> None:
    """The §11 record is succeeded; in the batch it is succeeded and the record without response pending."""
    body, _ = load("note_task_record_fixed.json")
    assert PROVIDER.task_state(PROVIDER.decode_task(body)) == "succeeded"
    body, _ = load("note_tasks_batch_fixed.json")
    assert [PROVIDER.task_state(r) for r in PROVIDER.decode_task_batch(body).items] == [
        "succeeded",
        "pending",
    ]


def test_decode_task_with_a_kind_ignores_the_type_field() -> None:
    """An explicit kind decides the response's type even when the record's `type` names another."""
    record = PROVIDER.decode_task(
        json.dumps({"type": "describe", "response": FINAL_IMAGINE}).encode(), ImagineUpdate
    )
    assert type(record.response) is ImagineUpdate
    assert record.response.actions == ["upscale1"]


@pytest.mark.parametrize("response", [{}, PARTIAL], ids=["empty", "partial"])
def test_task_state_without_a_type_is_not_succeeded(response: dict[str, Any]) -> None:
    """A record without `type` whose response is empty or partial is not reported as succeeded."""
    assert state_of({"id": "t", "response": response}) != "succeeded"


def test_shorten_task_with_an_empty_response_is_pending() -> None:
    """A shorten task whose response has no prompts yet is pending."""
    assert state_of({"id": "t", "type": "shorten", "response": {}}) == "pending"


# -- malformed ndjson lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b'{"progress": 35, "image_id": ', id="truncated"),
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b"[1, 2, 3]", id="array"),
        pytest.param(b'{"progress": "thirty-five"}', id="bad-progress"),
        pytest.param(b'{"actions": "upscale1"}', id="actions-not-a-list"),
        pytest.param(b'data: {"progress": 35}', id="sse-prefix"),
        pytest.param(b'{"image_url": "' + b"x" * 200 + b'"', id="long-truncated"),
    ],
)
def test_malformed_line_raises_with_line_number_and_prefix(line: bytes) -> None:
    """decode_update raises MalformedLineError carrying the line number and the first 64 bytes of the line."""
    with pytest.raises(MalformedLineError) as caught:
        PROVIDER.decode_update(ImagineUpdate, line, 7)
    error = caught.value
    assert isinstance(error, StreamError)
    assert error.line_number == 7
    assert error.prefix == line[:64]
    assert error.reason
    assert "line 7" in str(error)


def test_deeply_nested_line_is_malformed() -> None:
    """A line nested 5000 levels deep is a MalformedLineError, not a RecursionError."""
    with pytest.raises(MalformedLineError):
        PROVIDER.decode_update(ImagineUpdate, b'{"a":' + b"[" * 5000, 1)
