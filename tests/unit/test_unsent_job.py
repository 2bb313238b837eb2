"""A job collected without ever being sent warns, as a coroutine never awaited does; one sent, or
closed on purpose, does not."""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterator, Callable

import pytest

import mjasync
from mjasync.emulator import DEFAULT_TOKEN

#: Nothing listens here; these tests never send anything.
NOWHERE = "http://127.0.0.1:9"
SECRET_KEY = "sk-unsent-job-secret-0123456789"


@pytest.fixture
async def mj() -> AsyncIterator[mjasync.Client]:
    async with mjasync.Client(api_key=SECRET_KEY, base_url=NOWHERE) as client:
        yield client


def build_and_drop(build: Callable[[], object]) -> None:
    """Build a job and drop it at once, collecting it (as the end of a function would)."""
    build()
    gc.collect()


def collect_quietly() -> list[warnings.WarningMessage]:
    """Collect garbage, returning the warnings that raised (none may escape as an error)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return caught


async def test_a_job_never_sent_warns_naming_its_call(mj: mjasync.Client) -> None:
    with pytest.warns(RuntimeWarning, match=r"^Job imagine\('a cat'\) was never awaited or sent$"):
        build_and_drop(lambda: mj.imagine("a cat"))


async def test_the_warning_names_a_follow_up_and_cuts_a_long_prompt(mj: mjasync.Client) -> None:
    with pytest.warns(RuntimeWarning, match=r"^Job upscale2\('img-1'\) was never awaited or sent$"):
        build_and_drop(lambda: mj.upscale("img-1", 2))
    long_prompt = "a lighthouse on a cliff at dusk, " * 20
    with pytest.warns(RuntimeWarning) as caught:
        build_and_drop(lambda: mj.imagine(long_prompt))
    (message,) = [str(w.message) for w in caught]
    assert message.startswith("Job imagine('a lighthouse on a cliff at dusk, a ligh…') was never")
    assert len(message) < 100


async def test_the_warning_never_shows_a_secret(mj: mjasync.Client) -> None:
    with pytest.warns(RuntimeWarning) as caught:
        build_and_drop(lambda: mj.imagine(f"a cat {SECRET_KEY}"))
    (message,) = [str(w.message) for w in caught]
    assert SECRET_KEY not in message and SECRET_KEY[:12] not in message


async def test_a_closed_job_keeps_quiet_and_cannot_be_sent(mj: mjasync.Client) -> None:
    job = mj.imagine("a cat, only looked at")
    assert job.request.prompt == "a cat, only looked at"
    job.close()
    with pytest.raises(RuntimeError, match="closed"):
        await job
    del job
    assert collect_quietly() == []


async def test_a_job_refused_at_birth_does_not_warn(mj: mjasync.Client) -> None:
    with pytest.raises(mjasync.InvalidRequestError):
        mj.imagine("")
    assert collect_quietly() == []


async def test_sent_jobs_do_not_warn(mj_emulator: object) -> None:
    """Awaited, streamed, submitted, or taken by run_many: none warns when collected."""
    url = mj_emulator.url  # type: ignore[attr-defined]
    async with mjasync.Client(api_key=DEFAULT_TOKEN, base_url=url, wait_via="poll") as mj:
        await mj.imagine("a cat, awaited")
        async with mj.imagine("a cat, streamed").stream() as updates:
            async for _ in updates:
                pass
        await (await mj.imagine("a cat, submitted").submit())
        async with mj.run_many([mj.imagine("a cat, in a batch")], concurrency=1) as outcomes:
            assert [o.ok async for o in outcomes] == [True]
    assert collect_quietly() == []
