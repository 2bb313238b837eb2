"""The emulator's injected faults, concurrency limit and counters, over real sockets with raw aiohttp."""

from __future__ import annotations

import importlib.util
import json
import math
import time
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import anyio
import pytest

from mjasync.emulator import FAULT_KINDS, Emulator, FaultPlan, ManualClock
from mjasync.emulator.__main__ import _parse, _plan, main
from mjasync.testing import EMULATOR_TOKEN

from ..helpers import NDJSON, post_acedata, running, until, webhook_receiver

#: What a client sees when the emulator resets the connection before any response.
DISCONNECTS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
HAS_GOAPI = importlib.util.find_spec("mjasync.emulator._goapi") is not None


async def post(
    session: aiohttp.ClientSession, emu: Emulator, path: str, body: Any, fault: str | None = None, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    """POST JSON to an API path, with an ``x-mjasync-fault`` when *fault* is given; return status, headers and the raw body."""
    async with post_acedata(session, emu, path, body, fault=fault, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def stream_lines(
    session: aiohttp.ClientSession, emu: Emulator, body: Any, fault: str | None = None
) -> tuple[list[bytes], BaseException | None]:
    """POST an ndjson imagine; return the complete lines read and the error that ended the stream, if any."""
    lines: list[bytes] = []
    try:
        async with post_acedata(
            session, emu, "/midjourney/imagine", body, fault=fault, accept=NDJSON
        ) as resp:
            if resp.status != 200:
                return [await resp.read()], None  # a fault answered instead of the stream
            async for line in resp.content:
                lines.append(line.rstrip(b"\n"))
    except aiohttp.ClientError as exc:
        return lines, exc
    return lines, None


async def retrieve(session: aiohttp.ClientSession, emu: Emulator, task_id: str) -> dict[str, Any]:
    """The task record from ``/midjourney/tasks``."""
    status, _, raw = await post(session, emu, "/midjourney/tasks", {"action": "retrieve", "id": task_id})
    assert status == 200, raw
    record: dict[str, Any] = json.loads(raw)
    return record


async def counters(session: aiohttp.ClientSession, emu: Emulator) -> dict[str, Any]:
    """``GET /_emulator/counters``, without credentials."""
    async with session.get(f"{emu.url}/_emulator/counters") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def eventually(condition: Any, what: str) -> None:
    """Wait (at most 5 s) until *condition()* is true."""
    # The emulator has no event for these states, so poll, briefly and within a deadline.
    await until(condition)
    assert condition(), what


def assert_acedata_error(raw: bytes, code: str) -> None:
    """AceData's error shape with *code* and a fresh trace_id."""
    body = json.loads(raw)
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert uuid.UUID(body["trace_id"]).version == 4


def assert_no_task(emu: Emulator) -> None:
    """Nothing was created or billed."""
    assert emu.counters["submits"] == 0
    assert emu.counters["tasks"] == 0
    assert emu.tasks_per_prompt == {}


# --- status faults, phase=before ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("retry-after=2", {"Retry-After": "2"}),
        ("retry-after=0.25", {"Retry-After": "0.25"}),
        ("retry-after-ms=1500", {"Retry-After-Ms": "1500", "Retry-After": "2"}),
    ],
)
async def test_429_carries_retry_after_in_seconds_or_ms(item: str, expected: dict[str, str]) -> None:
    """`429; retry-after=S` / `retry-after-ms=N` set Retry-After (and Retry-After-Ms) on AceData's 429 body."""
    async with running() as (emu, session):
        status, got, raw = await post(session, emu, "/midjourney/imagine", {"prompt": "cat"}, f"429; {item}")
        assert status == 429
        assert {k: got[k] for k in expected} == expected
        assert_acedata_error(raw, "too_many_requests")
        assert json.loads(raw)["error"]["message"] == "You have exceeded the rate limit."
        assert_no_task(emu)
        assert emu.counters["fault_429"] == 1
        assert emu.faults["429"] == 1


async def test_429_retry_after_as_an_http_date() -> None:
    """`429; retry-after=date` sends an HTTP date a little ahead of the wall clock, never in the past."""
    async with running(clock=ManualClock(start=1_000.0)) as (emu, session):
        before = time.time()
        status, got, _ = await post(
            session, emu, "/midjourney/imagine", {"prompt": "cat"}, "429; retry-after=date"
        )
        assert status == 429
        when = parsedate_to_datetime(got["Retry-After"]).timestamp()
        assert before < when <= math.ceil(time.time()) + 3
        assert "Retry-After-Ms" not in got


async def test_429_without_a_value_waits_one_second() -> None:
    """A bare `429` still carries `Retry-After: 1`."""
    async with running() as (emu, session):
        status, got, _ = await post(session, emu, "/midjourney/tasks", {"id": "x"}, "429")
        assert (status, got["Retry-After"]) == (429, "1")


@pytest.mark.parametrize(("status", "code"), [(500, "api_error"), (503, "busy"), (504, "timeout")])
async def test_5xx_before_answers_in_acedata_shape_and_creates_nothing(status: int, code: str) -> None:
    """500/503/504 (phase before, the default) answer in AceData's error shape before any task exists."""
    async with running() as (emu, session):
        got, _, raw = await post(session, emu, "/midjourney/imagine", {"prompt": "cat"}, str(status))
        assert got == status
        assert_acedata_error(raw, code)
        assert_no_task(emu)
        assert emu.counters[f"fault_{status}"] == emu.counters["fault_before"] == emu.counters["faults"] == 1
        assert emu.counters["fault_after"] == 0
        assert [(r.kind, r.phase, r.source, r.task_id) for r in emu.fault_log] == [
            (str(status), "before", "header", None)
        ]


async def test_502_is_an_html_page() -> None:
    """502 is a gateway's HTML page, not JSON."""
    async with running() as (emu, session):
        status, got, raw = await post(session, emu, "/midjourney/imagine", {"prompt": "cat"}, "502")
        assert status == 502
        assert got["Content-Type"].startswith("text/html")
        assert raw.startswith(b"<html><head><title>502 Bad Gateway</title>")
        with pytest.raises(ValueError):
            json.loads(raw)
        assert_no_task(emu)
        assert emu.counters["fault_502"] == 1


async def test_503_may_carry_retry_after() -> None:
    """`503; retry-after=3` sets Retry-After on the 503."""
    async with running() as (emu, session):
        status, got, _ = await post(
            session, emu, "/midjourney/imagine", {"prompt": "cat"}, "503; retry-after=3"
        )
        assert (status, got["Retry-After"]) == (503, "3")


async def test_reset_before_is_a_disconnect_and_creates_nothing() -> None:
    """`reset` drops the connection with no HTTP response; nothing is created; the log has no status."""
    async with running() as (emu, session):
        with pytest.raises(DISCONNECTS):
            await post(session, emu, "/midjourney/imagine", {"prompt": "cat"}, "reset")
        assert_no_task(emu)
        assert emu.counters["fault_reset"] == 1
        assert emu.requests[-1].status is None
        # The emulator keeps serving: the next request on a fresh connection works.
        status, _, _ = await post(session, emu, "/midjourney/imagine", {"prompt": "dog", "async": True})
        assert status == 200


# --- phase=after --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500; phase=after", "504; phase=after", "reset; phase=after"])
@pytest.mark.parametrize("mode", ["sync", "async", "stream"])
async def test_phase_after_creates_exactly_one_task_that_runs_on(mode: str, fault: str) -> None:
    """phase=after: the client gets the error or a disconnect at once, yet one task exists and finishes."""
    clock = ManualClock()
    async with running(speed=10, clock=clock) as (emu, session):
        body: dict[str, Any] = {"prompt": f"after {mode}", **({"async": True} if mode == "async" else {})}
        accept = NDJSON if mode == "stream" else "application/json"
        if fault.startswith("reset"):
            with pytest.raises(DISCONNECTS):
                await post(session, emu, "/midjourney/imagine", body, fault, accept=accept)
        else:
            # With a manual clock that never moves, a sync or stream answer would hang: the fault comes first.
            status, _, raw = await post(session, emu, "/midjourney/imagine", body, fault, accept=accept)
            assert status == int(fault[:3])
            assert_acedata_error(raw, {"500": "api_error", "504": "timeout"}[fault[:3]])
        assert emu.tasks_per_prompt == {body["prompt"]: 1}
        assert emu.counters["submits"] == 1
        assert emu.counters["fault_after"] == 1
        (record,) = emu.fault_log
        assert (record.kind, record.phase, record.path) == (
            fault.split(";")[0],
            "after",
            "/midjourney/imagine",
        )
        assert record.task_id is not None
        running_task = await retrieve(session, emu, record.task_id)
        assert "finished_at" not in running_task
        clock.advance(10)
        done = await retrieve(session, emu, record.task_id)
        assert done["response"]["progress"] == 100
        assert done["response"]["task_id"] == record.task_id


async def test_phase_after_still_delivers_the_callback() -> None:
    """phase=after on a callback submit: the client gets 502, the provider still calls back with the result."""
    async with webhook_receiver() as (url, received), running() as (emu, session):
        status, _, _ = await post(
            session, emu, "/midjourney/imagine", {"prompt": "hooked", "callback_url": url}, "502; phase=after"
        )
        assert status == 502
        with anyio.fail_after(5):
            final = (await received.receive()).body
        assert final["task_id"] == emu.fault_log[0].task_id
        assert final["progress"] == 100
        assert emu.tasks_per_prompt == {"hooked": 1}


async def test_phase_after_is_not_injected_when_the_handler_refuses() -> None:
    """A submit that fails validation gets its 400; the after-fault is not injected and nothing is billed."""
    async with running() as (emu, session):
        status, _, raw = await post(session, emu, "/midjourney/imagine", {"prompt": ""}, "500; phase=after")
        assert status == 400
        assert_acedata_error(raw, "bad_request")
        assert_no_task(emu)
        assert emu.counters["faults"] == 0


async def test_phase_after_on_a_read_replaces_the_answer() -> None:
    """phase=after on `/midjourney/tasks` (no task-created hook): the answer is replaced by the error."""
    async with running() as (emu, session):
        _, _, raw = await post(session, emu, "/midjourney/imagine", {"prompt": "cat", "async": True})
        task_id = json.loads(raw)["task_id"]
        status, _, _ = await post(session, emu, "/midjourney/tasks", {"id": task_id}, "503; phase=after")
        assert status == 503
        assert [(r.kind, r.phase) for r in emu.fault_log] == [("503", "after")]


# --- stream faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(("cut", "lines"), [(2, 2), (0, 0), (99, 5)])
async def test_stream_cut_after_n_lines(cut: int, lines: int) -> None:
    """`cut-after=N` sends N whole lines (never the final one), then the body ends unfinished."""
    async with running() as (emu, session):
        got, error = await stream_lines(session, emu, {"prompt": "cut"}, f"cut-after={cut}")
        assert isinstance(error, aiohttp.ClientPayloadError)
        assert len(got) == lines
        assert all(json.loads(line)["progress"] < 100 for line in got)
        assert emu.counters["fault_cut"] == 1
        (record,) = emu.fault_log
        assert (record.kind, record.phase) == ("cut", "after")
        assert record.task_id is not None
        # The job carries on without the client.
        assert (await retrieve(session, emu, record.task_id))["response"]["progress"] == 100


async def test_stream_malformed_line() -> None:
    """`malformed-line=3` sends half of line 3's JSON; the other lines and the end of the stream are intact."""
    async with running() as (emu, session):
        got, error = await stream_lines(session, emu, {"prompt": "garbled"}, "malformed-line=3")
        assert error is None
        assert len(got) == 6
        with pytest.raises(ValueError):
            json.loads(got[2])
        assert got[2].startswith(b'{"image_url":')
        parsed = [json.loads(line) for i, line in enumerate(got) if i != 2]
        assert [p["progress"] for p in parsed] == [5, 20, 55, 75, 100]
        assert emu.counters["fault_malformed"] == 1


async def test_stream_malformed_line_past_the_end_garbles_the_final_line() -> None:
    """`malformed-line=N` beyond the stream garbles its last line, so a fault is always injected."""
    async with running() as (emu, session):
        got, error = await stream_lines(session, emu, {"prompt": "garbled"}, "malformed-line=40")
        assert error is None
        with pytest.raises(ValueError):
            json.loads(got[-1])
        assert emu.counters["fault_malformed"] == 1


@pytest.mark.parametrize("accept", [NDJSON, "application/json"])
async def test_slow_first_byte_comes_after_the_task_exists(accept: str) -> None:
    """`slow-first-byte=S`: the task exists while the client is still waiting for the first byte."""
    async with running() as (emu, session):
        answered = anyio.Event()
        body = {"prompt": "slow"} if accept == NDJSON else {"prompt": "slow", "async": True}

        async def submit() -> None:
            async with post_acedata(
                session, emu, "/midjourney/imagine", body, fault="slow-first-byte=0.5", accept=accept
            ) as resp:
                answered.set()
                assert resp.status == 200
                await resp.read()

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(submit)
            await eventually(lambda: emu.counters["fault_slow"] == 1, "the slow fault began")
            assert emu.tasks_per_prompt == {"slow": 1}
            assert not answered.is_set()
        assert 0.45 <= time.monotonic() - started < 30
        assert emu.faults["slow"] == 1


async def test_stream_faults_combine() -> None:
    """`slow-first-byte=0.1; cut-after=1`: both are injected on one request and counted once as a request."""
    async with running() as (emu, session):
        got, error = await stream_lines(session, emu, {"prompt": "both"}, "slow-first-byte=0.1; cut-after=1")
        assert len(got) == 1
        assert isinstance(error, aiohttp.ClientPayloadError)
        assert (emu.counters["fault_slow"], emu.counters["fault_cut"]) == (1, 1)
        assert (emu.counters["faults"], emu.counters["faulted_requests"]) == (2, 1)


# --- the header itself ----------------------------------------------------------------------------


async def test_header_is_case_insensitive_and_stays_out_of_the_task() -> None:
    """Header name and items are case-insensitive; the body recorded and stored is exactly what was sent."""
    async with running() as (emu, session):
        body = {"prompt": "cased", "async": True}
        async with session.post(
            f"{emu.url}/midjourney/imagine",
            json=body,
            headers={"Authorization": f"Bearer {EMULATOR_TOKEN}", "X-MJAsync-Fault": "500 ; PHASE=After"},
        ) as resp:
            assert resp.status == 500
        (record,) = emu.fault_log
        assert record.phase == "after"
        assert record.task_id is not None
        assert emu.requests[-1].json == body
        stored = emu.task_record(record.task_id)
        assert stored is not None
        assert stored["request"] == body


@pytest.mark.parametrize(
    "value",
    [
        "bogus",
        "",
        "429; phase=sideways",
        "phase=after",
        "500; retry-after=1",
        "429; retry-after=-1",
        "429; retry-after=1; retry-after-ms=5",
        "reset; 500",
        "none; 429",
        "cut-after=1.5",
        "malformed-line=0",
        "slow-first-byte=nan",
        "slow-first-byte=3600",
        "429=1",
        "cut-after",
    ],
)
async def test_invalid_header_is_a_400(value: str) -> None:
    """A header outside the grammar is answered 400 `bad_request` naming the header; nothing is injected."""
    async with running() as (emu, session):
        status, _, raw = await post(session, emu, "/midjourney/imagine", {"prompt": "cat"}, value)
        assert status == 400
        assert_acedata_error(raw, "bad_request")
        assert "x-mjasync-fault" in json.loads(raw)["error"]["message"]
        assert_no_task(emu)
        assert emu.counters["faults"] == 0


async def test_header_none_exempts_a_request_from_the_plan() -> None:
    """`none` skips the plan for that request; the header overrides the plan."""
    plan = FaultPlan(rate=1.0, kinds=("500",))
    async with running(faults=plan) as (emu, session):
        assert (await post(session, emu, "/midjourney/imagine", {"prompt": "a", "async": True}, "none"))[
            0
        ] == 200
        assert (await post(session, emu, "/midjourney/imagine", {"prompt": "b", "async": True}, "503"))[
            0
        ] == 503
        assert (await post(session, emu, "/midjourney/imagine", {"prompt": "c", "async": True}))[0] == 500
        assert [r.source for r in emu.fault_log] == ["header", "plan"]


# --- the plan ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FAULT_KINDS)
async def test_every_kind_is_reachable_from_the_plan(kind: str) -> None:
    """A plan with one kind at rate 1 injects it (stream kinds on a stream) and counts it."""
    plan = FaultPlan(rate=1.0, kinds=(kind,), slow_first_byte=0.01, retry_after=0.01)
    async with running(faults=plan) as (emu, session):
        if kind in ("cut", "malformed"):
            _, error = await stream_lines(session, emu, {"prompt": kind})
            assert (error is not None) == (kind == "cut")
        else:
            try:
                await post(session, emu, "/midjourney/imagine", {"prompt": kind, "async": True})
            except DISCONNECTS:
                assert kind == "reset"
        assert emu.counters[f"fault_{kind}"] == 1
        assert emu.faults[kind] == 1
        assert [r.source for r in emu.fault_log] == ["plan"]
        assert (await counters(session, emu))["faults"][kind] == 1


async def test_plan_skips_stream_kinds_for_requests_that_do_not_stream() -> None:
    """Only cut/malformed in the plan: a JSON answer cannot get them, so nothing is injected."""
    plan = FaultPlan(rate=1.0, kinds=("cut", "malformed"))
    async with running(faults=plan) as (emu, session):
        status, _, _ = await post(session, emu, "/midjourney/imagine", {"prompt": "x", "async": True})
        assert status == 200
        assert emu.counters["faults"] == 0


async def drive(emu: Emulator, session: aiohttp.ClientSession, n: int) -> list[tuple[str, str, str]]:
    """Send *n* submits (a third of them streams) plus a fetch after each; return the fault log as tuples."""
    for i in range(n):
        body: dict[str, Any] = {"prompt": f"job {i}"}
        try:
            if i % 3 == 0:
                await stream_lines(session, emu, body)
            else:
                await post(session, emu, "/midjourney/imagine", {**body, "async": True})
            await post(session, emu, "/midjourney/translate", {"content": f"hello {i}"})
        except aiohttp.ClientError:
            pass  # resets are part of the plan
    return [(r.kind, r.phase, r.path) for r in emu.fault_log]


async def test_plan_is_seeded_and_reproducible() -> None:
    """The same seed gives the same faults on the same requests; another seed gives others."""
    plan = FaultPlan(rate=0.4, seed=11, slow_first_byte=0.0, retry_after=0.0)
    async with running(faults=plan) as (emu, session):
        first = await drive(emu, session, 45)
        snapshot = dict(emu.counters)
    async with running(faults=plan) as (emu, session):
        assert await drive(emu, session, 45) == first
        assert {k: v for k, v in emu.counters.items() if k.startswith("fault")} == {
            k: v for k, v in snapshot.items() if k.startswith("fault")
        }
        # Roughly the rate, with both phases and several kinds.
        assert 0.2 * 90 <= emu.counters["faulted_requests"] <= 0.6 * 90
        assert {phase for _, phase, _ in first} == {"before", "after"}
        assert len({kind for kind, _, _ in first}) >= 5
        assert all(count == 1 for count in emu.tasks_per_prompt.values())
    async with running(faults=FaultPlan(rate=0.4, seed=12, slow_first_byte=0.0)) as (emu, session):
        assert await drive(emu, session, 45) != first


async def test_plan_draws_afresh_for_a_repeated_request() -> None:
    """Sending the same body again is a new draw, so a retry is not doomed to the same fault."""
    plan = FaultPlan(rate=0.5, kinds=("503",), seed=5, retry_after=0)
    async with running(faults=plan) as (emu, session):
        statuses = [
            (await post(session, emu, "/midjourney/translate", {"content": "same"}))[0] for _ in range(30)
        ]
        assert set(statuses) == {200, 503}


async def test_plan_puts_429_and_503_before_and_ambiguous_kinds_after_on_submits_only() -> None:
    """With after_share=1: 500/502/504/reset hit submits after the task exists, 429/503 always before."""
    plan = FaultPlan(
        rate=1.0, kinds=("429", "503", "500", "502", "504", "reset"), after_share=1.0, retry_after=0
    )
    async with running(faults=plan) as (emu, session):
        for i in range(30):
            try:
                await post(session, emu, "/midjourney/imagine", {"prompt": f"p{i}", "async": True})
                await post(session, emu, "/midjourney/tasks", {"id": "none"})
            except DISCONNECTS:
                pass
        for record in emu.fault_log:
            submit = record.path == "/midjourney/imagine"
            expected = "after" if submit and record.kind not in ("429", "503") else "before"
            assert record.phase == expected, record
        after = [r for r in emu.fault_log if r.phase == "after"]
        assert after
        # Only the after-faults created tasks, one each.
        assert emu.counters["tasks"] == len(after) == len({r.task_id for r in after})
        assert all(r.task_id and emu.task_record(r.task_id) for r in after)


@pytest.mark.parametrize(
    ("scope", "faulted"), [("submits", "/midjourney/imagine"), ("fetch", "/midjourney/tasks")]
)
async def test_plan_scope_limits_the_paths(scope: str, faulted: str) -> None:
    """`scope="submits"` spares task lookups and `scope="fetch"` spares submits."""
    plan = FaultPlan(rate=1.0, kinds=("503",), scope=scope, retry_after=0)  # type: ignore[arg-type]
    async with running(faults=plan) as (emu, session):
        submit, _, _ = await post(session, emu, "/midjourney/imagine", {"prompt": "x", "async": True})
        fetch, _, _ = await post(session, emu, "/midjourney/tasks", {"id": "nope"})
        # Unfaulted, the submit succeeds and the lookup of an unknown id is a 400.
        assert (submit, fetch) == ((503, 400) if scope == "submits" else (200, 503))
        assert {r.path for r in emu.fault_log} == {faulted}


@pytest.mark.parametrize(
    "options",
    [
        {"rate": 1.5},
        {"rate": 0.5, "kinds": ("nope",)},
        {"rate": 0.5, "kinds": {"429": 0}},
        {"rate": 0.5, "after_share": -0.1},
        {"rate": 0.5, "malformed_line": 0},
        {"rate": 0.5, "slow_first_byte": 120},
        {"rate": 0.5, "scope": "everything"},
    ],
)
def test_fault_plan_rejects_bad_settings(options: dict[str, Any]) -> None:
    """FaultPlan validates its settings at construction."""
    with pytest.raises(ValueError):
        FaultPlan(**options)


def test_fault_plan_weights_and_paths() -> None:
    """Kinds may be weighted; explicit paths replace the scope."""
    plan = FaultPlan(rate=0.1, kinds={"429": 3, "reset": 1}, paths=frozenset({"/mj/v2/fetch"}))
    assert plan.weights == (("429", 3.0), ("reset", 1.0))
    assert plan.applies_to("/mj/v2/fetch")
    assert not plan.applies_to("/midjourney/imagine")


# --- the concurrency limit ------------------------------------------------------------------------


async def streamed_lines(
    session: aiohttp.ClientSession, emu: Emulator, prompt: str, opened: list[str]
) -> int:
    """Stream an imagine of `prompt` to its end (noted in `opened` once open); how many lines it sent."""
    async with post_acedata(session, emu, "/midjourney/imagine", {"prompt": prompt}, accept=NDJSON) as resp:
        opened.append(prompt)
        return len([line async for line in resp.content])


async def test_concurrency_limit_answers_429_past_n_open_submits_per_token() -> None:
    """Past N open streams of one token, a submit gets 429 before any task; other tokens and later submits pass."""
    clock = ManualClock()
    async with running(speed=10, clock=clock, concurrency_limit=2, tokens=(EMULATOR_TOKEN, "other")) as (
        emu,
        session,
    ):
        opened: list[str] = []
        results: list[int] = []

        async def hold_stream(prompt: str) -> None:
            results.append(await streamed_lines(session, emu, prompt, opened))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_stream, "one")
            tg.start_soon(hold_stream, "two")
            await eventually(lambda: len(opened) == 2, "both streams are open")
            status, got, raw = await post(
                session, emu, "/midjourney/imagine", {"prompt": "three", "async": True}
            )
            assert status == 429
            assert got["Retry-After"] == "1"
            assert_acedata_error(raw, "too_many_requests")
            assert "three" not in emu.tasks_per_prompt
            assert emu.counters["fault_concurrency"] == emu.faults["concurrency"] == 1
            assert emu.fault_log[-1].source == "limit"
            # Reads are never limited, and the limit is per token.
            assert (await post(session, emu, "/midjourney/translate", {"content": "hi"}))[0] == 200
            other, _, _ = await post(
                session, emu, "/midjourney/imagine", {"prompt": "four", "async": True}, token="other"
            )
            assert other == 200
            clock.advance(10)
        assert results == [6, 6]
        # Once the streams' handlers have returned, the token has room again.
        await eventually(
            lambda: all(r.status == 200 for r in emu.requests if r.accept == NDJSON), "streams closed"
        )
        status, _, _ = await post(session, emu, "/midjourney/imagine", {"prompt": "five", "async": True})
        assert status == 200
        assert emu.tasks_per_prompt == {"one": 1, "two": 1, "four": 1, "five": 1}


async def test_open_submits_are_gauged_and_integrated_over_the_clock() -> None:
    """`open_submits`: how many submits are open now, and their integral over the emulator's clock."""
    clock = ManualClock()
    async with running(speed=10, clock=clock) as (emu, session):
        opened: list[str] = []

        def gauge() -> dict[str, float]:
            return emu.open_submits

        assert gauge() == {"now": 0, "seconds": 0.0}
        async with anyio.create_task_group() as tg:
            tg.start_soon(streamed_lines, session, emu, "one", opened)
            tg.start_soon(streamed_lines, session, emu, "two", opened)
            await eventually(lambda: len(opened) == 2, "both streams are open")
            assert gauge() == {"now": 2, "seconds": 0.0}
            clock.advance(3)
            assert gauge()["seconds"] == 6.0  # two submits held for 3 s
            clock.advance(7)
        await eventually(lambda: gauge()["now"] == 0, "streams closed")
        assert gauge()["seconds"] == 2 * 10.0  # each held until its job finished, 10 s in


def test_concurrency_limit_must_be_positive() -> None:
    """`concurrency_limit=0` is refused."""
    with pytest.raises(ValueError):
        Emulator(concurrency_limit=0)


# --- counters endpoint ----------------------------------------------------------------------------


async def test_counters_endpoint_needs_no_auth_and_reset_clears_it() -> None:
    """`GET /_emulator/counters` mirrors the Python view; `POST /_emulator/reset` clears it; neither is faulted or logged."""
    async with running(faults=FaultPlan(rate=1.0, kinds=("503",), retry_after=0)) as (emu, session):
        await post(session, emu, "/midjourney/imagine", {"prompt": "x", "async": True})
        await post(session, emu, "/midjourney/imagine", {"prompt": "y", "async": True}, "none")
        snapshot = await counters(session, emu)
        assert set(snapshot) == {"counters", "tasks_per_prompt", "faults", "fault_log", "open_submits"}
        assert snapshot["counters"] == emu.counters
        assert snapshot["counters"]["fault_503"] == 1
        assert snapshot["tasks_per_prompt"] == {"y": 1}
        assert snapshot["faults"] == emu.faults
        assert snapshot["fault_log"] == [
            {
                "kind": "503",
                "phase": "before",
                "path": "/midjourney/imagine",
                "source": "plan",
                "task_id": None,
            }
        ]
        assert len(emu.requests) == 2
        async with session.post(f"{emu.url}/_emulator/reset") as resp:
            assert resp.status == 200
            cleared = await resp.json()
        assert cleared["counters"]["faults"] == cleared["counters"]["submits"] == 0
        assert cleared["tasks_per_prompt"] == {} == emu.tasks_per_prompt
        assert cleared["fault_log"] == [] == emu.fault_log
        assert set(cleared["faults"].values()) == {0}
        assert emu.requests == []


async def test_reset_records_clears_faults_too() -> None:
    """`emu.reset_records()` forgets faults, and the fault counters come back at 0."""
    async with running() as (emu, session):
        await post(session, emu, "/midjourney/imagine", {"prompt": "x"}, "429")
        emu.reset_records()
        assert emu.fault_log == []
        assert emu.faults["429"] == emu.counters["fault_429"] == emu.counters["faults"] == 0


# --- GoAPI ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_GOAPI, reason="the GoAPI emulator (mjasync/emulator/_goapi.py) is not there yet")
async def test_goapi_faults_use_goapi_error_shape() -> None:
    """On `/mj/v2/*` a 429 comes in GoAPI's error shape; phase=after creates a task fetchable by `/mj/v2/fetch`."""
    async with running() as (emu, session):
        goapi = {"X-API-KEY": EMULATOR_TOKEN}
        url = f"{emu.url}/mj/v2/imagine"
        async with session.post(
            url, json={"prompt": "go"}, headers={**goapi, "x-mjasync-fault": "429"}
        ) as resp:
            assert resp.status == 429
            assert resp.headers["Retry-After"] == "1"
            assert await resp.json() == {
                "task_id": "",
                "status": "failed",
                "message": "You have exceeded the rate limit.",
            }
        assert_no_task(emu)
        fault = {**goapi, "x-mjasync-fault": "500; phase=after"}
        async with session.post(url, json={"prompt": "go", "process_mode": "fast"}, headers=fault) as resp:
            assert resp.status == 500
            body = await resp.json()
            assert (body["status"], body["task_id"]) == ("failed", "")
        assert emu.tasks_per_prompt == {"go": 1}
        task_id = emu.fault_log[-1].task_id
        assert task_id is not None
        async with session.post(f"{emu.url}/mj/v2/fetch", json={"task_id": task_id}, headers=goapi) as resp:
            assert resp.status == 200
            assert (await resp.json())["task_id"] == task_id


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_fault_flags_build_a_plan() -> None:
    """`--fault-rate/--fault-kinds/--fault-seed/--fault-scope` make the FaultPlan; no rate means no plan."""
    args = _parse(
        [
            "--fault-rate",
            "0.3",
            "--fault-kinds",
            "429=2,reset",
            "cut",
            "--fault-seed",
            "9",
            "--fault-scope",
            "submits",
        ]
    )
    plan = _plan(args)
    assert plan is not None
    assert (plan.rate, plan.seed, plan.scope) == (0.3, 9, "submits")
    assert plan.weights == (("429", 2.0), ("reset", 1.0), ("cut", 1.0))
    assert _plan(_parse(["--concurrency-limit", "3"])) is None


@pytest.mark.parametrize(
    "argv",
    [["--fault-rate", "2"], ["--fault-rate", "0.5", "--fault-kinds", "bogus"], ["--concurrency-limit", "0"]],
)
def test_cli_rejects_bad_fault_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Bad fault flags exit with status 2 and a message, before serving."""
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


# --- limits that change while running ----------------------------------------------------------------


async def test_the_concurrency_limit_can_change_while_running() -> None:
    """`POST /_emulator/limits` lowers, then lifts, the per-token limit; open submits are not touched."""
    clock = ManualClock()
    async with running(speed=10, clock=clock) as (emu, session):
        async with session.post(f"{emu.url}/_emulator/limits", json={"concurrency_limit": 1}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"concurrency_limit": 1, "outage_remaining": 0.0}
        opened = 0
        lines: list[int] = []

        async def hold_stream() -> None:
            nonlocal opened
            async with post_acedata(
                session, emu, "/midjourney/imagine", {"prompt": "held"}, accept=NDJSON
            ) as resp:
                opened += 1
                lines.append(len([line async for line in resp.content]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold_stream)
            await eventually(lambda: opened == 1, "the stream is open")
            over = await post(session, emu, "/midjourney/imagine", {"prompt": "over", "async": True})
            assert over[0] == 429 and emu.faults["concurrency"] == 1
            assert emu.set_limits(concurrency_limit=None)["concurrency_limit"] is None
            room = await post(session, emu, "/midjourney/imagine", {"prompt": "room", "async": True})
            assert room[0] == 200
            clock.advance(10)
        assert lines == [6] and "over" not in emu.tasks_per_prompt


async def test_an_outage_refuses_every_request_for_its_seconds() -> None:
    """`outage=S`: submits and lookups alike get 429 with Retry-After until S seconds have passed."""
    clock = ManualClock()
    async with running(clock=clock) as (emu, session):
        status, _, raw = await post(session, emu, "/midjourney/imagine", {"prompt": "before", "async": True})
        task_id = json.loads(raw)["task_id"]
        assert emu.set_limits(outage=5)["outage_remaining"] == 5
        status, headers, raw = await post(
            session, emu, "/midjourney/imagine", {"prompt": "during", "async": True}
        )
        assert status == 429 and headers["Retry-After"] == "1"
        assert_acedata_error(raw, "too_many_requests")
        lookup, _, _ = await post(session, emu, "/midjourney/tasks", {"id": task_id, "action": "retrieve"})
        assert lookup == 429
        assert emu.counters["fault_outage"] == emu.faults["outage"] == 2
        assert emu.fault_log[-1].source == "outage"
        clock.advance(5)
        assert (await post(session, emu, "/midjourney/imagine", {"prompt": "after", "async": True}))[0] == 200
        assert "during" not in emu.tasks_per_prompt


@pytest.mark.parametrize(
    "body", [{"concurrency_limit": 0}, {"outage": -1}, {"outage": "soon"}, {"cap": 4}, [1]], ids=str
)
async def test_bad_limits_are_refused(body: Any) -> None:
    async with running() as (emu, session):
        async with session.post(f"{emu.url}/_emulator/limits", json=body) as resp:
            assert resp.status == 400
            assert "error" in await resp.json()
